# restore.sh MODE KEY PROXY CONFIG TIMEOUT [OLD_ID...]
# (run on the host by zdd, as `sh -c SCRIPT restore.sh ARGS...`; stdin: nothing)
#
# The end of a deploy: wait until the old containers are gone (Docker's DNS answers with a
# container until it has exited, so the proxy cannot route by service name before), reload
# the proxy's config file (name-based upstreams again). MODE "wait" does it in the
# foreground; "detach" hands it to a background job that takes over the project's deploy lock (its pid is recorded, so the next deploy waits for it or, if it died,
# takes the lock over) and returns at once. Prints one final line; exit 0 when restored.
mode=$1 lock=$HOME/.zdd/locks/$2 proxy=$3 config=$4 timeout=$5
shift 5
restore() {
    t0=$(date +%s) left=
    while :; do
        left=
        for id in "$@"; do docker inspect --format . "$id" >/dev/null 2>&1 && left="$left $id"; done
        [ -z "$left" ] && break
        if [ $(( $(date +%s) - t0 )) -ge "$timeout" ]; then break; fi
        sleep 0.2 2>/dev/null || sleep 1
    done
    waited=$(( $(date +%s) - t0 ))
    if [ -n "$left" ]; then
        echo "old containers still there after ${waited}s:$left; the proxy stays on container addresses"
        rc=2
    else
        case "$config" in *.json) adapter= ;; *) adapter="--adapter caddyfile" ;; esac
        if out=$(docker exec "$proxy" caddy reload --config "$config" $adapter --force 2>&1); then
            echo "restored $config after ${waited}s"
            rc=0
        else
            echo "reload of $config failed: $(printf '%s' "$out" | tail -n 1 | cut -c1-300)"
            rc=1
        fi
    fi
    # a job releases the lock it took over (only if it is still its own); in the
    # foreground, the deploy that holds it releases it
    if [ -n "${job:-}" ] && [ "$(cat "$lock/pid" 2>/dev/null)" = "$job" ]; then rm -rf "$lock"; fi
    return $rc
}
if [ "$mode" = wait ]; then restore "$@"; exit $?; fi
mkdir -p "$HOME/.zdd/jobs"
log=$HOME/.zdd/jobs/restore.log
(
    trap '' HUP INT
    job=$(sh -c 'echo $PPID')
    echo "$job" > "$lock/pid"
    echo "restore job $job on $(hostname) since $(date '+%Y-%m-%d %H:%M:%S %Z'): waits for ${#} old container(s), then reloads $config" > "$lock/holder"
    restore "$@"
) </dev/null >"$log" 2>&1 &
echo "restore queued (job $!): it waits for $# old container(s) to stop, then reloads $config and releases the lock"
