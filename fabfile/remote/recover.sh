# recover.sh KEY RUN N [PID SWITCHED SERVICES OLD_IDS NEW_IDS SINCE]xN COMPOSE_FLAGS...
# (run on the host by zdd in the project directory, after lib.sh, as `sh -c 'LIB SCRIPT' recover.sh ARGS...`)
#
# Finishes or undoes the tiers of an interrupted run RUN (from the project's journal), or the
# tiers a run that ended left unfinished (its connection dropped as a tier switched: its client
# never heard "switched"), so that every service is left with one whole set of containers:
#   - a tier.sh still running before its switch is stopped (SIGTERM: it removes what it started);
#     one still running after its switch is waited for (it drains and retires on its own);
#   - a tier.sh that died before its switch: the containers it started are removed (the old
#     ones never stopped serving); after its switch: the old ones are stopped and removed.
# What it may remove is what the run recorded: NEW_IDS (its `new` event); when that line is
# missing (it died first), only containers of SERVICES created since SINCE (the tier's start,
# epoch seconds) that are neither old nor a one-off `compose run` job.
# SERVICES, OLD_IDS and NEW_IDS are comma-separated. Prints one line per tier; appends to the journal.
# Explain mode (lib.sh): what it would stop, wait for and remove, and the same lines.
key=$1 run_id=$2 count=$3
shift 3
stop_wait=30    # s a tier.sh before its switch gets to undo its tier after SIGTERM
drain_wait=180  # s a tier.sh after its switch gets to drain and retire the old containers
tiers=  # one line per tier: PID SWITCHED SERVICES OLD_IDS NEW_IDS SINCE ("-" for empty)
i=1
while [ "$i" -le "$count" ]; do
    tiers="$tiers$1 ${2:--} ${3:--} ${4:--} ${5:--} ${6:-0}$zdd_nl"
    shift 6
    i=$((i + 1))
done
compose_flags "$@"
alive() { kill -0 "$1" 2>/dev/null && tr '\000' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep 'tier\.sh' >/dev/null; }
wait_gone() {  # wait_gone PID SECONDS
    explain wait "tier.sh $1 to end, up to $2 s"
    [ -z "$explaining" ] || return 0
    n=0
    while alive "$1" && [ "$n" -lt "$(($2 * 5))" ]; do nap; n=$((n + 1)); done  # nap_seconds: 0.2
    ! alive "$1"
}
old_gone() {  # old_gone SECONDS: until the tier's old containers are gone (tier.sh stops them in the background)
    explain wait "gone: $(commas "$old") up to $1 s"
    [ -z "$explaining" ] || return 0
    # shellcheck disable=SC2046 # container ids, one word each
    containers_gone "$1" $(commas "$old")
}
recover_tier() {
    if alive "$pid"; then
        if [ -z "$switched" ]; then
            run kill -TERM "$pid" 2>/dev/null
            if wait_gone "$pid" "$stop_wait"; then what="stopped its tier.sh (it removed the new containers)"
            else what="its tier.sh $pid did not stop within ${stop_wait}s"; fi
        elif wait_gone "$pid" "$drain_wait" && old_gone "$drain_wait"; then
            what="waited for its tier.sh to drain and retire the old containers"
        else what="its tier.sh $pid is still draining after ${drain_wait}s"; fi
    elif [ -z "$switched" ]; then
        new=
        if [ -n "$new_ids" ]; then  # what the run journaled it started, those that are still there
            for id in $(commas "$new_ids"); do docker inspect --format . "$id" >/dev/null 2>&1 && new="$new $id"; done
        else  # it died before it journaled them: what was created for these services since it started
            for svc in $(commas "$services"); do
                for id in $(dc ps --all --quiet "$svc" 2>/dev/null); do
                    id=$(printf '%s' "$id" | cut -c1-12)
                    case ",$old," in *",$id,"*) continue ;; esac
                    made=$(docker inspect --format '{{index .Config.Labels "com.docker.compose.oneoff"}} {{.Created}}' \
                        "$id" 2>/dev/null) || continue
                    [ "${made%% *}" != True ] || continue
                    created=$(date -u -d "$(printf '%s' "${made#* }" | cut -c1-19 | tr T ' ')" +%s 2>/dev/null) || continue
                    [ "$created" -ge "$since" ] && new="$new $id"
                done
            done
        fi
        if [ -n "$new" ]; then
            # shellcheck disable=SC2086 # container ids, one word each
            run docker rm --force $new >/dev/null 2>&1
            what="removed the new containers:$new"
        else
            what="nothing was started"
        fi
    else
        ids=
        for id in $(commas "$old"); do docker inspect --format . "$id" >/dev/null 2>&1 && ids="$ids $id"; done
        if [ -n "$ids" ]; then
            # shellcheck disable=SC2086 # container ids, one word each
            { run docker stop $ids; run docker rm $ids; } >/dev/null 2>&1
            what="stopped the old containers, out of rotation since the switch:$ids"
        else
            what="the old containers were already gone"
        fi
    fi
    echo "recovered $services: $what"
    case "$what" in  # a tier finished here is journaled so (tier.sh journals its own end)
        removed* | "nothing was started") journal_tier undone ;;
        "stopped the old containers"* | "the old containers were already gone") journal_tier retired ;;
    esac
}
journal_tier() {
    journal_line "$(printf '{"run": "%s", "t": %s, "event": "%s", "pid": %s, "recovered_by": %s}' \
        "$run_id" "$(date +%s)" "$1" "$pid" "$$")"
}
# a run that ended (its client wrote its end, not knowing what the host still did) keeps its result
ended=
grep -F "\"run\": \"$run_id\"" "$zdd/journal/$key.jsonl" 2>/dev/null | grep -F '"event": "end"' >/dev/null && ended=1
while read -r pid switched services old new_ids since <&9; do
    [ -n "$pid" ] || continue
    [ "$switched" != - ] || switched=
    [ "$services" != - ] || services=
    [ "$old" != - ] || old=
    [ "$new_ids" != - ] || new_ids=
    recover_tier
done 9<<TIERS
$tiers
TIERS
[ -n "$ended" ] ||
    journal_line "$(printf '{"run": "%s", "t": %s, "event": "end", "result": "interrupted", "recovered_by": "%s"}' \
        "$run_id" "$(date +%s)" "$$")"
