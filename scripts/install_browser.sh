#!/usr/bin/env bash
# Install Debian's Chromium and ChromeDriver for the viewer's browser test (tests/test_viewer.py),
# unless they are already there. Needs root and apt-get; elsewhere it says what to install.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
else
    echo "install_browser: chromium and chromedriver not found; install them (Debian: apt-get install" \
         "chromium chromium-driver) to run the browser test" >&2
    exit 1
fi
