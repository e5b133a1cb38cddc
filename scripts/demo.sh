#!/usr/bin/env bash
# Command 1 of the README: provision a real ComfyUI (first time only) and run the demo workflow headlessly.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/provision.sh"
exec "${FLOWSCOPE_VENV:-$ROOT/.venv}/bin/python" "$ROOT/scripts/run_demo.py" "$@"
