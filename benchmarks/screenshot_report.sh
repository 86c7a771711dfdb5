#!/usr/bin/env bash
# Screenshot of a heat-island report (ilots.products.report) in headless Chromium, to look at it.
# Needs Debian's chromium (apt-get install -y chromium); not a test, CI does not need it.
#
#   bash benchmarks/screenshot_report.sh experiments/products/report.html [/tmp/shots/report.png] [1400,2400]
#
# The flags keep Chromium off the network (the page needs none: a page that rendered only with a
# network would show holes here) and out of the user's profile.
set -euo pipefail
page=${1:?usage: screenshot_report.sh REPORT.html [OUT.png] [WIDTH,HEIGHT]}
out=${2:-/tmp/shots/report.png}
size=${3:-1400,2400}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [[ -z "$browser" ]]; then
    echo "no chromium found: apt-get install -y chromium" >&2
    exit 1
fi
mkdir -p "$(dirname "$out")"
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --user-data-dir="$profile" --window-size="$size" \
    --screenshot="$(realpath -m "$out")" "file://$(realpath "$page")" 2>/dev/null
echo "$out"
