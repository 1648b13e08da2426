#!/usr/bin/env bash
# README command 2: set up (scripts/bootstrap.sh), lint, run the test suite. GPU tests run
# when a GPU is present and are reported as skipped otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest tests -q "$@"
