# Shell functions shared by scripts/provision.sh and scripts/provision_comfy080.sh (sourced, not run).
# Each takes the log label ("provision", "provision 0.8.0") first; ROOT is the checkout.

# ensure_venv LABEL VENV PYTHON: create the venv VENV with PYTHON unless it already has an interpreter.
ensure_venv() {
  local label="$1" venv="$2" python="$3"
  if [ ! -x "$venv/bin/python" ]; then
    echo "[$label] creating venv at $venv"
    "$python" -m venv "$venv"
  fi
}

# install_once LABEL VENV KEY MESSAGE COMMAND...: run COMMAND (an install) unless VENV holds the stamp of KEY (a hash
# of what the install depends on); afterwards the stamp of KEY is the only one there, so a changed input reinstalls.
install_once() {
  local label="$1" venv="$2" key="$3" message="$4"
  shift 4
  local stamp="$venv/.flowscope-deps-$key"
  if [ ! -f "$stamp" ]; then
    echo "[$label] $message"
    "$@"
    rm -f "$venv"/.flowscope-deps-*
    touch "$stamp"
  fi
}

# link_pack BASE: make this checkout a custom node of the ComfyUI base directory BASE.
link_pack() {
  local base="$1"
  mkdir -p "$base/custom_nodes"
  local link="$base/custom_nodes/ComfyUI-FlowScope"
  if [ ! -e "$link" ]; then ln -s "$ROOT" "$link"; fi
}
