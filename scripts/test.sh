#!/usr/bin/env bash
# Set up everything the tests need (venv, then the sandbox: Docker engine, registry,
# sshd, demo stack), run the static checks (scripts/lint.sh: shellcheck, ruff) and then every test; the Swarm tests start the swarm stack on a Docker engine
# of its own (scripts/sandbox.sh swarm-up) when they come. As root: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/sandbox.sh up
scripts/lint.sh
rc=0
ZDD_E2E=1 .venv/bin/pytest "$@" || rc=$?
if [ "$rc" = 5 ]; then echo "test.sh: pytest collected no tests: that is a failure" >&2; exit 1; fi
exit "$rc"
