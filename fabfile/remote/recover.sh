# recover.sh KEY RUN N [PID SWITCHED SERVICES OLD_IDS]xN COMPOSE_FLAGS...
# (run on the host by zdd, in the project directory, as `sh -c SCRIPT recover.sh ARGS...`)
#
# Finishes or undoes the tiers of an interrupted run RUN (from the project's journal), so that
# every service is left with one whole set of containers:
#   - a tier.sh still running before its switch is stopped (SIGTERM: it removes what it started);
#     one still running after its switch is waited for (it drains and retires on its own);
#   - a tier.sh that died before its switch: the containers it started are removed (the old
#     ones never stopped serving); after its switch: the old ones are stopped and removed.
# SERVICES and OLD_IDS are comma-separated. Prints one line per tier; appends to the journal.
key=$1 run=$2 count=$3
shift 3
i=1
while [ "$i" -le "$count" ]; do
    for k in pid switched services old; do eval "${k}_$i=\$1"; shift; done
    i=$((i + 1))
done
flags=
for a in "$@"; do flags="$flags '$(printf '%s' "$a" | sed "s/'/'\\\\''/g")'"; done
dc() { eval "docker compose $flags \"\$@\""; }
journal=$HOME/.zdd/journal/$key.jsonl
commas() { printf '%s' "$1" | tr ',' ' '; }
alive() { kill -0 "$1" 2>/dev/null && tr '\000' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -q 'tier\.sh'; }
wait_gone() {  # wait_gone PID SECONDS
    n=0
    while alive "$1" && [ $n -lt $(($2 * 5)) ]; do sleep 0.2 2>/dev/null || sleep 1; n=$((n + 1)); done
    ! alive "$1"
}
i=1
while [ "$i" -le "$count" ]; do
    eval "pid=\$pid_$i switched=\$switched_$i services=\$services_$i old=\$old_$i"
    what=
    if alive "$pid"; then
        if [ -z "$switched" ]; then
            kill -TERM "$pid" 2>/dev/null
            if wait_gone "$pid" 30; then what="stopped its tier.sh (it removed the new containers)"
            else what="its tier.sh $pid did not stop within 30s"; fi
        elif wait_gone "$pid" 180; then what="waited for its tier.sh to drain and retire the old containers"
        else what="its tier.sh $pid is still draining after 180s"; fi
    elif [ -z "$switched" ]; then
        new=
        for svc in $(commas "$services"); do
            for id in $(dc ps --all --quiet "$svc" 2>/dev/null); do
                id=$(printf '%s' "$id" | cut -c1-12)
                case ",$old," in *",$id,"*) ;; *) new="$new $id" ;; esac
            done
        done
        if [ -n "$new" ]; then docker rm --force $new >/dev/null 2>&1; what="removed the new containers:$new"
        else what="nothing was started"; fi
    else
        ids=
        for id in $(commas "$old"); do docker inspect --format . "$id" >/dev/null 2>&1 && ids="$ids $id"; done
        if [ -n "$ids" ]; then
            docker stop $ids >/dev/null 2>&1; docker rm $ids >/dev/null 2>&1
            what="stopped the old containers, out of rotation since the switch:$ids"
        else what="the old containers were already gone"; fi
    fi
    echo "recovered $services: $what"
    i=$((i + 1))
done
mkdir -p "$HOME/.zdd/journal"
printf '{"run": "%s", "t": %s, "event": "end", "result": "interrupted", "recovered_by": "%s"}\n' \
    "$run" "$(date +%s)" "$$" >> "$journal"
