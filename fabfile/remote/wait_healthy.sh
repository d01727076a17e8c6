# wait_healthy.sh TIMEOUT NO_HEALTHCHECK_WAIT CONTAINER... (run on the host by zdd)
# Waits until every container is running and healthy (a container without a healthcheck
# counts once it has kept running NO_HEALTHCHECK_WAIT seconds). Ends at once when one
# exits or restarts. Prints one final line: "healthy", "failed: ID STATE..." or
# "timeout: ID STATE...". Exit 0 healthy, 1 failed, 2 timeout.
timeout=$1 nocheck=$2
shift 2
start=$(date +%s)
while :; do
    now=$(date +%s)
    pending= failed=
    for id in "$@"; do
        st=$(docker inspect --format '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.RestartCount}}' "$id" 2>/dev/null) || st="gone - 0"
        status=${st%% *} rest=${st#* }
        health=${rest%% *} restarts=${rest#* }
        if [ "$status" != running ] || [ "$restarts" != 0 ]; then
            failed="$failed $id=$status"
        elif [ "$health" = healthy ]; then
            :
        elif [ "$health" = none ] && [ $((now - start)) -ge "$nocheck" ]; then
            :
        else
            pending="$pending $id=$health"
        fi
    done
    if [ -n "$failed" ]; then echo "failed:$failed"; exit 1; fi
    if [ -z "$pending" ]; then echo "healthy after $((now - start))s"; exit 0; fi
    if [ $((now - start)) -ge "$timeout" ]; then echo "timeout after ${timeout}s:$pending"; exit 2; fi
    sleep 0.5
done
