#!/usr/bin/env bash
# Debian's Chromium for the report page's browser tests (tests/test_report_browser.py),
# installed with apt-get when missing. Playwright drives it (no browser download).
set -uo pipefail
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
        echo "note: chromium is missing and apt-get needs root: install Debian's chromium" \
             "(apt-get install chromium) for tests/test_report_browser.py" >&2
        exit 0
    fi
fi
if ! command -v apt-get >/dev/null; then
    echo "note: chromium is missing and there is no apt-get: install Chromium for" \
         "tests/test_report_browser.py" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
