#!/usr/bin/env bash
# Create .venv with the pinned dependencies (idempotent; quick when nothing changed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    if ! "$PY" -m venv .venv 2>/dev/null; then
        # Debian ships venv/ensurepip separately
        [ "$(id -u)" = 0 ] || { echo "bootstrap: $PY cannot create a venv: apt-get install python3-venv" >&2; exit 1; }
        rm -rf .venv
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        "$PY" -m venv .venv
    fi
fi
stamp=.venv/.zdd-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
    .venv/bin/python -c 'import fabric, invoke, httpx, dotenv, websockets, pytest' || { echo "bootstrap: dependencies did not install" >&2; exit 1; }
    touch "$stamp"
fi
