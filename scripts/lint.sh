#!/usr/bin/env bash
# Static checks: shellcheck on every shell script, ruff on the Python. Exit 1 on any finding.
#   scripts/lint.sh          all of it
#   scripts/lint.sh shell    shellcheck only
# The host programs (fabfile/remote/*.sh) are checked as zdd sends them: lib.sh, the shared
# preamble, in front of the script (commands.host_program); findings name the file and line
# they are in. Those run with `sh -s` (commands.host_script) and lib.sh itself are checked alone.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
command -v shellcheck >/dev/null || { echo "lint: shellcheck is missing (apt-get install shellcheck)" >&2; exit 2; }
rc=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
lib=fabfile/remote/lib.sh
alone=" lib.sh install_plugin.sh plugin_version.sh "
offset=$(( $(wc -l < "$lib") + 1 ))  # commands.program joins them with a newline
for f in fabfile/remote/*.sh; do
    name=${f##*/}
    if [[ $alone == *" $name "* ]]; then
        shellcheck -s sh "$f" || rc=1
        continue
    fi
    { cat "$lib"; echo; cat "$f"; } > "$tmp/$name"
    out=$(shellcheck -s sh -f gcc "$tmp/$name") || rc=1
    [ -z "$out" ] || printf '%s\n' "$out" | awk -F: -v n="$offset" -v lib="$lib" -v f="$f" \
        'BEGIN { OFS = ":" } { if ($2 > n) { $1 = f; $2 -= n } else { $1 = lib } print }'
done
shopt -s globstar nullglob
shellcheck scripts/*.sh scripts/sandbox/**/*.sh .ci/run || rc=1
if [ "${1:-}" != shell ]; then
    ruff=.venv/bin/ruff
    [ -x "$ruff" ] || ruff=ruff
    "$ruff" check . || rc=1
    "$ruff" format --check . || rc=1
fi
exit $rc
