# restore.sh MODE KEY PROXY CONFIG TIMEOUT LOG [OLD_ID...]
# (run on the host by zdd, after lib.sh, as `sh -c 'LIB SCRIPT' restore.sh ARGS...`; stdin: nothing)
#
# The end of a deploy: wait until the old containers are gone (Docker's DNS answers with a
# container until it has exited, so the proxy cannot route by service name before), reload
# the proxy's config file (name-based upstreams again). MODE "wait" does it in the
# foreground; "detach" hands it to a background job that takes over the project's deploy lock
# (its pid is recorded, so the next deploy waits for it or, if it died, takes the lock over)
# and returns at once. LOG ("-": none) is the access log zdd's configs wrote in the proxy
# container (canary steps, the watch): removed once the reload has closed it.
# Prints one final line; exit 0 when restored. Explain mode (lib.sh): the
# wait and the reload, in the foreground, and the final line of a success.
mode=$1 key=$2 proxy=$3 config=$4 timeout=$5 access_log=$6
shift 6
reload() {
    case "$config" in
        *.json) run docker exec "$proxy" caddy reload --config "$config" --force ;;
        *) run docker exec "$proxy" caddy reload --config "$config" --adapter caddyfile --force ;;
    esac
}
restore() {
    t0=$(date +%s)
    containers_gone "$timeout" "$@"
    waited=$(( $(date +%s) - t0 ))
    if [ -n "$left" ]; then
        echo "old containers still there after ${waited}s:$left; the proxy stays on container addresses"
        rc=2
    elif out=$(reload 2>&1); then
        echo "restored $config after ${waited}s"
        rc=0
        [ "$access_log" = - ] || run docker exec "$proxy" rm -f "$access_log" >/dev/null 2>&1 || true
    else
        echo "reload of $config failed: $(last "$out")"
        rc=1
    fi
    # a job releases the lock it took over (only if it is still its own); in the
    # foreground, the deploy that holds it releases it
    if [ -n "${job:-}" ]; then lock_free_of_job "$job"; fi
    return $rc
}
if [ -n "$explaining" ]; then
    [ $# = 0 ] || explain wait "gone: $* up to $timeout s"
    reload
    if [ "$mode" = wait ]; then echo "restored $config after 0s"
    else echo "restore queued (explain mode: not started): it waits for $# old container(s) to stop, then reloads $config and releases the lock"; fi
    exit 0
fi
if [ "$mode" = wait ]; then restore "$@"; exit $?; fi
mkdir -p "$zdd/jobs"
log=$zdd/jobs/restore.log
(
    trap '' HUP INT
    # shellcheck disable=SC2016 # $PPID of the inner sh: this subshell's pid
    job=$(sh -c 'echo $PPID')
    lock_to_job "$job" restore "waits for ${#} old container(s), then reloads $config"
    restore "$@"
) </dev/null >"$log" 2>&1 &
echo "restore queued (job $!): it waits for $# old container(s) to stop, then reloads $config and releases the lock"
