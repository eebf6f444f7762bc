#!/usr/bin/env bash
# Render a deploykit report in headless Chromium and save a screenshot, to check the page by eye.
# Usage: bench/report_screenshot.sh report/report.html shot.png     (needs: apt-get install chromium)
set -euo pipefail
html="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" --window-size=1200,2400 \
  --screenshot="$2" "file://$html" 2>/dev/null
test -s "$2" && echo "screenshot: $2"
