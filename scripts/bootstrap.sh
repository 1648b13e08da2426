#!/usr/bin/env bash
# Sets up .venv with everything the package and its tests need, then builds the extension
# in place (CUDA kernels included whenever a CUDA toolkit is found). Safe to re-run: the
# install is skipped when satisfied and the build when no source changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
export MAX_JOBS=${MAX_JOBS:-2}

if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
echo "[bootstrap] installing requirements (scripts/requirements.txt)"
.venv/bin/python -m pip install -q --disable-pip-version-check -r scripts/requirements.txt

# Rebuild only when the sources, the build script or the environment changed.
stamp_file=.venv/.overfeat_kernels_build_stamp
stamp=$( { cat setup.py pyproject.toml; find csrc -type f | sort | xargs cat; \
          .venv/bin/python -c "import torch; print(torch.__version__)"; \
          echo "${TORCH_CUDA_ARCH_LIST:-} ${OVERFEAT_KERNELS_CPU_ONLY:-} ${CUDA_HOME:-}"; } \
        | sha256sum | cut -d' ' -f1)
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] \
   && ls overfeat_kernels/_C*.so >/dev/null 2>&1; then
  echo "[bootstrap] extension up to date"
else
  echo "[bootstrap] building the extension (MAX_JOBS=$MAX_JOBS; a few minutes on 2 cores)"
  start=$(date +%s)
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation \
    --no-deps -e .
  echo "$stamp" > "$stamp_file"
  echo "[bootstrap] built in $(( $(date +%s) - start )) s"
fi
.venv/bin/python -m overfeat_kernels info
