#!/usr/bin/env bash
# GPU check (< 8 min on one CUDA GPU): per-call overhead of every fs_ sampler vs euler around a Flux-architecture
# model in bf16 at a Flux 1024² latent, host syncs per step, recorder overhead and the Fitted Solver's fit time.
# Writes benchmark-results/gpu_check.md and .json (or --out, --results-dir). See benchmarks/gpu_check.py for what is measured and how.
#   bash benchmarks/gpu_check.sh                          # cuda if available, else cpu
#   bash benchmarks/gpu_check.sh --device cpu --quick --out /tmp/gpu_check.md   # CI smoke run (< 1 min)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON="python3"; fi
fi
cd "$ROOT"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
