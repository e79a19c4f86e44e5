#!/usr/bin/env bash
# The GPU path checked in one command (benchmarks/gpu_check.py), from the checkout, no install:
#   PYTHONPATH=$PWD benchmarks/gpu_check.sh --deadline-s 300 --out runs/gpu_check/gpu_check.json
# Preflight, decode verification, decode matrix, pytest -m gpu, same plans CPU vs GPU, memory,
# AMP pretrain; throughput only if time is left. Without a GPU the GPU rows say 'skipped'.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec python3 -X faulthandler -m benchmarks.gpu_check "$@"
