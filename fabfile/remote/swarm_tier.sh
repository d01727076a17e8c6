# swarm_tier.sh ACTION STACK CEILING STATE HASHES KEY JOURNAL N [SERVICE IMAGE REF SETS]xN [-w SERVICE]... [-r]
#               [-j RUN] [-n NODE] [--login SERVER USER] [-c FILE...]
# (run on the host by zdd in the stack's directory, after lib.sh, as `sh -c 'LIB SCRIPT' swarm_tier.sh ARGS...`;
# stdin: with --login, the line "login TOKEN" first. zdd gives the options in this order; -c FILE...
# (stack) come last)
#
# Engine swarm: starts one change of N services of stack STACK (Swarm service STACK_SERVICE),
# then waits, reading every service's UpdateStatus in one `docker service inspect` twice a
# second, until Swarm has finished each of them. ACTION is
#
#   update    `docker service update --detach --force --image IMAGE` of each SERVICE; REF (the
#             compose file's image reference) becomes the stack's com.docker.stack.image label,
#             so a later `docker stack deploy --resolve-image changed` keeps this digest. SETS
#             (comma-separated, may be empty) are the update settings zdd sets for it: order
#             (--update-order start-first), failure (--update-failure-action rollback),
#             rollback-order (the running spec rolls back stop-first: see below). Every update
#             also sets --rollback-order start-first
#   rollback  `docker service rollback --detach` of each SERVICE (back to Swarm's previous spec);
#             with SETS as-update, an update to IMAGE (what the previous spec ran; REF its
#             label) instead, start-first (see below). The record of what zdd applied (~/STATE)
#             is removed: the next deploy applies the compose files again
#   move      (-n NODE, a node's ID) `docker service update --detach --constraint-add node.id!=NODE`
#             of each SERVICE (SETS order: with --update-order start-first), so that Swarm starts
#             each of its tasks on NODE on another node and stops the old one once the new one
#             runs (tasks on other nodes meet the constraint: Swarm leaves them be). Once every
#             SERVICE has `completed`, NODE is drained (`docker node update --availability drain`:
#             nothing of them is left there to stop first) and the constraint removed from every
#             service of STACK that has it (a change of the spec only: no task moves, NODE being
#             drained), also from one an interrupted move left it on. N may be 0 (only the drain)
#   stack     `docker stack deploy --with-registry-auth --resolve-image changed -c FILE... STACK`,
#             then wait for the SERVICES it creates or changes; once they are done, HASHES (what
#             zdd applied, JSON) is written to ~/STATE. A SERVICE with SETS rollback-order is
#             prepared first (below)
#
# Rollbacks never stop first. Swarm rolls a service back (`docker service rollback`, or the
# rollback it starts itself when an update fails with failure_action rollback) by making the
# previous spec the spec again and replacing the tasks with *that* spec's RollbackConfig
# (swarmkit: controlapi UpdateService swaps Spec and PreviousSpec; the updater then reads
# Spec.Rollback, Swarm's default, stop-first, when it has none). So the settings that count are
# those of the spec the update starts from, not of the new one: setting --rollback-order on the
# update itself only helps the update after it. Hence:
#   * rollback-order: before the change, `docker service update --detach --rollback-order
#     start-first SERVICE`, a change of the settings only (no task is replaced: the task
#     template is the same). It becomes the spec the update or stack deploy starts from, its
#     PreviousSpec, whose tasks are the ones that ran: a rollback returns to them, start-first.
#     Setting it just before `docker service rollback` would be wrong: it is itself an update,
#     so the rollback would return to it, the spec that runs now;
#   * a rollback whose previous spec rolls back stop-first (it came from a docker stack deploy
#     without rollback_config, and zdd did not prepare it) is made as an update to the image
#     that spec ran, with --update-order start-first (zdd only plans it so when that spec's
#     task template differs from the running one in the image only, so nothing else is lost);
#     the label zdd.rolled-back-from=IMAGE-BEFORE tells zdd not to roll it "back" again.
# The commands that pass --with-registry-auth hand Swarm the registry login of the Docker config
# they run with. With --login, that is a temporary config of our own: the first line zdd sends,
# "login TOKEN", is read here and goes to `docker login --password-stdin SERVER` (through a pipe
# from the shell's printf: never in an argument), into a directory removed when we end (also on
# HUP, INT, TERM), so no token stays on the host. Without it (registry.keep_login, or no
# registry), the user's own config (~/.docker) is used.
#
# An update is finished when Swarm says `completed`: after its monitor window. Tiers overlap
# that window (update only):
#   -w SERVICE  an earlier tier's service whose update Swarm still monitors: it is not changed
#               here, but its `paused` or `rollback_*` fails this run too, before anything is
#               started if it is already so; `done SERVICE completed` once Swarm says so
#   -r          the services are done ("done SERVICE replaced") once Swarm has replaced every
#               task: the tasks that ran before the update are no longer desired running (Swarm
#               shut them down, out of service discovery), and in each of their slots a new task
#               is desired and reported running (with a healthcheck, Swarm reports a task running
#               only once it is healthy). The run ends then; the -w services are only watched.
#               Without -r every service, and every -w service, must reach `completed`.
#   -j RUN      (with -r, the last tier of run RUN) the run ends once its own services are
#               replaced, as with -r, and the rest of the wait (Swarm's monitor window of every
#               service not `completed` yet) goes to a job on the host: it takes over the deploy's
#               lock (its pid in the lock: the next deploy waits for it, as for the Compose
#               engine's restore job), waits as without -r, appends Swarm's verdict to the journal
#               (event `settled`: result completed, or failed with the reason) and frees the
#               lock if it still holds it. Its output: ~/.zdd/jobs/swarm-monitor-KEY.log. It has
#               no registry login (the temporary config is removed first) and starts no update of
#               an image (one a drain rolled back is not started again): only the forced update of
#               a slot left running two tasks (Strays, below). Printed: "monitor JOB SERVICE...".
#
# A service whose tasks were replaced (or a -w service) that changes again before Swarm's verdict
# (another update, or a change of settings only, after which Swarm has no UpdateStatus for it) is
# "done SERVICE superseded": there is no verdict left to wait for.
#
# stack: a service Swarm did not start updating is done once all its tasks run (N/N): at once
# when the deploy left its task template as it was, or created it; when the template changed,
# after a grace of 5 s for Swarm to start the update it must then make.
#
# JOURNAL (lines, may be empty: the run's plan) is appended to the project's journal
# (~/.zdd/journal/KEY.jsonl) before the change is made; the deploy's lock (~/.zdd/locks/KEY)
# is renewed while we wait.
#
# We print "started ..." once the change is made, "progress ..." every second, "done SERVICE
# HOW" as each service finishes (a service done "replaced" may say "done SERVICE completed"
# later in the same run), and end with "ok after Ns" (exit 0), or with "detail SERVICE ..."
# lines (its tasks, as Swarm reports them, each naming its node) and "failed SERVICE: REASON"
# (exit 1). An update fails at once when Swarm reports paused or rollback_* for it, or for a -w
# service (a rollback: paused or rollback_paused); it fails after CEILING seconds while a service
# it waits for is not done (with -r: one of its own not replaced yet; without: any, -w ones
# too), with the tasks of each such service, and a task Swarm can place on no node said so
# ("no suitable node (...)", e.g. max_replicas_per_node leaving start-first no room); a -w
# service is "monitored" then (its tasks replaced, Swarm's monitor window not over). Swarm goes
# on with what it started
# either way: nothing here undoes anything, and zdd going away changes nothing.
#
# Nodes. A node that is down (its daemon stopped, unreachable) for node_grace seconds while a
# service waited for holds a task of that service Swarm cannot finish with (its last report was
# not a final state): Swarm waits for the node, so we fail at once, naming the node and those
# tasks, rather than at CEILING. An update Swarm rolled back because a new task was ended early on
# a node that is being drained (or went down) is no verdict on the image: once Swarm's rollback
# has completed, the update is started again, once per service (its tasks then go to the nodes
# that remain). A node that is down at the end of a wait that went well is said ("note node H is
# down ...", with the run's tasks Swarm still lists there).
#
# Strays. Swarm may say `completed` with a task of the old image still desired running beside
# the new ones: a task restarted during a start-first update (its node drained or down) is one
# the updater no longer stops (moby/swarmkit#2242), and it stays in service discovery. An own
# update that completes so is made once more (`service update --force` replaces every task of
# each slot); still so after that, or in the monitor job, the run fails naming those tasks.
# Such a task may be of the new image too: a slot running two tasks once Swarm has completed every
# service of the run (Swarm's reconciler counts slots, not tasks) gets the update made once more
# (`--force` only: the spec, and the registry login Swarm holds, stay), here or in the monitor
# job, once; still so after that, the run fails naming them.
action=$1 stack=$2 ceiling=$3 state=$4 hashes=$5 key=$6 journal=$7 count=$8
shift 8
# each service's fields, one line each ("-" for an empty field; ROLE own, or watch for -w);
# what is learnt of it on the way (the update it had before, how it finished) in files of its own
tmp=$(mktemp -d) || { say "failed cannot make a temporary directory"; exit 1; }
trap 'rm -rf "$tmp"' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
: > "$tmp/services"
i=1
while [ "$i" -le "$count" ]; do
    printf '%s %s %s %s own\n' "$1" "${2:--}" "${3:--}" "${4:--}" >> "$tmp/services"
    shift 4
    i=$((i + 1))
done
until=completed server='' user='' job_run='' in_job='' node=''
while [ $# -gt 0 ]; do
    case $1 in
        -w) printf '%s - - - watch\n' "$2" >> "$tmp/services"; shift 2 ;;
        -r) until=replaced; shift ;;
        -j) job_run=$2; shift 2 ;;
        -n) node=$2; shift 2 ;;
        --login) server=$2 user=$3; shift 3 ;;
        *) break ;;  # stack: -c FILE...
    esac
done
login_cfg=  # the temporary Docker config holding the registry login ("" = the user's own)
if [ -n "$server" ]; then
    IFS= read -r line || line=
    login_cfg=$tmp/docker
    user_cfg=${DOCKER_CONFIG:-$HOME/.docker}
    if ! mkdir -m 700 "$login_cfg"; then say "failed cannot make a temporary Docker config"; exit 1; fi
    [ -d "$user_cfg/cli-plugins" ] && ln -s "$user_cfg/cli-plugins" "$login_cfg/cli-plugins"
    if ! err=$(printf '%s\n' "${line#login }" |
        DOCKER_CONFIG=$login_cfg docker login --username "$user" --password-stdin "$server" 2>&1); then
        say "failed registry $server: docker login: $(last "$err")"
        exit 1
    fi
    line=
fi
authed() {  # authed ARG...: docker ARG... with the registry login --with-registry-auth hands Swarm
    if [ -n "$login_cfg" ]; then DOCKER_CONFIG=$login_cfg docker "$@"; else docker "$@"; fi
}
grace=5  # s; stack: a service Swarm has not started updating by then had no task to replace
node_grace=10  # s a node may be down before the services with a task on it fail

nap_seconds=0.5  # between two reads of the services' UpdateStatus
each() {  # each FUNCTION...: call it once per service, with j, name, image, ref, sets, role, prev, fin, full set
    j=0
    while read -r name image ref sets role <&9; do
        j=$((j + 1))
        [ "$image" != - ] || image=''
        [ "$ref" != - ] || ref=''
        [ "$sets" != - ] || sets=''
        prev=$(cat "$tmp/prev.$j" 2>/dev/null) fin=$(cat "$tmp/fin.$j" 2>/dev/null) full=${stack}_$name
        "$@"
    done 9< "$tmp/services"
}
has() { case ",$sets," in *,"$1",*) return 0 ;; esac; return 1; }  # has SETTING: service $full's SETS name it
all='' own=''
add() { all="$all $full"; [ "$role" = watch ] || own="$own $full"; }
each add

inspect() {  # NAME|STATE|STARTED|MESSAGE of each service that exists, one line each
    [ -n "$all" ] || return 0
    # shellcheck disable=SC2086 # service names, one word each
    docker service inspect --format '{{.Spec.Name}}|{{if .UpdateStatus}}{{.UpdateStatus.State}}|{{.UpdateStatus.StartedAt}}|{{.UpdateStatus.Message}}{{else}}none||{{end}}' $all 2>/dev/null
}
field() {  # field N: the Nth |-separated field of service $full's line in $out
    printf '%s\n' "$out" | awk -F'|' -v n="$full" -v k="$1" '$1 == n { print $k; exit }'
}

# --- what Swarm said before: a state counts only once a new update has started -------------
out=$(inspect)
remember() { field 3 > "$tmp/prev.$j"; }
each remember
tasks() {  # ID|NAME|DESIRED|CURRENT|IMAGE of the services' tasks on every node (NAME: SERVICE.SLOT)
    [ $# -gt 0 ] || return 0
    docker service ps --no-trunc --format '{{.ID}}|{{.Name}}|{{.DesiredState}}|{{.CurrentState}}|{{.Image}}' "$@" \
        2>/dev/null
}
# shellcheck disable=SC2086 # service names, one word each
[ "$until" = replaced ] && tasks $own > "$tmp/old"

# --- how a service stands: check it once a poll ----------------------------------------------
shown='' failed='' culprit='' progress='' pending=0 t0=$(date +%s) now=$(date +%s)
finish() { echo "$1" > "$tmp/fin.$j"; say "done $name $1"; }
bad() { failed="$name: $st${msg:+ ($msg)}" culprit=$full; }
replaced() {  # service $full: no task from before the update is desired running any more, nor
    # one of another image (one Swarm started meanwhile, e.g. for a node that came back), and in each
    # of the old tasks' slots a new task is desired and running (the tasks read last, in $now_tasks)
    { sed 's/^/old|/' "$tmp/old"; printf '%s\n' "$now_tasks" | sed 's/^/now|/'; } |
        awk -F'|' -v n="$full" -v want="${image##*@}" '
        { s = $3; sub(/\.[^.]*$/, "", s); if (s != n) next; d = tolower($4) }
        $1 == "old" { if (d == "running") { old[$2] = 1; if (!($3 in need)) { need[$3] = 1; needed++ } } next }
        $2 in old { if (d == "running") live++; next }
        d == "running" || d == "ready" {
            if (want != "" && index($6, want) == 0) live++
            else if (tolower($5) !~ /^running/) waiting++
            else if (!($3 in up)) { up[$3] = 1; have++ }
        }
        END { exit !(live == 0 && waiting == 0 && have >= needed) }'
}
check() {
    case $fin in '' | replaced) ;; *) return 0 ;; esac
    st=$(field 2) started=$(field 3) msg=$(field 4)
    if [ -z "$st" ] && [ "$action" != stack ]; then failed="$name: the service is gone" culprit=$full; return; fi
    if [ "$fin" = replaced ] || [ "$role" = watch ]; then  # its tasks replaced, Swarm monitoring them
        # a change since (even of settings only: Swarm then clears UpdateStatus) leaves no verdict to wait for
        if [ "$st" = none ] || { [ -e "$tmp/ours.$j" ] && [ "$started" != "$(cat "$tmp/ours.$j")" ]; }; then
            finish superseded
            return
        fi
    fi
    if [ "$role" = watch ]; then  # an earlier tier's update (it had started then): monitored by Swarm
        case $st in
            completed) finish completed; return ;;
            paused | rollback_*) bad; return ;;
        esac
        st=monitored
    elif [ -n "$st" ] && [ "$st" != none ] && [ "$started" != "$prev" ]; then  # an update since we started
        how=$action
        [ "$action" = rollback ] && has as-update && how=update  # a rollback made as an update
        if retry_drained; then still; return; fi
        case "$how:$st" in
            update:completed) if stray_left; then still; else finish "$st"; fi; return ;;
            stack:completed | move:completed | rollback:rollback_completed) finish "$st"; return ;;
            update:paused | update:rollback_* | stack:paused | stack:rollback_* | move:paused | move:rollback_* | \
                rollback:*paused) bad; return ;;
        esac
        if [ -n "$fin" ]; then
            st=monitored
        elif [ "$until" = replaced ] && replaced; then
            printf '%s\n' "$started" > "$tmp/ours.$j"
            finish replaced
            return
        fi
    elif [ "$action" = move ] && [ "$st" = none ] && ! on_the_node; then  # no task there to replace:
        finish completed  # Swarm starts no update (it had moved it meanwhile), so says nothing
        return
    elif [ "$action" = stack ]; then  # created, or no task to replace
        r=$(printf '%s\n' "$replicas" | awk -v n="$full" '$1 == n { print $2; exit }')
        spec=$(printf '%s\n' "$specs" | awk -F'|' -v n="$full" '$1 == n { print $2; exit }')
        if [ -n "$r" ] && [ "${r%%/*}" = "${r#*/}" ]; then  # every task runs
            if [ $((now - t0)) -ge "$grace" ] || { [ "$spec" != changed ] && [ "${r%%/*}" != 0 ]; }; then
                finish "running $r"
                return
            fi
        fi
        st="running ${r:-0/?}"
    else
        st=pending
    fi
    if awaited; then
        pending=$((pending + 1))
        on_down_node && return
    fi
    progress="$progress $name: $st,"
}
still() { awaited && pending=$((pending + 1)); progress="$progress $name: $st,"; }  # check(): started again
awaited() {  # whether the run still waits for service $full, not done: with -r only for what this
    # run changes and Swarm has not replaced yet, without it for every service, -w ones too
    [ "$until" = completed ] || { [ "$role" = own ] && [ -z "$fin" ]; }
}
watched() { [ "$role" != watch ] || check; }
opened() { [ "$role" = watch ] || [ -n "$fin" ] || open="$open $full"; }  # what -r still waits to see replaced
each watched  # an earlier tier Swarm pauses or rolls back: nothing more is started

# --- start the change --------------------------------------------------------------------
prepare_one() {  # the spec the change starts from rolls back start-first (see above)
    [ "$role" = own ] || return 0
    has rollback-order || return 0
    if ! err=$(docker service update --detach --quiet --rollback-order start-first "$full" 2>&1); then
        say "failed $name: docker service update --rollback-order start-first: $(last "$err")"
        exit 1
    fi
}
update_one() {
    [ "$role" = own ] || return 0  # -w: an earlier tier's, only watched
    set -- --image "$image" --rollback-order start-first
    has order && set -- "$@" --update-order start-first
    has failure && set -- "$@" --update-failure-action rollback
    [ -n "$ref" ] && set -- "$@" --label-add "com.docker.stack.image=$ref"
    [ -n "${forced_from-}" ] && set -- "$@" --label-add "zdd.forced-from=$forced_from"
    if err=$(authed service update --detach --quiet --with-registry-auth --force "$@" "$full" 2>&1); then
        say "started $name"
    else
        say "failed $name: docker service update: $(last "$err")"
        exit 1
    fi
}
rollback_one() {
    [ "$role" = own ] || return 0
    if has as-update; then
        before=$(docker service inspect --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "$full" 2>/dev/null)
        set -- --image "$image" --update-order start-first --rollback-order start-first \
            --label-add "zdd.rolled-back-from=$before"
        [ -n "$ref" ] && set -- "$@" --label-add "com.docker.stack.image=$ref"
        if err=$(authed service update --detach --quiet --with-registry-auth "$@" "$full" 2>&1); then
            say "started $name"
        else
            say "failed $name: docker service update (rollback to $image): $(last "$err")"
            exit 1
        fi
        return
    fi
    if err=$(docker service rollback --detach --quiet "$full" 2>&1); then
        say "started $name"
    else
        say "failed $name: docker service rollback: $(last "$err")"
        exit 1
    fi
}
off="node.id!=$node"  # move: the constraint that keeps tasks off NODE
on_the_node() {  # move: service $full has a task desired running on NODE
    bounded docker node ps --no-trunc --filter desired-state=running --format '{{.Name}}' "$node" 2>/dev/null |
        awk -v p="$full." 'index($0, p) == 1 { f = 1 } END { exit !f }'
}
move_one() {
    [ "$role" = own ] || return 0
    set -- --constraint-add "$off"
    has order && set -- "$@" --update-order start-first
    # --with-registry-auth: the other nodes pull the image with the login this run was given
    if [ -n "$login_cfg" ]; then set -- --with-registry-auth "$@"; fi
    if err=$(authed service update --detach --quiet "$@" "$full" 2>&1); then
        say "started $name"
    else
        say "failed $name: docker service update --constraint-add $off: $(last "$err")"
        exit 1
    fi
}
if [ -n "$journal" ] && [ -n "$key" ]; then journal_line "$journal"; fi
case "$action" in
    update)  # an earlier tier Swarm paused or rolled back: nothing is started (the wait fails at once)
        if [ -z "$failed" ]; then
            each prepare_one
            each update_one
        fi ;;
    rollback)
        rm -f "$HOME/$state"
        each rollback_one ;;
    move)
        if [ -z "$node" ]; then say "failed move: no node (-n NODE)"; exit 2; fi
        each move_one ;;
    stack)
        each prepare_one
        if ! err=$(authed stack deploy --with-registry-auth --resolve-image changed "$@" "$stack" 2>&1); then
            printf '%s\n' "$err" | tail -n 5 | while IFS= read -r l; do say "detail $stack $l"; done
            say "failed $stack: docker stack deploy: $(last "$err")"
            exit 1
        fi
        printf '%s\n' "$err" | grep -i '^ignoring' | while IFS= read -r l; do say "note $l"; done
        say "started $stack"
        # each service's task template against the one before: `same` (or `new`) has no task to replace
        # shellcheck disable=SC2086 # service names, one word each
        specs=$(docker service inspect --format '{{.Spec.Name}}|{{if .PreviousSpec}}{{if and (eq (json .Spec.TaskTemplate) (json .PreviousSpec.TaskTemplate)) (eq (json .Spec.EndpointSpec) (json .PreviousSpec.EndpointSpec))}}same{{else}}changed{{end}}{{else}}new{{end}}' $all 2>/dev/null) ;;
    *) say "failed $action: unknown action"; exit 2 ;;
esac

# --- wait until Swarm has finished each service ---------------------------------------------
tasks_of() {  # tasks_of SERVICE: its latest tasks as Swarm reports them, each with its node
    bounded docker service ps --no-trunc \
        --format '{{.Name}} on {{if .Node}}{{.Node}}{{else}}no node{{end}}: {{.Image}} {{.CurrentState}} {{.Error}}' \
        "$1" 2>&1 | head -n 6 | cut -c1-300
}
details() {  # details SERVICE [TASKS]: "detail" lines of its tasks
    printf '%s\n' "${2-$(tasks_of "$1")}" | while IFS= read -r l; do say "detail ${1#"${stack}_"} $l"; done
}
nodes_checked=0 down=''
nodes_down() {  # every 2 s: the nodes not ready, as "HOSTNAME:SINCE" (when we first saw it so)
    [ $((now - nodes_checked)) -ge 2 ] || return 0
    nodes_checked=$now
    was=$down down=''
    for h in $(bounded docker node ls --format '{{.Hostname}}|{{.Status}}' 2>/dev/null |
        awk -F'|' 'tolower($2) != "ready" { print $1 }'); do
        # shellcheck disable=SC2086 # one word per node
        since=$(printf '%s\n' $was | awk -F: -v h="$h" '$1 == h { print $2; exit }')
        down="$down $h:${since:-$now}"
    done
}
held_read='' held_tasks=''  # this poll's tasks of the run's services, read once (read_held)
read_held() {  # all the run's services' tasks, each NAME|NODE|STATE (called from `each check`: a nested
    # `each` here would overwrite the service variables of the loop it is in, so all are read)
    # shellcheck disable=SC2086 # service names, one word each
    held_tasks=$(bounded docker service ps --no-trunc --format '{{.Name}}|{{.Node}}|{{.CurrentState}}' \
        $all 2>/dev/null)
    held_read=1
}
held_on() {  # held_on NODE [SERVICE]: of the tasks read_held read, those (of SERVICE only) on NODE in no
    # final state, "NAME (STATE), ..."
    printf '%s\n' "$held_tasks" | awk -F'|' -v h="$1" -v n="${2-}" '
        { s = $1; sub(/\.[^.]*$/, "", s) }
        (n == "" || s == n) && $2 == h && $3 !~ /^(Shutdown|Failed|Rejected|Complete|Orphaned|Remove)/ {
            printf "%s%s (%s)", sep, $1, $3; sep = ", " }'
}
on_down_node() {  # service $full: its tasks on a node down for node_grace s, not in a final state
    for hs in $down; do
        [ $((now - ${hs##*:})) -ge "$node_grace" ] || continue
        [ -n "$held_read" ] || read_held  # once a poll
        h=${hs%:*}
        held=$(held_on "$h" "$full")
        if [ -n "$held" ]; then
            failed="$name: node $h is down, holding $held; Swarm finishes the update once the node is back or its tasks move: deploy again then"
            culprit=$full
            return 0
        fi
    done
    return 1
}
drained() {  # service $full's update was rolled back over a task a drain (or a node going down) ended
    task=$(printf '%s\n' "$msg" | sed -n 's/.*early termination of task \([0-9a-z]*\).*/\1/p')
    [ -n "$task" ] || return 1
    tnode=$(docker inspect --type task --format '{{.NodeID}}' "$task" 2>/dev/null) && [ -n "$tnode" ] || return 1
    case $(docker node inspect --format '{{.Spec.Availability}}|{{.Status.State}}' "$tnode" 2>/dev/null) in
        drain\|* | *\|down) return 0 ;;
    esac
    return 1
}
retry_drained() {  # check(): an own update Swarm rolled back because of a drain: start it again, once
    # (not in the monitor job: it has no registry login any more, and its run has ended)
    [ "$action" = update ] && [ "$role" = own ] && [ ! -e "$tmp/retried.$j" ] && [ -z "$in_job" ] || return 1
    case $st in rollback_started | rollback_completed) ;; *) return 1 ;; esac
    [ -e "$tmp/draining.$j" ] || { drained || return 1; : > "$tmp/draining.$j"; say "note $name: Swarm rolls the update back, a task of it ended by a drain; it starts again after"; }
    if [ "$st" = rollback_started ]; then st="rolled back (drain), starting again after"; return 0; fi
    : > "$tmp/retried.$j"
    start_again
    st="starting again"
    return 0
}
start_again() {  # service $full's update once more; the update that counts is the next one
    printf '%s\n' "$started" > "$tmp/prev.$j"
    if [ "$until" = replaced ]; then  # the tasks from before it are those that run now
        grep -v "|${full}\.[^|]*|" "$tmp/old" > "$tmp/old.new" || true
        tasks "$full" >> "$tmp/old.new"
        mv "$tmp/old.new" "$tmp/old"
    fi
    before_force "$image"  # the same image once more (a stray left)
    update_one
    forced_from=
}
before_force() {  # before_force [IMAGE]: $forced_from, the image of service $full's PreviousSpec when
    # its spec runs IMAGE (whatever it runs, without): an update of the spec it runs makes Swarm's
    # PreviousSpec this very spec, so the image before goes into the label zdd.forced-from, for a
    # rollback (swarm_rollback.before_force)
    specs_now=$(docker service inspect \
        --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}|{{with .PreviousSpec}}{{.TaskTemplate.ContainerSpec.Image}}{{end}}' \
        "$full" 2>/dev/null)
    forced_from=
    [ -n "${1-}" ] && [ "${specs_now%%|*}" != "$1" ] || forced_from=${specs_now#*|}
}
strays() {  # service $full, its update completed: its tasks still desired running of another image
    [ "$action" = update ] && [ "$role" = own ] && [ -n "${image##*@}" ] || return 0
    if [ "$until" = replaced ]; then printf '%s\n' "$now_tasks"; else tasks "$full"; fi |  # -r: this poll's
        awk -F'|' -v n="$full" -v want="${image##*@}" '
        { s = $2; sub(/\.[^.]*$/, "", s) }
        s == n && tolower($3) == "running" && index($5, want) == 0 { printf "%s%s (%s)", sep, $2, $4; sep = ", " }'
}
stray_left() {  # check(): Swarm says completed, yet a task of another image runs beside the new ones (a
    # task restarted during a start-first update is one Swarm's updater no longer stops: moby/swarmkit#2242).
    # Once per service the update is made again (it replaces every task of each slot); then, or in the
    # monitor job (it starts no update of an image), the run fails naming the tasks
    left=$(strays)
    [ -n "$left" ] || return 1
    if [ -z "$in_job" ] && [ -z "$fin" ] && [ ! -e "$tmp/restray.$j" ]; then
        : > "$tmp/restray.$j"
        say "note $name: Swarm completed its update but still runs $left beside the new tasks: updating it once more"
        start_again
        st="updating once more (a task of another image was left)"
        return 0
    fi
    failed="$name: Swarm completed its update but still runs $left beside the new tasks: \`docker service update --force $full\` replaces them"
    culprit=$full
    return 0
}
unplaced=
stalled() {  # at the ceiling: the tasks of a service still waited for, and whether a new one waits for a node
    case $fin in '' | replaced) ;; *) return 0 ;; esac
    awaited || return 0
    listed=$(tasks_of "$full")
    details "$full" "$listed"
    why=$(printf '%s\n' "$listed" | grep -o 'no suitable node.*' | head -n 1)
    [ -z "$why" ] || unplaced="$unplaced $name: a task waits for a node: $why;"
}
sup() { [ "$fin" != superseded ] || superseded="$superseded $name"; }
hand_over() {  # -j: the rest of the wait (Swarm's monitor window) to a job on the host, holding the lock
    [ -z "$login_cfg" ] || rm -rf "$login_cfg"  # no registry token for the job: it changes nothing
    login_cfg='' in_job=1 until=completed t0=$(date +%s) shown=''
    mkdir -p "$zdd/jobs" 2>/dev/null
    (
        trap '' HUP INT
        trap 'rm -rf "$tmp"' EXIT
        # shellcheck disable=SC2016 # $PPID of the inner sh: this subshell's pid
        job=$(sh -c 'echo $PPID')
        run_id=$job_run
        say "monitor job $job since $(date '+%Y-%m-%d %H:%M:%S %Z'): Swarm monitors$monitored"
        if wait_all && sweep; then
            superseded=''
            each sup
            journal_event settled result completed services "${monitored# }" seconds "$(( $(date +%s) - t0 ))" \
                superseded "${superseded# }"
        else
            why=$(printf '%s' "$failed" | tr '\n\t' '  ' | tr -cd '[:alnum:] .,:;()/_=+@-' | cut -c1-300)
            journal_event settled result failed services "${monitored# }" error "$why"
        fi
        # the lock is the job's until it ends (a deploy waits for it); released only if still its own
        lock_free_of_job "$job"
    ) </dev/null >"$zdd/jobs/swarm-monitor-$key.log" 2>&1 &
    job=$!
    trap - EXIT  # $tmp is the job's now
    # the next deploy waits for it as long as it may wait (its ceiling), not only lock.sh's usual while
    if lock_to_job "$job" "swarm monitor" "waits for Swarm's verdict on$monitored (run $job_run)" \
        "$((t0 + ceiling + 30))"; then
        say "monitor $job$monitored"
    else
        say "note no deploy lock to hand to the monitor job $job: the next deploy does not wait for it"
    fi
}
wait_all() {  # until nothing is awaited: 0; 1 after "detail" lines and "failed ..." (it ceases at the ceiling)
    while :; do
        now=$(date +%s)
        out=$(inspect)
        [ "$action" = stack ] && replicas=$(docker service ls --filter "label=com.docker.stack.namespace=$stack" \
            --format '{{.Name}} {{.Replicas}}' 2>/dev/null)
        if [ "$until" = replaced ]; then
            open=''
            each opened
            # shellcheck disable=SC2086 # service names, one word each
            now_tasks=$(tasks $open)
        fi
        progress='' pending=0 held_read=''
        nodes_down
        each check
        if [ -n "$failed" ]; then details "$culprit"; say "failed $failed"; return 1; fi
        [ "$pending" -eq 0 ] && return 0
        if [ $((now - t0)) -ge "$ceiling" ]; then
            each stalled
            failed="timeout after ${ceiling}s:${progress%,}${unplaced:+;${unplaced%;}} (Swarm goes on with it)"
            say "failed $failed"
            return 1
        fi
        if [ $((now - t0)) != "$shown" ]; then say "progress${progress%,}, $((now - t0)) s of $ceiling"; shown=$((now - t0)); fi
        renew
        nap
    done
}
down_note() {  # after a wait that ended well: each node down, and the run's tasks Swarm still lists on it
    [ -z "$down" ] || read_held  # after the last poll
    for hs in $down; do
        h=${hs%:*}
        left=$(held_on "$h")
        say "note node $h is down (for $((now - ${hs##*:}))s): Swarm runs this tier's tasks on the other nodes${left:+; it still lists $left there until the node is back}"
    done
}
drain_node() {  # move, once every task is elsewhere: drain NODE, then the constraint off every service
    if ! err=$(docker node update --availability drain "$node" 2>&1); then
        say "failed node $node: docker node update --availability drain: $(last "$err")"
        exit 1
    fi
    say "drained $node"
    # shellcheck disable=SC2016 # a Go template
    for svc in $(docker service ls --quiet --filter "label=com.docker.stack.namespace=$stack" 2>/dev/null |
        xargs -r docker service inspect --format '{{.Spec.Name}}{{with .Spec.TaskTemplate.Placement}}{{range .Constraints}} {{.}}{{end}}{{end}}' 2>/dev/null |
        awk -v c="$off" '{ for (i = 2; i <= NF; i++) if ($i == c) { print $1; next } }'); do
        if err=$(docker service update --detach --quiet --constraint-rm "$off" "$svc" 2>&1); then
            say "unpinned ${svc#"${stack}_"}"
        else
            say "note ${svc#"${stack}_"}: docker service update --constraint-rm $off: $(last "$err") (it stays off the node)"
        fi
    done
}
doubled() {  # service $full: each task desired and running beside another of its slot, once Swarm
    # is done (a task restarted during a start-first update, moby/swarmkit#2242, of the new image
    # too); $swept: the tasks of all the services, read once a poll
    printf '%s\n' "$swept" | awk -F'|' -v n="$full" '
        { s = $2; sub(/\.[^.]*$/, "", s) }
        s == n && tolower($3) == "running" && tolower($4) ~ /^running/ && seen[$2]++ {
            printf "%s%s (%s)", sep, $2, $4; sep = ", " }'
}
reforce() {  # a service Swarm completed with a slot running two tasks: the update once more (--force
    # replaces every task of each slot, start-first as the spec says; Swarm keeps the login it holds)
    [ "$fin" = completed ] && [ -z "$failed" ] || return 0
    left=$(doubled)
    [ -n "$left" ] || return 0
    before_force
    set -- --detach --quiet --force
    [ -z "$forced_from" ] || set -- "$@" --label-add "zdd.forced-from=$forced_from"
    forced_from=
    if err=$(docker service update "$@" "$full" 2>&1); then
        say "note $name: Swarm completed, yet runs $left beside the task of its slot: updating it once more"
        field 3 > "$tmp/again.$j"
        again=$((again + 1))
    else
        failed="$name: Swarm runs $left beside the task of its slot; docker service update --force: $(last "$err")"
    fi
}
resettled() {  # a service updated once more: still waited for (waiting), or done, or failed
    [ -e "$tmp/again.$j" ] || return 0
    st=$(field 2) started=$(field 3)
    case $st in
        completed) [ "$started" != "$(cat "$tmp/again.$j")" ] || { waiting=$((waiting + 1)); return; } ;;
        paused | rollback_*) failed="$name: $st (the update made once more)"; return ;;
        *) waiting=$((waiting + 1)); return ;;
    esac
    left=$(doubled)
    [ -z "$left" ] || failed="$name: Swarm still runs $left beside the task of its slot: \`docker service update --force $full\` replaces it"
    rm -f "$tmp/again.$j"
}
starting() {  # the tasks in $swept Swarm still starts (desired running, not running yet)
    printf '%s\n' "$swept" | awk -F'|' 'tolower($3) == "running" &&
        tolower($4) ~ /^(new|pending|assigned|accepted|preparing|ready|starting)/ { n++ } END { print n + 0 }'
}
sweep() {  # after a wait that ended well: 0 once no service of the run keeps two tasks in a slot
    failed='' again=0  # $out: the last poll of wait_all
    # shellcheck disable=SC2086 # service names, one word each
    swept=$(tasks $all)
    # a task Swarm still starts (a drained node's, restarted) is judged once it runs: up to 30 s
    settle_by=$(( $(date +%s) + 30 ))
    [ $((t0 + ceiling)) -ge "$settle_by" ] || settle_by=$((t0 + ceiling))
    unstarted=$(starting)
    [ "$unstarted" = 0 ] || say "progress $unstarted task(s) still starting, judged once they run"
    while [ "$unstarted" -gt 0 ] && [ "$(date +%s)" -lt "$settle_by" ]; do
        nap
        renew
        # shellcheck disable=SC2086 # service names, one word each
        swept=$(tasks $all) unstarted=$(starting)
    done
    each reforce
    while [ -z "$failed" ] && [ "$again" -gt 0 ]; do  # within the run's ceiling, as its wait
        nap
        renew
        # shellcheck disable=SC2086 # service names, one word each
        out=$(inspect) swept=$(tasks $all) waiting=0
        each resettled
        [ "$waiting" -gt 0 ] || break
        now=$(date +%s)
        [ $((now - t0)) -lt "$ceiling" ] || failed="timeout after ${ceiling}s: the update made once more"
        if [ $((now - t0)) != "$shown" ]; then say "progress updating once more, $((now - t0)) s of $ceiling"; shown=$((now - t0)); fi
    done
    [ -z "$failed" ] && return 0
    say "failed $failed"
    return 1
}
wait_all || exit 1
down_note
[ "$action" = move ] && drain_node
monitored=''
unfinished() { [ "$fin" = completed ] || monitored="$monitored $name"; }
each unfinished
if [ -n "${monitored# }" ]; then
    [ -z "$job_run" ] || hand_over
else
    sweep || exit 1
fi
if [ "$action" = stack ] && [ -n "$hashes" ]; then
    mkdir -p "$(dirname "$HOME/$state")" && printf '%s\n' "$hashes" > "$HOME/$state"
fi
say "ok after $(( $(date +%s) - t0 ))s"
exit 0
