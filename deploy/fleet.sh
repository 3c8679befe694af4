#!/usr/bin/env bash
# A fleet on this machine (docs/deployment.md): PostgreSQL + HAProxy from Debian's packages, N EchoPanel nodes
# sharing one data directory, all on 127.0.0.1. Usage: deploy/fleet.sh [--nodes 3] [--root DIR]; Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  for pkg in postgresql haproxy; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
    fi
  done
fi
[ -x .venv/bin/python ] || scripts/setup.sh
exec .venv/bin/python -m echopanel.testing.fleet "$@"
