#!/usr/bin/env bash
# Static checks: shellcheck on every shell script, ruff on the Python. Exit 1 on any finding.
#   scripts/lint.sh          all of it
#   scripts/lint.sh shell    shellcheck only
# The host programs (fabfile/remote/*.sh) are checked as zdd sends them: lib.sh, the shared
# preamble, and the parts the program uses (command.PARTS) in front of the script
# (command.host_program); findings name the file and line they are in. Those run with `sh -s` (commands.host_script) and lib.sh itself are checked alone.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
command -v shellcheck >/dev/null || { echo "lint: shellcheck is missing (apt-get install shellcheck)" >&2; exit 2; }
rc=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
lib=fabfile/remote/lib.sh
alone=" lib.sh install_plugin.sh plugin_version.sh "
# the parts a host program is sent with, between lib.sh and its own text (commands.PARTS)
parts=$(.venv/bin/python -c 'from fabfile.command import PARTS; print(*(k + "=" + ",".join(v) for k, v in PARTS.items()))') ||
    { echo "lint: cannot read command.PARTS" >&2; exit 2; }
for f in fabfile/remote/*.sh; do
    name=${f##*/}
    if [[ $alone == *" $name "* ]]; then
        shellcheck -s sh "$f" || rc=1
        continue
    fi
    [[ " $parts" == *[=,]"$name"* ]] && continue  # checked within the programs that use it
    files=("$lib")
    for entry in $parts; do
        [ "${entry%%=*}" = "$name" ] || continue
        IFS=, read -ra more <<< "${entry#*=}"
        for part in "${more[@]}"; do files+=("fabfile/remote/$part"); done
    done
    files+=("$f")
    : > "$tmp/$name"
    starts='' line=1
    for x in "${files[@]}"; do  # as commands.program joins them: with a newline
        starts="$starts $line=$x"
        cat "$x" >> "$tmp/$name"
        echo >> "$tmp/$name"
        line=$((line + $(wc -l < "$x") + 1))
    done
    out=$(shellcheck -s sh -f gcc "$tmp/$name") || rc=1
    [ -z "$out" ] || printf '%s\n' "$out" | awk -F: -v starts="$starts" '
        BEGIN { OFS = ":"; n = split(starts, s, " ") }
        { for (i = n; i >= 1; i--) { split(s[i], p, "="); if ($2 >= p[1]) { $1 = p[2]; $2 -= p[1] - 1; break } } print }'
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
