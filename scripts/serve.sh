#!/usr/bin/env bash
# Set up (first run only) and start the server on the packaged Whisper tiny.en model: ws://127.0.0.1:8765/v1/live
# Extra arguments go to `echopanel serve` (e.g. --port 9000 --token SECRET).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh runtime
exec .venv/bin/echopanel serve "$@"
