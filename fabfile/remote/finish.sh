# finish.sh KEY HOLDER PRUNE KEEP RUN [SERVICE=IMAGE_ID...]
# (run on the host by zdd, after lib.sh, as `sh -c 'LIB SCRIPT' finish.sh ARGS...`; stdin: journal lines)
#
# The end of a run, in one round trip: append the run's last journal lines; when RUN is
# given, tag the image each service now runs as zdd-keep/P-SERVICE:RUN (P: this project) so
# that a rollback finds it after `:latest` moved, and drop this project's keep tags of all but
# the KEEP newest runs;
# when PRUNE is 1, `docker image prune` (untagged images no container uses); release the
# lock if HOLDER still holds it. Prints one line per thing done. Explain mode (lib.sh): the
# tags, removals and prune it would run, and the same lines.
key=$1 holder=$2 prune=$3 keep=$4 run_id=$5
shift 5
journal_max=20000   # a journal longer than this many lines is cut to its last journal_keep lines
journal_keep=10000  # (more than zdd ever reads of it: JOURNAL_TAIL)
logs_days=14        # job logs (~/.zdd/jobs) and ran.log lines older than this many days go
journal_ok=1
journal_append || journal_ok=
if [ -n "$run_id" ]; then
    repo=zdd-keep/p$(printf '%s' "$key" | cksum | cut -d' ' -f1)
    for pair in "$@"; do
        svc=$(printf '%s' "${pair%%=*}" | tr '[:upper:]' '[:lower:]') image=${pair#*=}
        # one service's tag does not wait for another's (in explain mode they are told in order)
        if [ -n "$explaining" ]; then
            run docker tag "$image" "$repo-$svc:$run_id" >/dev/null 2>&1
        else
            { run docker tag "$image" "$repo-$svc:$run_id" >/dev/null 2>&1 || echo "could not keep $image of $svc"; } &
        fi
    done
    wait
    refs=$(docker image ls --format '{{.Repository}}:{{.Tag}}' 2>/dev/null | grep "^$repo-")
    # runs are named YYYYMMDD-HHMMSS-PID: sorted by name is sorted by time (explain mode: with
    # this run's, as if tagged)
    runs=$({ printf '%s\n' "$refs" | sed -n 's/.*://p'; [ -z "$explaining" ] || [ $# = 0 ] || echo "$run_id"; } |
        sort -u -r)
    n=0 drop=
    for r in $runs; do
        n=$((n + 1))
        [ "$n" -gt "$keep" ] || continue
        drop="$drop $(printf '%s\n' "$refs" | grep ":$r\$" | tr '\n' ' ')"
    done
    # shellcheck disable=SC2086 # image references, one word each
    [ -z "${drop# }" ] || run docker rmi $drop >/dev/null 2>&1  # all at once: one call
    echo "kept the images of the last $keep runs"
fi
if [ "$prune" = 1 ]; then
    out=$(run docker image prune --force 2>&1) && [ -n "$out" ] && printf '%s\n' "$out" | tail -n 1
fi
if [ -z "$explaining" ] && [ -n "$journal_ok" ]; then  # old history and logs go (no lines lost but the oldest)
    for f in "$zdd/journal/$key.jsonl" "$zdd/ran.log"; do
        [ "$(wc -l < "$f" 2>/dev/null || echo 0)" -gt "$journal_max" ] || continue
        if t=$(mktemp "$f.XXXXXX") && tail -n "$journal_keep" "$f" > "$t"; then mv "$t" "$f"; else rm -f "$t"; fi
    done
    find "$zdd/jobs" -type f -mtime +"$logs_days" -exec rm -f {} \; 2>/dev/null
fi
lock=$zdd/locks/$key
if [ -n "$holder" ] && [ "$(cat "$lock/holder" 2>/dev/null)" = "$holder" ]; then
    if [ -n "$explaining" ]; then echo "released the lock"; else rm -rf "$lock" && echo "released the lock"; fi
fi
if [ -z "$journal_ok" ]; then
    echo "cannot write the journal $zdd/journal/$key.jsonl (disk full?): this run's end is not recorded"
    exit 1
fi
exit 0
