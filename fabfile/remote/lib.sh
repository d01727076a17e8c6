# shellcheck shell=sh disable=SC2317 # a library: no script calls every function of it
# lib.sh: the preamble of every host program. zdd sends it in front of the script's own text
# (commands.host_program: `sh -c 'LIB.SH SCRIPT' NAME ARGS...`), so nothing is installed on the
# host and each script still runs as one `sh -c`. A script sets `key` (the project's lock and
# journal name, from survey.sh) before it writes the journal or renews the lock.
#
# Explain mode (ZDD_EXPLAIN=1 in the environment; `deploy --dry-run` runs the scripts so): a
# script reads the host as usual (docker ps, inspect...) but changes nothing. On its stdout it
# prints, one a line, what it would do to the host:
#   run WORDS...   a command it would run, its words shell-quoted (`run` below)
#   wait WHAT      what it would wait for, and for how long at most
#   load WHAT      a proxy config it would load (the config is zdd's: it is not printed)
# and, mixed with these, the lines a successful run prints, with placeholders where only a real
# run knows the value (new containers: <new-SERVICE-N>, <ip-of-new-SERVICE-N>).
# In a real run `run` records each command it executes in ~/.zdd/ran.log ("T KEY NAME PID ran
# WORDS..."), in the same words: a test can check that a dry run printed what a run then did.

zdd=$HOME/.zdd
key=${key-} run_id=${run_id-}
explaining=${ZDD_EXPLAIN:+1}
nap_seconds=0.2  # between two polls of a wait loop (a script may set its own)
zdd_ifs=$IFS
zdd_nl='
'
# in explain mode fd 3 is the script's stdout: what `run` prints reaches zdd from inside $(...)
# and past a `>/dev/null` (nothing runs in the background in explain mode to inherit it)
if [ -n "$explaining" ]; then exec 3>&1; fi

read_wait=30  # a docker read (inspect, ps, exec of a probe) that has not answered by then is given up
say() { printf '%s\n' "$*" 2>/dev/null || true; }
bounded() {  # bounded COMMAND...: a read that may not hang: killed after read_wait (where `timeout` exists)
    if command -v timeout >/dev/null 2>&1; then timeout -k 5 "$read_wait" "$@"; else "$@"; fi
}
last() { printf '%s' "$1" | tail -n 1 | cut -c1-300; }    # the last line of a command's output, short
commas() { printf '%s' "$1" | tr ',' ' '; }                # a comma-separated argument as words
nap() { sleep "$nap_seconds" 2>/dev/null || sleep 1; }      # BusyBox sleep may not take fractions

quoted() {  # quoted WORD...: the words as a shell reads them back, quoted as Python's shlex.join does,
    # on one line (a newline in a word becomes a space)
    _q=
    for _w in "$@"; do
        case $_w in
            '' | *[!A-Za-z0-9_@%+=:,./-]*) _w="'$(printf '%s' "$_w" | sed "s/'/'\"'\"'/g" | tr '\n' ' ')'" ;;
        esac
        _q="$_q${_q:+ }$_w"
    done
    printf '%s' "$_q"
}

explain() {  # explain WORD TEXT...: one line of explanation (wait, load), in explain mode only
    [ -z "$explaining" ] || printf '%s\n' "$*" >&3
}

run() {  # run COMMAND...: a command that changes the host: printed in explain mode, else recorded and run
    if [ -n "$explaining" ]; then
        printf 'run %s\n' "$(quoted "$@")" >&3
        return 0
    fi
    ran "$@"
    "$@"
}
ran() {  # ran COMMAND...: record in ~/.zdd/ran.log a command about to change the host (run does it)
    { [ -d "$zdd" ] || mkdir -p "$zdd"; } 2>/dev/null
    printf '%s %s %s %s ran %s\n' "$(date +%s)" "${key:--}" "${0##*/}" "$$" "$(quoted "$@")" 2>/dev/null \
        >> "$zdd/ran.log"
    return 0
}

# --- the compose project's flags (-f FILE... -p NAME --env-file FILE): a script's trailing
# arguments, kept one a line (a file name has no newline). Between flag_words and plain_words an
# unquoted $flags is one word per flag: `flag_words; set -- "$@" $flags; plain_words`.
compose_flags() { flags=$(printf '%s\n' "$@"); }  # compose_flags FLAG...: remember them
flag_words() { IFS=$zdd_nl; set -f; }
plain_words() { set +f; IFS=$zdd_ifs; }
dc() {  # dc ARG...: docker compose of the project (for reads: changes go through run)
    flag_words
    # shellcheck disable=SC2086 # one word per flag
    set -- docker compose $flags "$@"
    plain_words
    "$@"
}

# --- the project's journal (~/.zdd/journal/KEY.jsonl) and the deploy's lock ----------------------
journal_append() {  # stdin's lines, appended in one write (O_APPEND): concurrent writers cannot
    # interleave them. Non-zero when they could not be written. Explain mode writes nothing.
    if [ -n "$explaining" ]; then cat >/dev/null; return 0; fi
    _t=$(mktemp) || return 1
    _rc=0
    if ! cat > "$_t"; then
        _rc=1
    elif [ -s "$_t" ]; then
        { mkdir -p "$zdd/journal" && cat "$_t" >> "$zdd/journal/$key.jsonl"; } || _rc=1
    fi
    rm -f "$_t"
    return "$_rc"
}
journal_line() { printf '%s\n' "$1" | journal_append; }  # journal_line LINE
journal_event() {  # journal_event EVENT [NAME VALUE]...: an event of run $run_id by this script (and renew)
    renew
    _e="{\"run\": \"$run_id\", \"t\": $(date +%s), \"event\": \"$1\", \"pid\": $$"
    shift
    while [ $# -ge 2 ]; do _e="$_e, \"$1\": \"$2\""; shift 2; done
    journal_line "$_e}"
}
containers_gone() {  # containers_gone SECONDS ID...: until none of these containers is left, at most
    # SECONDS; non-zero when some are; $left: those still there
    _end=$(( $(date +%s) + $1 )); shift
    while :; do
        left=
        for _id in "$@"; do docker inspect --format . "$_id" >/dev/null 2>&1 && left="$left $_id"; done
        [ -n "$left" ] || return 0
        [ "$(date +%s)" -lt "$_end" ] || return 1
        nap
    done
}
renew() {  # the deploy's lock is renewed while a script works for it (a holder silent for long is gone)
    [ -z "$explaining" ] && [ -n "$key" ] && [ -d "$zdd/locks/$key" ] && touch "$zdd/locks/$key/renewed" 2>/dev/null
    return 0
}
lock_to_job() {  # lock_to_job JOB KIND WHAT [UNTIL]: the deploy's lock ($key) is held by job JOB (a pid) from
    # now on, so the next deploy waits for it (lock.sh), up to UNTIL (epoch seconds: the job's own limit)
    # if that is later than its usual wait; its holder line: "KIND job JOB on HOST since WHEN: WHAT".
    # Non-zero when there is no lock to hand over
    [ -d "$zdd/locks/$key" ] && printf '%s\n' "$1" > "$zdd/locks/$key/pid" 2>/dev/null &&
        { [ -z "${4-}" ] || printf '%s\n' "$4" 2>/dev/null > "$zdd/locks/$key/until" || :; } &&
        printf '%s job %s on %s since %s: %s\n' "$2" "$1" "$(hostname)" "$(date '+%Y-%m-%d %H:%M:%S %Z')" "$3" \
            > "$zdd/locks/$key/holder"
}
lock_free_of_job() {  # lock_free_of_job JOB: the job's end frees the deploy's lock, if it still holds it
    if [ "$(cat "$zdd/locks/$key/pid" 2>/dev/null)" = "$1" ]; then rm -rf "$zdd/locks/$key"; fi
}
