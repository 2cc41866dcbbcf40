#!/usr/bin/env bash
# Install a headless browser for the report's browser tests (tests/test_report_html.py): Debian's chromium
# and chromium-driver. Idempotent: does nothing when both are there. Never fails the build: where apt-get
# is missing or unusable (not root, no package lists, offline) it says so and exits 0, and the browser
# tests skip with the reason.
set -u

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/bin/$1" ]; }

if (have chromium || have chromium-browser) && have chromedriver; then
    echo "install_browser: chromium and chromedriver already installed"
    exit 0
fi
if ! have apt-get; then
    echo "install_browser: no apt-get here; install chromium and chromedriver yourself (browser tests will skip)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    if have sudo && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install_browser: apt-get needs root and sudo is not available; browser tests will skip"
        exit 0
    fi
else
    SUDO=""
fi

export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
if $SUDO apt-get update -q >"$log" 2>&1 && $SUDO apt-get install -y -q chromium chromium-driver >>"$log" 2>&1; then
    echo "install_browser: installed $(chromium --version 2>/dev/null | head -n 1) and $(chromedriver --version 2>/dev/null | cut -d' ' -f1-2)"
else
    echo "install_browser: apt-get could not install chromium chromium-driver (last lines below); browser tests will skip"
    tail -n 5 "$log"
fi
rm -f "$log"
exit 0
