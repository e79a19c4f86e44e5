#!/usr/bin/env bash
# The GPU path verified in one command (see benchmarks/gpu_check.py): doctor, pytest -m gpu,
# CPU-vs-GPU pixels, loader, sweep, CKA and AMP pretrain figures. One table, one JSON
# (runs/gpu_check/gpu_check.json). Without a GPU the GPU rows say 'skipped: no GPU'.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 -m benchmarks.gpu_check "$@"
