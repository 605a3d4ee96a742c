#!/usr/bin/env bash
# Screenshot an `inferline report` page with headless Chromium, to look at what a report renders.
#
#   bash tools/screenshot_report.sh report.html report.png [WIDTH,HEIGHT]     # default 1200,2400
#
# Needs Chromium (Debian: apt-get install chromium-headless-shell, or chromium). The page is
# self-contained (inline CSS, plots as base64 PNGs), so nothing is fetched from the network.
# tests/python/report/test_report_screenshot.py runs this script.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 REPORT.html OUT.png [WIDTH,HEIGHT]" >&2
  exit 2
fi
html="$(realpath "$1")"
out="$(realpath -m "$2")"
size="${3:-1200,2400}"
browser=""
for b in chromium-headless-shell chromium chromium-browser google-chrome; do
  if command -v "$b" >/dev/null; then browser="$b"; break; fi
done
if [ -z "$browser" ]; then
  echo "no Chromium found (apt-get install chromium-headless-shell)" >&2
  exit 3
fi
profile="$(mktemp -d /tmp/inferline-chromium.XXXXXX)"
trap 'rm -rf "$profile"' EXIT
# --no-sandbox: the sandbox needs user namespaces that containers (and root) often lack.
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$profile" \
  --window-size="$size" --screenshot="$out" "file://$html" >/dev/null 2>"$profile/log" || {
  cat "$profile/log" >&2
  exit 1
}
test -s "$out" || { echo "Chromium wrote no screenshot; its log:" >&2; cat "$profile/log" >&2; exit 1; }
echo "$out"
