#!/usr/bin/env bash
# The demo: set up the sandbox, publish a new version of all four apps, and deploy it
# with `fab -H sandbox deploy` while a load loop proves no request was dropped. As root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/sandbox.sh up
version=$(scripts/sandbox.sh publish)
echo "demo: published $version of server, property, identity, profile-server; deploying it"
.venv/bin/fab -H sandbox deploy --strict
