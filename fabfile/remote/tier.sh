# tier.sh ENGINE PROXY ADMIN DRAIN_TIMEOUT NOCHECK_WAIT STREAM_GRACE KEY RUN N [SERVICE TARGET HEALTH_TIMEOUT
#         STOP_TIMEOUT OLD_IDS HELD_ADDRS HOOK]xN COMPOSE_FLAGS...
# (run on the host by zdd in the project directory, as `sh -c SCRIPT tier.sh ARGS...`)
#
# Replaces the containers of one tier of app services, all at once, talking with zdd over
# stdin/stdout (one SSH round trip for the whole tier):
#
#   zdd sends "journal LINE"...      lines for the project's journal (the plan), then
#             "pin JSON" | "nopin"   load the proxy config that pins every service about to
#                                    roll to its old containers (the first tier), or not
#   we start the new containers: ENGINE native scales each service to OLD+TARGET with
#   `compose up --no-recreate`; ENGINE docker-rollout starts one detached `docker rollout`
#   per service whose pre-stop hook holds the old containers until we release them
#   we print  "pid PID" (SIGTERM to it undoes the tier before the switch), then
#             "new SERVICE ID NET=IP...", "progress ...", then "healthy after Ns", or
#             "failed REASON" after "detail-* ..." lines (new containers removed, exit 1)
#   zdd sends "switch JSON"          route the tier to its new containers only
#             "go"                   no proxy routing: go on
#             "abort" (or EOF)       remove the new containers (exit 3)
#   we print  "switched", wait until the old addresses have nothing in flight at the proxy
#             ("drained ..."), then retire the old containers in the background ("retired")
#
# OLD_IDS and HELD_ADDRS are comma-separated; STOP_TIMEOUT and HOOK may be empty. Before the
# switch, SIGTERM or a dropped connection undoes the tier; after it, the old containers get
# no traffic and we finish on our own, whether zdd is still there or not.
trap '' PIPE HUP
engine=$1 proxy=$2 admin=$3 drain_timeout=$4 nocheck=$5 stream_grace=$6 key=$7 run=$8 count=$9
shift 9
i=1
while [ "$i" -le "$count" ]; do
    for k in name target htime stime old held hook; do eval "${k}_$i=\$1"; shift; done
    i=$((i + 1))
done
flags=  # the compose project flags, quoted for eval
for a in "$@"; do flags="$flags '$(printf '%s' "$a" | sed "s/'/'\\\\''/g")'"; done
dc() { eval "docker compose $flags \"\$@\""; }
jobs=$HOME/.zdd/jobs
mkdir -p "$jobs"
tag=$(date +%s)-$$
hold=zdd-release-$tag
switched= pids=

say() { printf '%s\n' "$*" 2>/dev/null || true; }
# the project's journal (KEY from survey.sh): what this tier did, written before it is done,
# so that the next run can finish or undo it whatever happens to zdd or to this script
log_event() {  # log_event EVENT [KEY VALUE]... (and renew the lock)
    renew
    ev="{\"run\": \"$run\", \"t\": $(date +%s), \"event\": \"$1\", \"pid\": $$"; shift
    while [ $# -ge 2 ]; do ev="$ev, \"$1\": \"$2\""; shift 2; done
    append "$ev}"
}
append() {  # one journal line in one write (O_APPEND): concurrent writers cannot interleave it
    mkdir -p "$HOME/.zdd/journal" && t=$(mktemp) && printf '%s\n' "$1" > "$t" &&
        cat "$t" >> "$HOME/.zdd/journal/$key.jsonl"
    rm -f "$t"
}
spec() { for k in name target htime stime old held hook; do eval "$k=\$${k}_$1"; done; }
each() { j=1; while [ "$j" -le "$count" ]; do spec "$j"; "$@"; j=$((j + 1)); done; }
commas() { printf '%s' "$1" | tr ',' ' '; }
renew() {  # the deploy's lock is renewed while this works (a holder silent for long is gone)
    [ -d "$HOME/.zdd/locks/$key" ] && touch "$HOME/.zdd/locks/$key/renewed" 2>/dev/null
    return 0
}
nap() { renew; sleep 0.2 2>/dev/null || sleep 1; }
last() { printf '%s' "$1" | tail -n 1 | cut -c1-300; }

new_of() {  # the containers of service $name that are not old ones
    for id in $(dc ps --all --quiet "$name" 2>/dev/null); do
        id=$(printf '%s' "$id" | cut -c1-12)
        case ",$old," in *",$id,"*) ;; *) printf '%s ' "$id" ;; esac
    done
}

load() {  # a JSON config on stdin of caddy in the proxy container: a graceful reload
    out=$(printf '%s\n' "$1" | docker exec -i "$proxy" caddy reload --config /dev/stdin --force 2>&1) && return 0
    say "load-error $(last "$out")"
    return 1
}

release_one() { [ "$(how)" = rollout ] || return 0; for id in $(commas "$old"); do docker exec "$id" sh -c "true 2>/dev/null > /dev/shm/$hold || true > /tmp/$hold" >/dev/null 2>&1; done; }
remove_new() { ids=$(new_of); [ -n "$ids" ] && docker rm --force $ids >/dev/null 2>&1; }

undo() {  # before the switch the new containers never had traffic: remove them
    for pid in $pids; do kill -TERM -"$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null; done
    if [ -n "$pids" ]; then  # docker-rollout and its children; they must not roll on their own
        sleep 1
        for pid in $pids; do kill -KILL -"$pid" 2>/dev/null; done
    fi
    each remove_new
    each release_one
    log_event undone
    say "$1"
}
on_signal() { [ -n "$switched" ] && return; undo "failed interrupted: new containers removed"; exit 3; }
trap on_signal TERM INT
say "pid $$"
all_old= all_names=
j=1; while [ "$j" -le "$count" ]; do eval "all_old=\"\$all_old\${all_old:+,}\$old_$j\" all_names=\"\$all_names\${all_names:+,}\$name_$j\""; j=$((j + 1)); done
log_event tier services "$all_names" old "$all_old"

# --- 1. pin ------------------------------------------------------------------------------
while IFS= read -r line && [ "${line#journal }" != "$line" ]; do  # zdd's lines for the journal first
    append "${line#journal }"
done
case "$line" in
    "pin "*) load "${line#pin }" || { say "failed cannot pin the proxy to the old containers"; exit 1; } ;;
    nopin) ;;
    *) say "failed no pin line from zdd"; exit 1 ;;
esac
say "pinned"

# --- 2. start the new containers ---------------------------------------------------------
remove_stale() {  # compose would restart stopped containers instead of creating new ones
    ids=$(dc ps --quiet --status exited --status created --status dead "$name" 2>/dev/null)
    [ -n "$ids" ] && docker rm --force $ids >/dev/null 2>&1
}
each remove_stale

choose() {  # docker-rollout replaces running services whose containers can hold its hook
    mode=scale
    if [ "$engine" = docker-rollout ] && [ -n "$old" ]; then
        # a real write: `test -w` says yes to root on a read-only filesystem
        if docker exec "${old%%,*}" sh -c 'for d in /dev/shm /tmp; do true 2>/dev/null > "$d/.zdd-probe" &&
                rm -f "$d/.zdd-probe" && exit 0; done; exit 1' >/dev/null 2>&1; then
            mode=rollout
        else
            say "note $name: docker-rollout's pre-stop hook cannot be held in its containers (no sh, or neither" \
                "/dev/shm nor /tmp writable): its new containers are started with compose --scale instead"
        fi
    fi
    eval "how_$j=$mode"
}
how() { eval "echo \"\${how_$j:-scale}\""; }
each choose
start_rollout() {
    [ "$(how)" = rollout ] || return 0
    h="n=0; while [ ! -e /dev/shm/$hold ] && [ ! -e /tmp/$hold ] && [ \$n -lt $(( (htime + drain_timeout + 60) * 5 )) ]; do sleep 0.2 2>/dev/null || sleep 1; n=\$((n+1)); done"
    [ -n "$hook" ] && h="$h; $hook"
    log=$jobs/rollout-$tag-$name.log
    if command -v setsid >/dev/null 2>&1; then detach=setsid; else detach=; fi
    # `&` inside the eval: $! is then docker rollout itself, leader of its own session
    eval "$detach docker rollout $flags --timeout \"\$htime\" --wait \"\$nocheck\" --pre-stop-hook \"\$h\" \
        \"\$name\" </dev/null >\"\$log\" 2>&1 &"
    pids="$pids $!"
    eval "pid_$j=\$!"
}
wanted() {  # how many new containers service $name gets
    if [ "$(how)" = rollout ]; then commas "$old" | wc -w; else echo "$target"; fi
}
ceiling=0
top() { [ "$htime" -gt "$ceiling" ] && ceiling=$htime; }
each top
scales= services= expected=0
add_scale() {
    expected=$((expected + $(wanted)))
    [ "$(how)" = scale ] || return 0
    scales="$scales --scale $name=$(( $(commas "$old" | wc -w) + target ))" services="$services $name"
}
each add_scale
each start_rollout
if [ -n "$services" ]; then
    limit=; command -v timeout >/dev/null 2>&1 && limit="timeout -k 10 $((ceiling + 60))"
    if ! out=$(eval "$limit docker compose $flags up --detach --no-deps --no-recreate $scales $services" 2>&1); then
        undo "failed docker compose up: $(last "$out")"
        exit 1
    fi
fi

# every new container must exist, run and be healthy; one that is unhealthy, exits or
# restarts fails the tier at once (the health timeout is only the ceiling)
start=$(date +%s) announced= shown= logged_new=
check() {
    ids=$(new_of) n=0 ok=0
    for id in $ids; do
        n=$((n + 1))
        st=$(docker inspect --format '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.RestartCount}}' "$id" 2>/dev/null) || st="gone - 0"
        status=${st%% *} rest=${st#* }
        health=${rest%% *} restarts=${rest#* }
        if [ "$status" != running ] || [ "$restarts" != 0 ] || [ "$health" = unhealthy ]; then
            failed="$failed $name:$id=$status/$health"
        elif [ "$health" = healthy ] || { [ "$health" = none ] && [ "$elapsed" -ge "$nocheck" ]; }; then
            ok=$((ok + 1))
        fi
    done
    all=$((all + n)) good=$((good + ok))
    progress="$progress $name: $ok/$(wanted),"
    [ "$(how)" = rollout ] || return 0
    eval "pid=\$pid_$j rc=\${rc_$j:-}"
    if [ -z "$rc" ] && ! kill -0 "$pid" 2>/dev/null; then
        wait "$pid"; rc=$?
        eval "rc_$j=$rc"
    fi
    # docker-rollout gave up on its own: its verdict counts
    if [ -n "$rc" ] && [ "$rc" != 0 ]; then failed="$failed $name:docker-rollout-exited-$rc"; fi
}
announce() {
    for id in $(new_of); do
        nets=$(docker inspect --format '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}} {{end}}' "$id" 2>/dev/null)
        say "new $name $id $nets"
    done
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
while :; do
    elapsed=$(( $(date +%s) - start ))
    failed= progress= all=0 good=0
    each check
    if [ -n "$failed" ]; then each details; undo "failed not healthy:$failed"; exit 1; fi
    if [ "$all" -ge "$expected" ] && [ -z "$announced" ]; then each announce; announced=1; fi
    [ -z "$logged_new" ] && [ "$all" -gt 0 ] && { log_event new ids "$(each new_of | tr ' ' ',' | sed 's/,*$//')"; logged_new=1; }
    if [ "$good" -ge "$expected" ] && [ -n "$announced" ]; then break; fi
    if [ "$elapsed" -ge "$ceiling" ]; then
        each details; undo "failed timeout after ${ceiling}s:${progress%,} healthy"; exit 1
    fi
    if [ "$elapsed" != "$shown" ]; then say "progress${progress%,} healthy, $elapsed s of $ceiling"; shown=$elapsed; fi
    nap
done
say "healthy after $(( $(date +%s) - start ))s"

# --- 3. switch, or undo ------------------------------------------------------------------
IFS= read -r line || line=abort
case "$line" in
    "switch "*)
        if ! load "${line#switch }"; then undo "failed cannot switch the proxy: new containers removed"; exit 1; fi
        switched=1; log_event switched
        say "switched" ;;
    go) switched=1; log_event switched; say "switched" ;;  # no proxy routing for these services
    *) undo "failed aborted before the switch: new containers removed"; exit 3 ;;
esac

# --- 4. drain the old addresses at the proxy, then retire the old containers ---------------
held=
j=1; while [ "$j" -le "$count" ]; do eval "held=\"\$held \$(commas \"\$held_$j\")\""; j=$((j + 1)); done
# An open websocket (or SSE, long poll) is a request in flight for Caddy's counters until it
# ends: once the count of in-flight requests on the old addresses has stopped falling for
# STREAM_GRACE seconds, what is left is taken for long-lived streams, which end when the old
# containers stop (their clients reconnect, to the new containers).
t0=$(date +%s) peak=0 result= shown= last=-1 falling=$t0
[ -n "$(printf '%s' "$held" | tr -d ' ')" ] || result="nothing to drain at the proxy"
while [ -z "$result" ]; do
    now=$(date +%s)
    if ! out=$(docker exec "$proxy" wget -q -O - "http://$admin/reverse_proxy/upstreams" 2>&1); then
        result=unobservable; break
    fi
    busy= total=0
    for addr in $held; do
        entry=$(printf '%s\n' "$out" | tr '{}' '\n\n' | grep -F "\"$addr\"" | head -n 1)
        k=$(printf '%s\n' "$entry" | sed -n 's/.*"num_requests": *\([0-9][0-9]*\).*/\1/p')
        if [ -z "$k" ]; then result=unobservable; break 2; fi
        if [ "$k" != 0 ]; then busy="$busy $addr=$k"; total=$((total + k)); fi
    done
    [ "$total" -gt "$peak" ] && peak=$total
    if [ "$last" = -1 ] || [ "$total" -lt "$last" ]; then falling=$now; fi
    last=$total
    if [ $((now - t0)) != "$shown" ]; then say "progress draining:$busy, $((now - t0)) s of $drain_timeout"; shown=$((now - t0)); fi
    if [ -z "$busy" ]; then result="after $((now - t0))s, $peak in flight at most"; break; fi
    if [ $((now - falling)) -ge "$stream_grace" ]; then
        result="after $((now - t0))s, $peak in flight at most; $total long-lived left to the stop:$busy"; break
    fi
    if [ $((now - t0)) -ge "$drain_timeout" ]; then result="timeout after ${drain_timeout}s, still in flight:$busy"; break; fi
    nap
done
if [ "$result" = unobservable ]; then
    grace=10; [ "$drain_timeout" -lt 10 ] && grace=$drain_timeout
    sleep "$grace"
    result="unobservable: waited ${grace}s"
fi
say "drained $result"

retire() {
    ids=$(commas "$old")
    [ -n "$ids" ] || return 0
    if [ "$(how)" = rollout ]; then release_one; return; fi  # docker-rollout stops them
    (
        trap '' HUP INT TERM
        if [ -n "$hook" ]; then for id in $ids; do docker exec "$id" sh -c "$hook"; done; fi
        if [ -n "$stime" ]; then docker stop --time "$stime" $ids; else docker stop $ids; fi
        docker rm $ids
    ) </dev/null >"$jobs/retire-$tag-$name.log" 2>&1 &
}
each retire
log_event retired
say "retired"
exit 0
