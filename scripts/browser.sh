#!/usr/bin/env bash
# The browser test's browser: Debian's chromium and chromium-driver, installed when missing and
# apt-get can (as root). Elsewhere tests/test_browser.py skips and says why.
set -uo pipefail
if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "browser.sh: chromium/chromedriver missing and apt-get is not usable here: the browser test will skip" >&2
    exit 0
fi
echo "browser.sh: installing chromium and chromium-driver for the browser test" >&2
if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null; then
    echo "browser.sh: apt-get could not install them: the browser test will skip" >&2
fi
exit 0
