#!/usr/bin/env bash
# Command 2 of the README: provision everything the tests need (venv, ComfyUI, Chromium) and run the whole suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/provision.sh"
bash "$ROOT/scripts/install_browser.sh"
cd "$ROOT"
exec "${FLOWSCOPE_VENV:-$ROOT/.venv}/bin/python" -m pytest -ra "$@"
