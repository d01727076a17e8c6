# pull.sh KEEP_LOGIN SERVER USERNAME LIMIT SERVICE... -- COMPOSE_FLAGS...
# (run on the host by zdd in the project directory, after lib.sh, as `sh -c 'LIB SCRIPT' pull.sh ARGS...`;
# stdin: the registry token, when SERVER is given)
#
# Log in (token on stdin), `docker compose pull` (killed after LIMIT seconds), then list the
# images (`REPO:TAG ID` lines). Unless KEEP_LOGIN is 1, the login goes to a temporary Docker
# config (the user's CLI plugins linked in) that is removed afterwards: the token is not left
# in ~/.docker/config.json. Explain mode (lib.sh): the login and the pull it would run (the
# token is neither read nor printed), no listing.
keep=$1 server=$2 user=$3 limit=$4
shift 4
kill_after=10  # a pull still running at its LIMIT is sent SIGTERM, and SIGKILL this much later
services=
while [ $# -gt 0 ] && [ "$1" != "--" ]; do services="$services $1"; shift; done
[ $# -gt 0 ] && shift
compose_flags "$@"
if [ -n "$server" ]; then
    own=${DOCKER_CONFIG:-$HOME/.docker}
    cfg=$own
    if [ "$keep" != 1 ] && [ -z "$explaining" ]; then
        cfg=$(mktemp -d) || exit 1
        trap 'rm -rf "$cfg"' EXIT
        [ -d "$own/cli-plugins" ] && ln -s "$own/cli-plugins" "$cfg/cli-plugins"
    fi
    if [ -z "$explaining" ]; then
        DOCKER_CONFIG=$cfg
        export DOCKER_CONFIG
    fi
    run docker login --username "$user" --password-stdin "$server" >/dev/null || exit 1
    echo "logged in to $server$([ "$keep" = 1 ] || echo ' (temporary config)')"
fi
flag_words
# shellcheck disable=SC2086 # one word per flag
set -- docker compose $flags
plain_words
# shellcheck disable=SC2086 # service names, one word each
set -- "$@" pull --quiet $services
if command -v timeout >/dev/null 2>&1; then set -- timeout -k "$kill_after" "$limit" "$@"; fi
run "$@" || exit 1
[ -n "$explaining" ] || docker image ls --no-trunc --format '{{.Repository}}:{{.Tag}} {{.ID}}'
