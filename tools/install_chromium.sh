#!/usr/bin/env bash
# Debian's chromium and its WebDriver (chromium-driver), for the website's browser checks (`make site-test`).
# Installs nothing when both are there; needs root or sudo (CI runs as root).
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
echo "[site] installing Debian's chromium and chromium-driver"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
