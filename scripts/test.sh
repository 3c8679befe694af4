#!/usr/bin/env bash
# Set up (first run only) and run the whole suite: ruff, mypy, pytest (real model, real server, real speech).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
.venv/bin/ruff check echopanel tests bench scripts
.venv/bin/ruff format --check echopanel tests bench scripts
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
