#!/usr/bin/env bash
# Install Debian's Chromium for the browser tests (tests/browser), only when it is missing.
# Never `playwright install`: it downloads its own browser from the internet, which is not reachable here.
# The tests drive /usr/bin/chromium through Python playwright (launch(executable_path="/usr/bin/chromium")).
set -euo pipefail
CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install_browser.sh: $CHROMIUM is missing and installing it needs root (apt-get)." >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends chromium chromium-driver fonts-dejavu-core
"$CHROMIUM" --version
