#!/usr/bin/env bash
# One command for a GPU machine: build in place for the GPU found, run the whole test suite
# (GPU tests included), then the benchmarks. Logs and JSON go to OUTDIR.
#
#   scripts/gpu_check.sh OUTDIR [--full]     (default: the --quick benchmarks)
#
# Uses the python3 on PATH (with torch, pytest, ninja; cupy for the CuPy oracle tests).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu_check.sh OUTDIR [--full]}
mode=${2:---quick}
[ "$mode" = "--full" ] && mode=""
mkdir -p "$out"
PYTHON=${PYTHON:-python3}

arch=$($PYTHON -c "import torch; print('{}.{}'.format(*torch.cuda.get_device_capability()))") || {
  echo "gpu_check: no CUDA GPU visible to torch" >&2; exit 2; }
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
nvidia-smi > "$out/nvidia-smi.txt" 2>&1

echo "[gpu_check] building for sm_${arch/./} (log: $out/build.log)"
start=$(date +%s)
if ! $PYTHON -m pip install --no-build-isolation --no-deps -e . > "$out/build.log" 2>&1; then
  tail -40 "$out/build.log"; exit 1
fi
echo "[gpu_check] built in $(( $(date +%s) - start )) s"
$PYTHON -m overfeat_kernels info | tee "$out/info.json"

echo "[gpu_check] tests (log: $out/pytest.log)"
$PYTHON -m pytest tests -q -rs --junitxml="$out/pytest.xml" > "$out/pytest.log" 2>&1
test_status=$?
tail -15 "$out/pytest.log"

echo "[gpu_check] benchmarks ${mode:-(full)} (log: $out/bench_ops.log)"
$PYTHON benchmarks/bench_ops.py $mode --out "$out/bench_ops.json" 2>&1 | tee "$out/bench_ops.log"
bench_status=${PIPESTATUS[0]}
$PYTHON benchmarks/bench_models.py $mode --out "$out/bench_models.json" 2>&1 \
  | tee "$out/bench_models.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || bench_status=1
echo "[gpu_check] tests exit $test_status, benchmarks exit $bench_status"
[ "$test_status" -eq 0 ] && [ "$bench_status" -eq 0 ]
