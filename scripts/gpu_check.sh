#!/usr/bin/env bash
# One command for a GPU machine: build in place for the GPU found, run the GPU tests, then
# the benchmarks. Logs and JSON go to OUTDIR.
#
#   scripts/gpu_check.sh OUTDIR [--quick|--full|--lease] [STEP...]
#
# --lease: the one command for a lent GPU (SPEC "GPU leases"), everything within 9 minutes
# of wall time, build included: build for the GPU found, the GPU test cases, the bf16 conv
# benchmark over VGG-16's layers at batch 1 / 8 / 32, the memory-bound ops, the conv + pool
# fusion (VGG-16's conv + pool layers, OverFeat's last conv + offset pooling), the models, the
# extraction pipeline (CPU against GPU JPEG decoding); each step under its own time limit,
# so that a slow step cannot take the others' time.
#
# STEPs (default: all, in this order): build, tests, bench-conv, bench-rest, bench-fused,
# models, extract.
# The build is skipped when the CUDA kernels are already built in place, so that a machine
# with a per-command time limit can take the steps one call at a time, e.g.
#   scripts/gpu_check.sh out --full build tests      (build about 2 minutes on an H100 host;
#                                                     tests 8 or more: the GPU cases first)
#   CONV_DTYPES="bf16 fp32-tf32" scripts/gpu_check.sh out --full bench-conv
#                                                    (about 4 minutes per dtype; default: all 4)
# "tests" runs everything but the simulator cases (CI runs those; they need no GPU).
# Uses the python3 on PATH (with torch, pytest, ninja; cupy for the CuPy oracle tests;
# pytest-xdist if present).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu_check.sh OUTDIR [--quick|--full|--lease] [STEP...]}
shift
mode=--quick
case "${1:-}" in --full|--quick|--lease) mode=$1; shift ;; esac
# Per-step time limits (seconds) in a lease: build 200, tests 70, conv 110, rest 40, fused
# 30, models 40, extract 45: 535 s of the 9 minutes, the rest for start-up and the copies.
limit() {
  if [ "$mode" = "--lease" ]; then timeout --signal=INT "$1" "${@:2}"; else "${@:2}"; fi
}
steps=${*:-build tests bench-conv bench-rest bench-fused models extract}
mkdir -p "$out"
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

arch=$($PYTHON -c "import torch; print('{}.{}'.format(*torch.cuda.get_device_capability()))") || {
  echo "gpu_check: no CUDA GPU visible to torch" >&2; exit 2; }
# On compute capability 9.0 the Hopper conv kernel (wgmma, setmaxnreg) needs sm_90a's
# code: "9.0" alone builds without it, and every Hopper test and column would be skipped.
[ "$arch" = "9.0" ] && arch=9.0a
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
status=0
has() { [[ " $steps " == *" $1 "* ]]; }

if has build; then
  nvidia-smi > "$out/nvidia-smi.txt" 2>&1
  if $PYTHON -c "import sys, overfeat_kernels._ext as e; sys.exit(0 if e.with_cuda() else 1)" \
    2>/dev/null; then
    echo "[gpu_check] CUDA kernels already built in place"
  else
    echo "[gpu_check] building for $TORCH_CUDA_ARCH_LIST (log: $out/build.log)"
    start=$(date +%s)
    if ! limit 200 $PYTHON -m pip install --no-build-isolation --no-deps -e . \
        > "$out/build.log" 2>&1; then
      tail -40 "$out/build.log"; exit 1
    fi
    echo "[gpu_check] built in $(( $(date +%s) - start )) s"
  fi
  $PYTHON -m overfeat_kernels info | tee "$out/info.json"
  if [ "$arch" = "9.0a" ] && ! $PYTHON -c "import sys; from overfeat_kernels.ops._ext import _C
sys.exit(0 if _C.build_has_sm90a else 1)" 2>/dev/null; then
    echo "[gpu_check] the build has no sm_90a code (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST):" \
      "the Hopper kernel's tests and benchmark columns will be skipped" >&2
    status=1
  fi
fi

if has tests; then
  # The GPU cases first (a per-command time limit then cuts the CPU-only rest), each xdist
  # worker on its share of the cores (torch's default, all of them per worker, oversubscribes).
  xdist=()
  if $PYTHON -c "import xdist" 2>/dev/null; then
    xdist=(-n 8)
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) > 8 ? $(nproc) / 8 : 1 ))}
  fi
  parts="gpu rest"
  [ "$mode" = "--lease" ] && parts=gpu  # the rest is CI's
  for part in $parts; do
    if [ $part = gpu ]; then sel="cuda or gpu"; else sel="not (cuda or gpu)"; fi
    echo "[gpu_check] tests ($part: -k '$sel'), simulator cases excluded (log: $out/pytest_$part.log)"
    limit 70 $PYTHON -m pytest tests -m "not sim" -k "$sel" -q -rfEs -p no:cacheprovider \
      "${xdist[@]}" --durations=20 --junitxml="$out/pytest_$part.xml" \
      > "$out/pytest_$part.log" 2>&1 || status=1
    tail -15 "$out/pytest_$part.log"
  done
fi

# --full: every dtype, batch 1 / 8 / 32, 60 ms of timed runs per measurement.
budget=(--budget-ms 60)
if has bench-conv; then
  if [ "$mode" = "--lease" ]; then
    # bf16 over VGG-16's 13 layers (and OverFeat's) at batch 1 / 8 / 32, short budgets.
    limit 110 $PYTHON benchmarks/bench_ops.py --sections conv --dtypes bf16 --batches 1,8,32 \
      --budget-ms 15 --out "$out/bench_conv_bf16.json" 2>&1 | tee "$out/bench_conv_bf16.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  elif [ "$mode" = "--full" ]; then
    # One dtype per run and file; CONV_DTYPES picks some (about 4 minutes each on an H100).
    for dtype in ${CONV_DTYPES:-bf16 fp32-tf32 fp16 fp32}; do
      $PYTHON benchmarks/bench_ops.py --sections conv --dtypes $dtype "${budget[@]}" \
        --out "$out/bench_conv_$dtype.json" 2>&1 | tee "$out/bench_conv_$dtype.log"
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
    done
  else
    $PYTHON benchmarks/bench_ops.py --quick --sections conv --out "$out/bench_conv.json" 2>&1 \
      | tee "$out/bench_conv.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  fi
fi
if has bench-rest; then
  quick=(); [ "$mode" != "--full" ] && quick=(--quick)
  [ "$mode" = "--lease" ] && budget=(--budget-ms 20)
  limit 40 $PYTHON benchmarks/bench_ops.py "${quick[@]}" --sections pool,tail "${budget[@]}" \
    --out "$out/bench_pool_tail.json" 2>&1 | tee "$out/bench_pool_tail.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
if has bench-fused; then
  # bf16, channels_last, batch 8 and 32: fused, ours unfused, eager cuDNN (+ torch.compile
  # of that outside a lease, where its compile time fits); on an H100 / H200 also the Hopper
  # kernel fused.
  quick=(); [ "$mode" != "--full" ] && quick=(--quick)
  [ "$mode" = "--lease" ] && budget=(--budget-ms 15)
  limit 30 $PYTHON benchmarks/bench_ops.py "${quick[@]}" --sections fused "${budget[@]}" \
    --out "$out/bench_fused.json" 2>&1 | tee "$out/bench_fused.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
if has models; then
  quick=(); [ "$mode" != "--full" ] && quick=(--quick)
  limit 40 $PYTHON benchmarks/bench_models.py "${quick[@]}" --out "$out/bench_models.json" 2>&1 \
    | tee "$out/bench_models.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
if has extract; then
  # VGG-16 fc7 extraction (bf16, batch 64) of photo-like 500x375 JPEGs: the decoders alone,
  # the model alone, end to end with each decoder, and the decoders' pixel / fc7 differences.
  images=4096; [ "$mode" = "--full" ] && images=16384
  limit 45 $PYTHON benchmarks/bench_extract.py --images $images --out "$out/bench_extract.json" \
    2>&1 | tee "$out/bench_extract.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
echo "[gpu_check] steps: $steps; exit $status"
exit $status
