#!/usr/bin/env bash
# Provision the second tested ComfyUI, 0.8.0, beside the 0.3.75 that scripts/provision.sh installs.
# Source: the tarball in ../shared/comfyui/ (FLOWSCOPE_COMFY080_TARBALL overrides); ComfyUI is not on PyPI.
# Result, all git-ignored under .comfyui/0.8.0/: ComfyUI/ (the source), base/ (its base directory) and venv/.
#
# venv/ is an overlay on the test venv (.venv, or FLOWSCOPE_VENV): a .pth file puts the test venv's
# site-packages on sys.path *after* the overlay's own, and the overlay installs ComfyUI 0.8.0's own
# requirements.txt (its frontend 1.35.9, workflow templates, comfy-kitchen, ...). pip installs into the
# overlay only what the test venv lacks or has at another version, so torch, the test tools and everything
# shared are not installed twice (the test venv is ~6 GB, the overlay ~0.45 GB); pip never uninstalls from
# outside the environment it runs in, so the test venv keeps its own frontend 1.32.9 for 0.3.75.
# Idempotent. Prints the two variables that point the tests at this ComfyUI.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARBALL="${FLOWSCOPE_COMFY080_TARBALL:-$(dirname "$ROOT")/shared/comfyui/comfyui-0.8.0.tar.gz}"
BASE_VENV="${FLOWSCOPE_VENV:-$ROOT/.venv}"
HOME080="$ROOT/.comfyui/0.8.0"
COMFY="$HOME080/ComfyUI"
VENV="$HOME080/venv"
CONSTRAINTS="$ROOT/scripts/constraints.txt"
# shellcheck source=scripts/provision_lib.sh
source "$ROOT/scripts/provision_lib.sh"

if [ ! -f "$TARBALL" ]; then
  echo "[provision 0.8.0] no ComfyUI 0.8.0 source at $TARBALL" >&2
  exit 1
fi
if [ ! -x "$BASE_VENV/bin/python" ]; then
  echo "[provision 0.8.0] no test venv at $BASE_VENV: run scripts/provision.sh first" >&2
  exit 1
fi

if [ ! -f "$COMFY/main.py" ]; then
  echo "[provision 0.8.0] unpacking $TARBALL"
  rm -rf "$COMFY"
  mkdir -p "$HOME080"
  tar xzf "$TARBALL" -C "$HOME080"
  grep -q '__version__ = "0.8.0"' "$COMFY/comfyui_version.py"
fi

ensure_venv "provision 0.8.0" "$VENV" "$BASE_VENV/bin/python"  # the overlay venv on the test venv's Python
base_site="$("$BASE_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
own_site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$base_site" > "$own_site/zz_flowscope_test_venv.pth"

install_once "provision 0.8.0" "$VENV" \
  "$(cat "$CONSTRAINTS" "$COMFY/requirements.txt" <(echo "$base_site") | sha1sum | cut -c1-12)" \
  "installing ComfyUI 0.8.0's requirements.txt into the overlay (pinned by scripts/constraints.txt)" \
  "$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" -r "$COMFY/requirements.txt"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as metadata
import torch
frontend = metadata.version("comfyui-frontend-package")
assert frontend == "1.35.9", f"ComfyUI 0.8.0 needs comfyui-frontend-package 1.35.9, the overlay resolves {frontend}"
print(f"[provision 0.8.0] torch {torch.__version__}, comfyui-frontend-package {frontend}")
PY

link_pack "$HOME080/base"
echo "[provision 0.8.0] ComfyUI 0.8.0 at $COMFY; run the tests with COMFYUI_DIR=$COMFY FLOWSCOPE_VENV=$VENV"
