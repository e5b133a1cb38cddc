#!/usr/bin/env bash
# Command 2 of the README: provision everything the tests need (venv, ComfyUI, Chromium) and run the test suite
# against every ComfyUI this machine has:
#   1. ComfyUI 0.3.75 (scripts/provision.sh; or the one COMFYUI_DIR names): the whole suite.
#   2. ComfyUI 0.8.0, when its source is beside the checkout (../shared/comfyui/comfyui-0.8.0.tar.gz, as in CI;
#      FLOWSCOPE_COMFY080_TARBALL overrides): the integration and browser tests again, without the matrix set
#      (-m "(integration or browser) and not matrix"), in the overlay venv of scripts/provision_comfy080.sh.
# Pytest arguments pass through to both runs. A -m expression is combined with run 2's ("-m 'not browser'"
# gives run 2 "(not browser) and (integration or browser) and not matrix"); a run 2 left with no test to run
# (e.g. "bash scripts/test.sh tests/unit") counts as passed. FLOWSCOPE_COMFY080=0 skips run 2,
# FLOWSCOPE_COMFY080=only runs only run 2. The last line says which ComfyUI versions ran and how each went;
# the exit status is non-zero when either run failed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARBALL="${FLOWSCOPE_COMFY080_TARBALL:-$(dirname "$ROOT")/shared/comfyui/comfyui-0.8.0.tar.gz}"
MODE="${FLOWSCOPE_COMFY080:-auto}"
bash "$ROOT/scripts/provision.sh"
bash "$ROOT/scripts/install_browser.sh"
cd "$ROOT"

version_of() {  # the __version__ of a ComfyUI tree
  sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$1/comfyui_version.py" 2>/dev/null || true
}

# Split the pass-through arguments into the user's -m expression and everything else.
user_marker=""
other_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -m) user_marker="$2"; shift 2 ;;
    -m=*) user_marker="${1#-m=}"; shift ;;
    -m*) user_marker="${1#-m}"; shift ;;
    *) other_args+=("$1"); shift ;;
  esac
done

summary=()
status=0

if [ "$MODE" != "only" ]; then
  first_dir="${COMFYUI_DIR:-$ROOT/.comfyui/ComfyUI}"
  first_version="$(version_of "$first_dir")"
  first_args=(-ra "${other_args[@]}")
  if [ -n "$user_marker" ]; then first_args+=(-m "$user_marker"); fi
  echo "=== FlowScope tests on ComfyUI ${first_version:-?} ($first_dir): pytest ${first_args[*]}"
  start=$SECONDS
  rc=0
  "${FLOWSCOPE_VENV:-$ROOT/.venv}/bin/python" -m pytest "${first_args[@]}" || rc=$?
  result="passed"; if [ "$rc" -ne 0 ]; then result="FAILED (pytest exit $rc)"; status=$rc; fi
  summary+=("${first_version:-?} (${user_marker:-all}: $result, $((SECONDS - start)) s)")
fi

if [ "$MODE" = "0" ]; then
  summary+=("0.8.0 skipped (FLOWSCOPE_COMFY080=0)")
elif [ ! -f "$TARBALL" ]; then
  if [ "$MODE" = "only" ]; then
    echo "FLOWSCOPE_COMFY080=only but there is no ComfyUI 0.8.0 source at $TARBALL" >&2
    exit 1
  fi
  summary+=("0.8.0 not available (no $TARBALL)")
else
  bash "$ROOT/scripts/provision_comfy080.sh"
  second_marker="(integration or browser) and not matrix"
  if [ -n "$user_marker" ]; then second_marker="($user_marker) and $second_marker"; fi
  echo "=== FlowScope tests on ComfyUI 0.8.0 ($ROOT/.comfyui/0.8.0/ComfyUI): pytest -ra ${other_args[*]} -m '$second_marker'"
  start=$SECONDS
  rc=0
  COMFYUI_DIR="$ROOT/.comfyui/0.8.0/ComfyUI" FLOWSCOPE_VENV="$ROOT/.comfyui/0.8.0/venv" \
    "$ROOT/.comfyui/0.8.0/venv/bin/python" -m pytest -ra "${other_args[@]}" -m "$second_marker" || rc=$?
  if [ "$rc" -eq 5 ]; then
    result="no test selected"
  elif [ "$rc" -ne 0 ]; then
    result="FAILED (pytest exit $rc)"; if [ "$status" -eq 0 ]; then status=$rc; fi
  else
    result="passed"
  fi
  summary+=("0.8.0 (integration + browser, not matrix${user_marker:+, and $user_marker}: $result, $((SECONDS - start)) s)")
fi

joined="$(printf '%s; ' "${summary[@]}")"
echo "FlowScope tests: ComfyUI ${joined%; }"
exit "$status"
