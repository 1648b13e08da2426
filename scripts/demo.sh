#!/usr/bin/env bash
# README command 1: set up (scripts/bootstrap.sh), then run the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/python -m overfeat_kernels demo "$@"
