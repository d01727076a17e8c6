# tier.sh START PROXY ADMIN DRAIN_TIMEOUT NOCHECK_WAIT STREAM_GRACE KEY RUN N [SERVICE TARGET HEALTH_TIMEOUT
#         STOP_TIMEOUT OLD_IDS HELD_ADDRS HOOK]xN COMPOSE_FLAGS...
# (run on the host by zdd in the project directory, after lib.sh, as `sh -c 'LIB SCRIPT' tier.sh ARGS...`)
#
# Replaces the containers of one tier of app services, all at once, talking with zdd over
# stdin/stdout (one SSH round trip for the whole tier):
#
#   zdd sends "journal LINE"...      lines for the project's journal (the plan), then
#             "pin JSON" | "nopin"   load the proxy config that pins every service about to
#                                    roll to its old containers (the first tier), or not
#   we start the new containers: START `compose` scales each service to OLD+TARGET with
#   `docker compose up --no-recreate`; START `plugin` starts one detached `docker rollout` per
#   running service, whose pre-stop hook holds the old containers until we release them (a
#   service whose containers cannot hold the hook is started with compose)
#   we print  "pid PID" (SIGTERM to it undoes the tier before the switch), then
#             "new SERVICE ID NET=IP...", "progress ...", then "healthy after Ns", or
#             "failed REASON" after "detail-* ..." lines (new containers removed, exit 1)
#   zdd sends, for canary steps (proxy.sh counts the log):
#             "canary LOG FIELD ADDRS"  the access log the weighted configs write (in the proxy
#                                    container), its upstream field, the new containers' addresses
#             "back JSON"            the config that sends the tier back to its old containers
#             "weigh PERCENT JSON"   load a step's weights; we print "weighted PERCENT"
#             "stats"                we print "stats ADDR ANSWERS 5XX BUCKETS..." lines, "stats-end"
#             "journal LINE"         a line for the journal (a breach, with its figures)
#   zdd sends "switch JSON"          route the tier to its new containers only
#             "go"                   no proxy routing: go on
#             "abort" (or EOF)       remove the new containers (exit 3); after a canary step,
#                                    load "back" first and wait until nothing is in flight to them
#   we print  "switched", wait until the old addresses have nothing in flight at the proxy
#             ("drained ..."), then retire the old containers in the background ("retired")
#   with "watch" (sent before the switch) we print "watching" right after "switched" and hold the
#   old containers: zdd sends "stats"..., then "retire" (or EOF: the new ones serve: we drain
#   the old addresses and retire them), or
#             "return [JSON]"        journal "returned", load JSON (one tier does), print
#                                    "returning", wait until nothing is in flight to the new
#                                    containers, remove them, print "returned ..."
#
# OLD_IDS and HELD_ADDRS are comma-separated; STOP_TIMEOUT and HOOK may be empty. Before the
# switch, SIGTERM or a dropped connection undoes the tier; after it, the old containers get
# no traffic and we finish on our own, whether zdd is still there or not.
#
# Explain mode (lib.sh): the same conversation, but nothing is started, loaded, waited for or
# stopped; between the lines above come the "run", "wait" and "load" lines of what a real run
# would do, and the "new" lines name placeholders on the networks the service's old containers
# (or else the proxy) are on.
trap '' PIPE HUP
start_with=$1 proxy=$2 admin=$3 drain_timeout=$4 nocheck=$5 stream_grace=$6 key=$7 run_id=$8 count=$9
shift 9

# waits that are not settings, in seconds
margin=60        # `compose up` and a held docker-rollout hook may outlast the health (and drain) waits by this
kill_after=10    # a `compose up` still running at its limit is sent SIGTERM, and SIGKILL this much later
undo_grace=1     # docker-rollout gets this long to end on SIGTERM before its process group is killed
blind_wait=10    # no in-flight counts from the proxy: the old containers stop after this (at most the drain timeout)
hook_polls=5     # the held pre-stop hook looks for its release this many times a second
nap_seconds=0.2  # between two looks at the new containers' health (and polls of the drain)
poll_every=5     # with Docker's events heard, the health wait polls every this many looks at least
sick_grace=5     # a new container Docker calls unhealthy fails the tier if not healthy again within this
pause_max=300    # tests only: the longest a pause point (pause_at) holds the tier

# each service's fields, one line each ("-" for an empty field), its hook in a file of its own;
# what is learnt of it on the way (how it starts, its docker-rollout's pid and exit status) too
tmp=$(mktemp -d) || { say "failed cannot make a temporary directory"; exit 1; }
trap 'stop_listening; rm -rf "$tmp"' EXIT
: > "$tmp/services"
j=1
while [ "$j" -le "$count" ]; do
    printf '%s %s %s %s %s %s\n' "$1" "$2" "$3" "${4:--}" "${5:--}" "${6:--}" >> "$tmp/services"
    printf '%s' "$7" > "$tmp/hook.$j"
    shift 7
    j=$((j + 1))
done
compose_flags "$@"  # the rest: the compose project's flags
jobs=$zdd/jobs
[ -n "$explaining" ] || mkdir -p "$jobs"
tag=$(date +%s)-$$
hold=zdd-release-$tag
switched='' pids=''

each() {  # each FUNCTION...: call it once per service, with j, name, target, htime, stime, old, held set
    j=0
    while read -r name target htime stime old held <&9; do
        j=$((j + 1))
        [ "$stime" != - ] || stime=
        [ "$old" != - ] || old=
        [ "$held" != - ] || held=
        "$@"
    done 9< "$tmp/services"
}
pause_at() {  # tests only: when ~/.zdd/test-pause names this point, wait here while that file exists
    [ -z "$explaining" ] && [ -f "$zdd/test-pause" ] && [ "$(cat "$zdd/test-pause" 2>/dev/null)" = "$1" ] || return 0
    printf '%s %s\n' "$$" "$1" > "$zdd/test-paused"
    n=0
    while [ -f "$zdd/test-pause" ] && [ "$n" -lt "$((pause_max * 5))" ]; do nap; n=$((n + 1)); done
    rm -f "$zdd/test-paused"
}
now() {  # the host's clock: seconds, with milliseconds where date has %N (GNU; BusyBox built with it)
    _n=$(date +%s.%N 2>/dev/null) || _n=
    case $_n in
        *.[0-9][0-9][0-9]*) printf '%s' "${_n%"${_n#*.???}"}" ;;
        *) date +%s ;;
    esac
}
mark() { [ -n "$explaining" ] || say "mark $(now) $*"; }  # mark WHAT [SERVICE [ID]]: the tier's timeline
put() { printf '%s\n' "$2" > "$tmp/$1.$j"; }      # put FIELD VALUE: of service $j
get() { cat "$tmp/$1.$j" 2>/dev/null; }           # get FIELD: of service $j (empty if never put)
hook() { cat "$tmp/hook.$j"; }                     # the user's pre-stop hook of service $j
by_plugin() {  # service $j is started by docker rollout (read without a fork: the health wait asks often)
    _how=
    read -r _how < "$tmp/how.$j" 2>/dev/null
    [ "$_how" = plugin ]
}

# The project's containers, looked at all at once: one `docker ps` (filtered on the project's
# label, a fraction of the cost of `docker compose ps`) and one `docker inspect` for all of them,
# whatever the number of services and replicas. A poll writes "ID SERVICE ONEOFF STATUS HEALTH
# RESTARTS CREATED STARTED PASSED..." lines (short ids; "-" for a missing label; Docker's times of
# its creation, its start, and its passing healthchecks still in its log) to $tmp/poll; with $polled set, the
# readers below use the last poll, else each takes a poll of its own. Once every new container
# of the tier exists ($watched: their ids), the health wait's polls inspect those alone.
project=
polled=
watched=
poll() {
    if [ -n "$watched" ]; then
        # shellcheck disable=SC2086 # container ids, one word each
        inspect_poll $watched
        return
    fi
    if [ -z "$project" ] && [ -n "$all_old" ]; then  # the project's name, from one of its containers
        project=$(bounded docker inspect --format '{{index .Config.Labels "com.docker.compose.project"}}' \
            "${all_old%%,*}" 2>/dev/null) || project=
    fi
    if [ -n "$project" ]; then
        _ids=$(bounded docker ps --all --quiet --filter "label=com.docker.compose.project=$project" 2>/dev/null)
    else
        _ids=$(dc ps --all --quiet 2>/dev/null)
    fi
    # shellcheck disable=SC2086 # container ids, one word each
    inspect_poll $_ids
    if [ -z "$project" ]; then  # from now on `docker ps` finds them
        project=$(bounded docker inspect --format '{{index .Config.Labels "com.docker.compose.project"}}' \
            "${_ids%%"$zdd_nl"*}" 2>/dev/null) || project=
    fi
}
inspect_poll() {  # inspect_poll ID...: the poll's lines of these containers
    : > "$tmp/poll"
    [ $# -gt 0 ] || return 0
    bounded docker inspect --format '{{printf "%.12s" .ID}} {{with index .Config.Labels "com.docker.compose.service"}}{{.}}{{else}}-{{end}} {{with index .Config.Labels "com.docker.compose.oneoff"}}{{.}}{{else}}-{{end}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.RestartCount}} {{.Created}} {{.State.StartedAt}}{{if .State.Health}}{{range .State.Health.Log}}{{if .ExitCode}}{{else}} {{.End.UTC.Format "2006-01-02T15:04:05.000000Z07:00"}}{{end}}{{end}}{{end}}' \
        "$@" > "$tmp/poll" 2>/dev/null
}
containers_of() {  # containers_of [--new] [STATUS...]: the replicas of service $name (a `docker
    # compose run` job, labelled oneoff, is none: never counted, routed to or removed), as "ID
    # STATUS HEALTH RESTARTS CREATED STARTED PASSED..." lines; --new: not its old ones; with STATUS
    # words, only those in one of these states. One loop, no pipe: the health wait runs it for
    # every service at every poll.
    _new=
    if [ "${1-}" = --new ]; then _new=1; shift; fi
    [ -n "$polled" ] || poll
    while read -r _id _svc _oneoff _st _rest; do
        if [ "$_svc" != "$name" ] || [ "$_oneoff" = True ]; then continue; fi
        [ -z "$_new" ] || case ",$old," in *",$_id,"*) continue ;; esac
        [ $# = 0 ] || case " $* " in *" $_st "*) ;; *) continue ;; esac
        printf '%s %s %s\n' "$_id" "$_st" "$_rest"
    done < "$tmp/poll"
}
new_of() {  # the containers of service $name that are not old ones (nor one-off jobs)
    containers_of --new | while read -r _id _; do printf '%s ' "$_id"; done
}

# While the new containers boot, Docker's events for the project's containers (a start, a
# health change, a death) tell the health wait when to poll again: a poll costs two docker
# calls, a look at the events file none. Without events (no project name yet, an old docker)
# it polls every look.
up_at=$(date +%s) events_pid='' listened='' heard_size=0
listen() {
    [ -z "$listened" ] && [ -z "$explaining" ] && [ -n "$project" ] || return 0
    listened=1
    set -- docker events --since "$up_at" --filter type=container \
        --filter "label=com.docker.compose.project=$project" \
        --filter event=start --filter event=health_status --filter event=die --format '{{.ID}}'
    # never outlives the wait, even if this script is killed
    if command -v timeout >/dev/null 2>&1; then set -- timeout "$((ceiling + margin))" "$@"; fi
    "$@" </dev/null >"$tmp/events" 2>/dev/null 9<&- &
    events_pid=$!
}
heard() {  # Docker reported something since the last look
    _size=$(wc -c < "$tmp/events" 2>/dev/null) || return 0
    [ "$_size" != "$heard_size" ] || return 1
    heard_size=$_size
}
stop_listening() { [ -z "$events_pid" ] || kill "$events_pid" 2>/dev/null; events_pid=; }

release_one() {  # let docker-rollout's held pre-stop hook in the old containers of $name end
    by_plugin || return 0
    for id in $(commas "$old"); do
        run docker exec "$id" sh -c "true 2>/dev/null > /dev/shm/$hold || true > /tmp/$hold" >/dev/null 2>&1
    done
}
remove_new() {
    ids=$(new_of)
    # shellcheck disable=SC2086 # container ids, one word each
    [ -z "$ids" ] || run docker rm --force $ids >/dev/null 2>&1
}

undo() {  # before the switch the new containers never had traffic: remove them
    polled=  # a fresh look: docker-rollout may have started more since the last poll
    for pid in $pids; do kill -TERM -"$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null; done
    if [ -n "$pids" ]; then  # docker-rollout and its children; they must not roll on their own
        sleep "$undo_grace"
        for pid in $pids; do kill -KILL -"$pid" 2>/dev/null; done
    fi
    each remove_new
    each release_one
    journal_event undone
    say "$1"
}
on_signal() { [ -n "$switched" ] && return; back_out; undo "failed interrupted: new containers removed"; exit 3; }
trap on_signal TERM INT
say "pid $$"
all_old='' all_names=''
mark begin
collect() { all_old="$all_old${all_old:+,}$old" all_names="$all_names${all_names:+,}$name"; }
each collect
journal_event tier services "$all_names" old "$all_old" ||
    { say "failed cannot write the journal $zdd/journal/$key.jsonl: nothing was changed"; exit 1; }

# --- 1. pin ------------------------------------------------------------------------------
while IFS= read -r line && [ "${line#journal }" != "$line" ]; do  # zdd's lines for the journal first
    journal_line "${line#journal }" ||
        { say "failed cannot write the journal $zdd/journal/$key.jsonl: nothing was changed"; exit 1; }
done
case "$line" in
    "pin "*) load pin "${line#pin }" || { say "failed cannot pin the proxy to the old containers"; exit 1; } ;;
    nopin) ;;
    *) say "failed no pin line from zdd"; exit 1 ;;
esac
mark pinned
say "pinned"

# --- 2. start the new containers ---------------------------------------------------------
remove_stale() {  # compose would restart stopped containers instead of creating new ones
    ids=$(containers_of exited created dead | while read -r id _; do printf '%s ' "$id"; done)
    # shellcheck disable=SC2086 # container ids, one word each
    [ -z "$ids" ] || run docker rm --force $ids >/dev/null 2>&1
}
poll; polled=1
each remove_stale
polled=

choose() {  # START plugin: docker-rollout replaces running services whose containers can hold its hook
    put how compose
    [ "$start_with" = plugin ] && [ -n "$old" ] || return 0
    # a real write (removed at once): `test -w` says yes to root on a read-only filesystem
    # shellcheck disable=SC2016 # $d is the container's shell's
    if docker exec "${old%%,*}" sh -c 'for d in /dev/shm /tmp; do true 2>/dev/null > "$d/.zdd-probe" &&
            rm -f "$d/.zdd-probe" && exit 0; done; exit 1' >/dev/null 2>&1; then
        put how plugin
    else
        say "note $name: docker-rollout's pre-stop hook cannot be held in its containers (no sh, or neither" \
            "/dev/shm nor /tmp writable): its new containers are started with compose --scale instead"
    fi
}
each choose
start_rollout() {
    by_plugin || return 0
    # held as long as the tier may take (its slowest service's health wait, the drain), not this service's
    h="n=0; while [ ! -e /dev/shm/$hold ] && [ ! -e /tmp/$hold ] && [ \$n -lt $(( (ceiling + drain_timeout + margin) * hook_polls )) ]; do sleep 0.2 2>/dev/null || sleep 1; n=\$((n+1)); done"
    hook=$(hook)
    [ -n "$hook" ] && h="$h; $hook"
    log=$jobs/rollout-$tag-$name.log
    flag_words
    # shellcheck disable=SC2086 # one word per flag
    set -- docker rollout $flags
    plain_words
    set -- "$@" --timeout "$htime" --wait "$nocheck" --pre-stop-hook "$h" "$name"
    # in a session of its own (setsid), so that $! is docker rollout itself, leader of its process group
    if command -v setsid >/dev/null 2>&1; then set -- setsid "$@"; fi
    if [ -n "$explaining" ]; then run "$@"; return; fi
    ran "$@"
    "$@" </dev/null >"$log" 2>&1 9<&- &
    pids="$pids $!"
    put pid $!
}
wanted() {  # $want: how many new containers service $name gets (docker-rollout: as many as run)
    want=$target
    by_plugin || return 0
    want=0 _ifs=$IFS
    IFS=,
    for _id in $old; do want=$((want + 1)); done
    IFS=$_ifs
}
ceiling=0
top() { [ "$htime" -le "$ceiling" ] || ceiling=$htime; }
each top
scales='' services='' expected=0
add_scale() {
    wanted
    expected=$((expected + want))
    by_plugin && return 0
    scales="$scales --scale $name=$(( $(commas "$old" | wc -w) + target ))" services="$services $name"
}
each add_scale
up_at=$(date +%s)
each start_rollout
if [ -n "$services" ]; then
    flag_words
    # shellcheck disable=SC2086 # one word per flag
    set -- docker compose $flags
    plain_words
    # shellcheck disable=SC2086 # --scale flags and service names, one word each
    set -- "$@" up --detach --no-deps --no-recreate $scales $services
    if command -v timeout >/dev/null 2>&1; then set -- timeout -k "$kill_after" $((ceiling + margin)) "$@"; fi
    mark up
    if ! out=$(run "$@" 2>&1); then
        undo "failed docker compose up: $(last "$out")"
        exit 1
    fi
    mark up-done
fi
pause_at after-start

# every new container must exist, run and be healthy; one that exits or restarts fails the tier
# at once, one that Docker calls unhealthy once it has been so for $sick_grace s (a container
# starved of CPU while a tier boots may miss a check or three and pass the next); the health
# timeout is only the ceiling
start=$(date +%s) announced='' shown='' logged_new=''
check() {  # of the last poll
    n=0 ok=0
    containers_of --new > "$tmp/states"
    while read -r id status health restarts _; do
        n=$((n + 1))
        if [ "$status" != running ] || [ "$restarts" != 0 ]; then
            failed="$failed $name:$id=$status/$health"
        elif [ "$health" = unhealthy ]; then
            [ -e "$tmp/sick-$id" ] || date +%s > "$tmp/sick-$id"
            if [ $(( $(date +%s) - $(cat "$tmp/sick-$id") )) -ge "$sick_grace" ]; then
                failed="$failed $name:$id=$status/$health"
            fi
        elif [ "$health" = healthy ] || { [ "$health" = none ] && [ "$elapsed" -ge "$nocheck" ]; }; then
            ok=$((ok + 1))
        fi
    done < "$tmp/states"
    all=$((all + n)) good=$((good + ok))
    wanted
    progress="$progress $name: $ok/$want,"
    by_plugin || return 0
    pid=$(get pid) rc=$(get rc)
    if [ -z "$rc" ] && ! kill -0 "$pid" 2>/dev/null; then
        wait "$pid"
        rc=$?
        put rc "$rc"
    fi
    # docker-rollout gave up on its own: its verdict counts
    if [ -n "$rc" ] && [ "$rc" != 0 ]; then failed="$failed $name:docker-rollout-exited-$rc"; fi
}
networks() {  # the networks of container $1, as NET=IP words
    docker inspect --format '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}} {{end}}' "$1" 2>/dev/null
}
announce() {
    for id in $(new_of); do say "new $name $id $(networks "$id")"; done
}
details() {
    for id in $(new_of); do
        say "detail-health $(docker inspect --format '{{.Name}} {{json .State.Health}}' "$id" 2>/dev/null | cut -c1-3000)"
        docker logs --tail 10 "$id" 2>&1 | cut -c1-200 | while IFS= read -r l; do say "detail-log $id $l"; done
    done
    if [ -e "$jobs/rollout-$tag-$name.log" ]; then
        tail -n 5 "$jobs/rollout-$tag-$name.log" | cut -c1-200 | while IFS= read -r l; do say "detail-rollout $name $l"; done
    fi
}
explain_new() {  # explain mode: the wait, and placeholders for the new containers that would be announced
    wanted
    k=$want n=0
    if [ "$k" = 1 ]; then explain wait "healthy: $name (1 container) up to $ceiling s"
    else explain wait "healthy: $name ($k containers) up to $ceiling s"; fi
    nets=$(networks "${old%%,*}")
    [ -n "$old" ] || nets=$(networks "$proxy")
    while [ "$n" -lt "$k" ]; do
        n=$((n + 1))
        line="new $name <new-$name-$n>"
        for net in $nets; do line="$line ${net%%=*}=<ip-of-new-$name-$n>"; done
        say "$line"
    done
}
if [ -n "$explaining" ]; then
    each explain_new
else
    quiet=0
    while :; do
        elapsed=$(( $(date +%s) - start ))
        if [ -n "$events_pid" ] && [ "$quiet" -lt "$poll_every" ] && [ "$elapsed" -lt "$ceiling" ] && ! heard; then
            quiet=$((quiet + 1))
            renew
            nap
            continue
        fi
        quiet=0
        failed='' progress='' all=0 good=0
        poll; polled=1
        listen
        each check
        if [ -n "$failed" ]; then each details; undo "failed not healthy:$failed"; exit 1; fi
        if [ "$all" -ge "$expected" ] && [ -z "$announced" ]; then
            each announce
            announced=1
            [ -n "$pids" ] || watched=$(each new_of)  # docker-rollout may still replace containers
        fi
        if [ -z "$logged_new" ] && [ "$all" -gt 0 ]; then
            journal_event new ids "$(each new_of | tr ' ' ',' | sed 's/,*$//')" ||
                { undo "failed cannot write the journal $zdd/journal/$key.jsonl: new containers removed"; exit 1; }
            logged_new=1
        fi
        if [ "$good" -ge "$expected" ] && [ -n "$announced" ]; then break; fi
        if [ "$elapsed" -ge "$ceiling" ]; then
            each details; undo "failed timeout after ${ceiling}s:${progress%,} healthy"; exit 1
        fi
        if [ "$elapsed" != "$shown" ]; then say "progress${progress%,} healthy, $elapsed s of $ceiling"; shown=$elapsed; fi
        polled=
        renew
        nap
    done
    stop_listening
    watched=
fi
mark ready
stamps() {  # each new container's own times, Docker's, from the last poll: created, started, its
    # first passing healthcheck
    containers_of --new | while read -r id _ _ _ created started passed _; do
        [ -z "$started" ] || say "container $name $id $created $started $passed"
    done
}
if [ -z "$explaining" ]; then polled=1; each stamps; polled=; fi
waited=$(( $(date +%s) - start ))
[ -z "$explaining" ] || waited=0  # nothing was waited for (a second may have ticked all the same)
say "healthy after ${waited}s"

# --- 3. canary steps, then the switch; or back to the old containers and undo ------------------
weighted='' canary_log='' canary_field='' back_addrs='' watching=''
back_out() {  # a canary's share of the traffic back to the old containers; the new ones' in-flight finished
    [ -n "$weighted" ] || return 0
    if ! load back "$(cat "$tmp/back" 2>/dev/null)"; then
        say "failed cannot send the traffic back to the old containers: the new ones are left running (the" \
            "proxy still gives them a share); fab recover once the proxy answers"
        exit 1
    fi
    weighted=''
    # shellcheck disable=SC2086 # addresses, one word each
    drain_wait $back_addrs
    say "note the canary's traffic is back on the old containers; the new ones drained $result"
}
IFS= read -r line || line=abort
while :; do
    case "$line" in
        "journal "*)
            journal_line "${line#journal }" ||
                { back_out; undo "failed cannot write the journal $zdd/journal/$key.jsonl: new containers removed"; exit 1; } ;;
        "canary "*)  # canary LOG FIELD NEW_ADDRS: where the weighted configs log, and what to drain on the way back
            # shellcheck disable=SC2086 # three words
            set -- ${line#canary }
            canary_log=$1 canary_field=$2 back_addrs=$(commas "$3") ;;
        "back "*) printf '%s\n' "${line#back }" > "$tmp/back" ;;  # the config that sends the tier back
        "weigh "*)  # weigh PERCENT JSON: the step's weights
            rest=${line#weigh } && pct=${rest%% *}
            journal_event canary percent "$pct" ||
                { back_out; undo "failed cannot write the journal $zdd/journal/$key.jsonl: new containers removed"; exit 1; }
            weighted=1
            mark "canary-$pct"
            if ! load "canary $pct %" "${rest#* }"; then
                back_out; undo "failed cannot load the canary's weights: new containers removed"; exit 1
            fi
            say "weighted $pct"
            pause_at in-canary ;;
        stats) canary_stats "$canary_log" "$canary_field" ;;
        watch) watching=1 ;;  # from the switch on, hold the old containers for zdd's watch
        *) break ;;
    esac
    IFS= read -r line || line=abort
done
# "switched" goes to the journal, and holds off SIGTERM's undo, BEFORE the proxy loads the switch:
# a signal that arrives during the load must never remove the containers it routes to
case "$line" in
    "switch "* | go)
        journal_event switched ||
            { back_out; undo "failed cannot write the journal $zdd/journal/$key.jsonl: new containers removed"; exit 1; }
        switched=1
        pause_at in-switch
        mark switch
        if [ "$line" != go ] && ! load switch "${line#switch }"; then
            switched=
            back_out
            undo "failed cannot switch the proxy: new containers removed"
            exit 1
        fi
        mark switched
        say "switched" ;;
    *) back_out; undo "failed aborted before the switch: new containers removed"; exit 3 ;;
esac
pause_at after-switch

# --- 4. drain the old addresses at the proxy, then retire the old containers ---------------
addrs=
add_held() { addrs="$addrs $(commas "$held")"; }
each add_held
drain_old() {
    # shellcheck disable=SC2086 # addresses, one word each
    drain_wait $addrs
    mark drained
    say "drained $result"
}
[ -n "$watching" ] || drain_old  # with a watch, after it: the old containers may serve again

# --- 5. the watch: the old containers wait, out of rotation, for zdd's verdict -----------------
remove_returned() { [ -z "$old" ] || remove_new; }  # a service with no old containers keeps its new ones
go_back() {  # go_back [JSON]: the traffic back to the old containers (JSON: this tier loads it); the new removed
    journal_event returned || {
        say "return-failed cannot write the journal $zdd/journal/$key.jsonl: the new containers keep the traffic"
        exit 1
    }
    if [ -n "$1" ] && ! load return "$1"; then
        journal_event switched
        say "return-failed cannot load the config that sends the traffic back: the new containers keep it"
        exit 1
    fi
    say "returning"
    # shellcheck disable=SC2086 # addresses, one word each
    drain_wait $back_addrs
    each remove_returned
    journal_event undone
    say "returned: the new containers drained $result, then were removed"
}
if [ -n "$watching" ]; then
    say "watching"
    while IFS= read -r line; do  # until "retire", or zdd is gone (EOF): the new containers serve
        case "$line" in
            stats) canary_stats "$canary_log" "$canary_field" ;;
            "journal "*) journal_line "${line#journal }" || say "note cannot write the journal $zdd/journal/$key.jsonl" ;;
            "return "*) go_back "${line#return }"; exit 0 ;;
            return) go_back ""; exit 0 ;;
            *) break ;;
        esac
    done
    drain_old
fi

stop_old() {  # the user's hook in each old container of $name ($hook), then stop and remove them
    # shellcheck disable=SC2086 # container ids, one word each
    set -- $ids
    # the user's hook may not hold the stop back for ever: it gets the drain's time at most
    limit=
    command -v timeout >/dev/null 2>&1 && limit="timeout -k 5 $drain_timeout"
    # shellcheck disable=SC2086 # the limit's words
    if [ -n "$hook" ]; then for id in "$@"; do run $limit docker exec "$id" sh -c "$hook"; done; fi
    if [ -n "$stime" ]; then run docker stop --time "$stime" "$@"; else run docker stop "$@"; fi
    run docker rm "$@"
}
retire() {
    ids=$(commas "$old")
    [ -n "$ids" ] || return 0
    if by_plugin; then release_one; return; fi  # docker-rollout stops them
    hook=$(hook)
    if [ -n "$explaining" ]; then stop_old; return; fi
    (
        trap '' HUP INT TERM
        stop_old
    ) </dev/null 9<&- >"$jobs/retire-$tag-$name.log" 2>&1 &
}
# "retired" goes to the journal before the old containers are stopped; without it they are left
# running, out of rotation, for the next run to retire
if journal_event retired; then
    each retire
    mark retired
    say "retired"
else
    say "note cannot write the journal $zdd/journal/$key.jsonl: the old containers are left running, out of" \
        "rotation; the next deploy retires them"
    say "retired"
fi
exit 0
