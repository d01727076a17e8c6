# pull.sh KEEP_LOGIN SERVER USERNAME LIMIT SERVICE... -- COMPOSE_FLAGS...
# (run on the host by zdd in the project directory, as `sh -c SCRIPT pull.sh ARGS...`;
# stdin: the registry token, when SERVER is given)
#
# Log in (token on stdin), `docker compose pull` (killed after LIMIT seconds), then list the
# images (`REPO:TAG ID` lines). Unless KEEP_LOGIN is 1, the login goes to a temporary Docker
# config (the user's CLI plugins linked in) that is removed afterwards: the token is not left
# in ~/.docker/config.json.
keep=$1 server=$2 user=$3 limit=$4
shift 4
services=
while [ $# -gt 0 ] && [ "$1" != "--" ]; do services="$services $1"; shift; done
[ $# -gt 0 ] && shift
if [ -n "$server" ]; then
    own=${DOCKER_CONFIG:-$HOME/.docker}
    if [ "$keep" = 1 ]; then
        cfg=$own
    else
        cfg=$(mktemp -d) || exit 1
        trap 'rm -rf "$cfg"' EXIT
        [ -d "$own/cli-plugins" ] && ln -s "$own/cli-plugins" "$cfg/cli-plugins"
    fi
    DOCKER_CONFIG=$cfg docker login --username "$user" --password-stdin "$server" >/dev/null || exit 1
    DOCKER_CONFIG=$cfg
    export DOCKER_CONFIG
    echo "logged in to $server$([ "$keep" = 1 ] || echo ' (temporary config)')"
fi
run=
command -v timeout >/dev/null 2>&1 && run="timeout -k 10 $limit"
$run docker compose "$@" pull --quiet $services || exit 1
docker image ls --no-trunc --format '{{.Repository}}:{{.Tag}} {{.ID}}'
