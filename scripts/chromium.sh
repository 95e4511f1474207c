#!/usr/bin/env bash
# Make sure Debian's headless Chromium is installed (the browser test of the farm view drives
# it over the DevTools protocol). Installs the `chromium` package with apt-get when missing;
# exits non-zero, saying so, when it cannot be had (the browser test then fails, never skips).
set -u
find_chromium() {
  for name in chromium chromium-browser; do
    if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
  done
  return 1
}
if find_chromium >/dev/null; then
  echo "chromium: $(find_chromium)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium: not installed and there is no apt-get here: install Debian's chromium package" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "chromium: not installed; run as root: apt-get install -y chromium" >&2
    exit 1
  fi
fi
echo "chromium: installing Debian's chromium package (apt-get install -y chromium)"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null || { echo "chromium: apt-get update failed" >&2; exit 1; }
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null \
  || { echo "chromium: apt-get install chromium failed" >&2; exit 1; }
if ! find_chromium >/dev/null; then
  echo "chromium: installed, but no chromium command was found" >&2
  exit 1
fi
echo "chromium: $(find_chromium)"
