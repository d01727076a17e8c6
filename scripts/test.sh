#!/usr/bin/env bash
# Set up everything the tests need (venv, then the sandbox: Docker engine, registry,
# sshd, demo stack, and the Swarm stack on a second Docker engine of its own) and run them
# all. As root: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/sandbox.sh up
scripts/sandbox.sh swarm-up
rc=0
ZDD_E2E=1 .venv/bin/pytest "$@" || rc=$?
if [ "$rc" = 5 ]; then echo "test.sh: pytest collected no tests: that is a failure" >&2; exit 1; fi
exit "$rc"
