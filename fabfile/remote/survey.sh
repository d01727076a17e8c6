# survey.sh PROXY_SERVICE CONFIG ADMIN COMPOSE_FLAGS... (run on the host by zdd, in the
# project directory, as `sh -c SCRIPT survey.sh ARGS...`)
#
# Everything a deploy needs to know about the host, read once and changing nothing: the
# compose model, the config hash each service would get now, every container of the project
# (docker inspect), and the proxy: its config file as JSON, the config it runs, its version.
# Each section starts with a line "=== NAME EXIT_STATUS".
proxy=$1 config=$2 admin=$3
shift 3
err=$(mktemp 2>/dev/null || echo "/tmp/zdd-survey-$$")
trap 'rm -f "$err"' EXIT
section() {  # section NAME COMMAND...: its stdout, or its stderr when it failed
    name=$1; shift
    out=$("$@" 2>"$err"); rc=$?
    [ "$rc" = 0 ] || out="$out$(cat "$err")"
    printf '=== %s %s\n%s\n' "$name" "$rc" "$out"
}
section compose docker compose "$@" config --format json
section hashes docker compose "$@" config --hash '*'
ids=$(docker compose "$@" ps --all --quiet 2>/dev/null)
# a container removed between ps and inspect makes inspect fail but still print the others
out=
[ -n "$ids" ] && out=$(docker inspect $ids 2>/dev/null)
printf '=== containers 0\n%s\n' "${out:-[]}"
[ -n "$proxy" ] || exit 0
pid=$(docker compose "$@" ps --quiet --status running "$proxy" 2>/dev/null | head -n 1)
printf '=== proxy-container 0\n%s\n' "$pid"
[ -n "$pid" ] || exit 0
case "$config" in
    *.json) section proxy-config docker exec "$pid" cat "$config" ;;
    *) section proxy-config docker exec "$pid" caddy adapt --config "$config" --adapter caddyfile ;;
esac
section proxy-running docker exec "$pid" wget -q -O - "http://$admin/config/"
section proxy-version docker exec "$pid" caddy version
