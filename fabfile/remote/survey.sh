# survey.sh PROXY_SERVICE CONFIG ADMIN PROJECT TAIL COMPOSE_FLAGS...
# survey.sh --stack STACK STATE_FILE TAIL PROXY_SERVICE ADMIN COMPOSE_FLAGS...  (a Swarm stack)
# (run on the host by zdd, in the project directory, after lib.sh, as `sh -c 'LIB SCRIPT' survey.sh ARGS...`)
#
# Everything a deploy needs to know about the host, read once and changing nothing: the
# project's key (its resolved directory and compose project: names its lock and journal),
# the lock holder, the journal's last TAIL lines, the compose model, the config hash each
# service would get now, every container of the project (docker inspect), and the proxy: its
# config file as JSON, the config it runs, its version.
# With --stack: the key (stack_STACK), lock and journal, the compose model, this node's swarm
# state, the swarm's nodes (docker node inspect: where tasks may go), the stack's services
# (docker service inspect) and their running/desired tasks, what zdd last applied
# (~/STATE_FILE), and the config the proxy's task on this node runs (Caddy's admin API at ADMIN,
# seen from inside it; no section when PROXY_SERVICE is empty or has no task here).
# Each section starts with a line "=== NAME EXIT_STATUS". The reads run in parallel.
if [ "$1" = --stack ]; then
    key=$(printf 'stack:%s' "$2" | tr -c 'A-Za-z0-9._-' '_') tail_lines=$4
else
    key=$(printf '%s%s' "$(pwd -P)" "${4:+:$4}" | tr -c 'A-Za-z0-9._-' '_') tail_lines=$5
fi
journal=$zdd/journal/$key.jsonl
printf '=== key 0\n%s\n' "$key"
printf '=== lock 0\n'
cat "$zdd/locks/$key/holder" 2>/dev/null
printf '=== journal 0\n'
[ -s "$journal" ] && tail -n "$tail_lines" "$journal"  # the recent runs: an unfinished one is among them
dir=$(mktemp -d 2>/dev/null || { mkdir -p "/tmp/zdd-survey-$$" && echo "/tmp/zdd-survey-$$"; })
trap 'rm -rf "$dir"' EXIT
read_bg() {  # read_bg NAME COMMAND...: in the background, its stdout (or its stderr when it failed)
    name=$1; shift
    { "$@" >"$dir/$name.out" 2>"$dir/$name.err"; echo $? >"$dir/$name.rc"; } &
}
show() {  # show NAME: print the section
    rc=$(cat "$dir/$1.rc" 2>/dev/null || echo 1)
    printf '=== %s %s\n' "$1" "$rc"
    cat "$dir/$1.out"
    [ "$rc" = 0 ] || cat "$dir/$1.err"
    echo
}
if [ "$1" = --stack ]; then
    stack=$2 state=$3 proxy=$5 admin=$6
    shift 6
    filter="label=com.docker.stack.namespace=$stack"
    read_bg compose docker compose "$@" config --format json
    read_bg node docker info --format '{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}'
    read_bg replicas docker service ls --filter "$filter" --format '{{.Name}} {{.Replicas}}'
    read_bg applied cat "$HOME/$state"
    nodes() {  # every node of the swarm, as docker node inspect describes it
        ids=$(docker node ls --quiet) || return 1
        # shellcheck disable=SC2086 # ids, one word each
        docker node inspect $ids
    }
    read_bg nodes nodes
    pid=''
    [ -n "$proxy" ] && pid=$(docker ps --quiet --filter "label=com.docker.swarm.service.name=${stack}_$proxy" | head -n 1)
    [ -n "$pid" ] && read_bg proxy-running bounded docker exec "$pid" wget -q -O - "http://$admin/config/"
    ids=$(docker service ls --quiet --filter "$filter" 2>/dev/null)
    # a service removed between ls and inspect makes inspect fail but still print the others
    # shellcheck disable=SC2086 # ids, one word each
    [ -n "$ids" ] && docker service inspect $ids >"$dir/services.out" 2>/dev/null
    wait
    for section in compose node replicas applied nodes; do show "$section"; done
    [ -z "$pid" ] || show proxy-running
    printf '=== services 0\n'
    if [ -s "$dir/services.out" ]; then cat "$dir/services.out"; else echo '[]'; fi
    exit 0
fi
proxy=$1 config=$2 admin=$3
shift 5
read_bg compose docker compose "$@" config --format json
read_bg hashes docker compose "$@" config --hash '*'
read_bg ids docker compose "$@" ps --all --quiet
[ -n "$proxy" ] && read_bg pid docker compose "$@" ps --quiet --status running "$proxy"
wait
show compose
show hashes
# a container removed between ps and inspect makes inspect fail but still print the others
ids=$(cat "$dir/ids.out")
pid=$(head -n 1 "$dir/pid.out" 2>/dev/null)
if [ -n "$pid" ]; then
    case "$config" in
        *.json) read_bg proxy-config docker exec "$pid" cat "$config" ;;
        *) read_bg proxy-config docker exec "$pid" caddy adapt --config "$config" --adapter caddyfile ;;
    esac
    read_bg proxy-running bounded docker exec "$pid" wget -q -O - "http://$admin/config/"
    read_bg proxy-version docker exec "$pid" caddy version
fi
# shellcheck disable=SC2086 # ids, one word each
[ -n "$ids" ] && docker inspect $ids >"$dir/containers.out" 2>/dev/null
wait
printf '=== containers 0\n'
if [ -s "$dir/containers.out" ]; then cat "$dir/containers.out"; else echo '[]'; fi
[ -n "$proxy" ] || exit 0
printf '=== proxy-container 0\n%s\n' "$pid"
[ -n "$pid" ] || exit 0
show proxy-config
show proxy-running
show proxy-version
