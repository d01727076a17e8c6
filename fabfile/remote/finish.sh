# finish.sh KEY HOLDER PRUNE KEEP RUN [SERVICE=IMAGE_ID...]
# (run on the host by zdd, as `sh -c SCRIPT finish.sh ARGS...`; stdin: journal lines)
#
# The end of a run, in one round trip: append the run's last journal lines; when RUN is
# given, tag the image each service now runs as zdd-keep/P-SERVICE:RUN (P: this project) so
# that a rollback finds it after `:latest` moved, and drop this project's keep tags of all but
# the KEEP newest runs;
# when PRUNE is 1, `docker image prune` (untagged images no container uses); release the
# lock if HOLDER still holds it. Prints one line per thing done.
key=$1 holder=$2 prune=$3 keep=$4 run=$5
shift 5
t=$(mktemp) && cat > "$t"  # the lines, appended in one write: concurrent writers cannot interleave them
if [ -s "$t" ]; then mkdir -p "$HOME/.zdd/journal" && cat "$t" >> "$HOME/.zdd/journal/$key.jsonl"; fi
rm -f "$t"
if [ -n "$run" ]; then
    repo=zdd-keep/p$(printf '%s' "$key" | cksum | cut -d' ' -f1)
    for pair in "$@"; do
        svc=$(printf '%s' "${pair%%=*}" | tr 'A-Z' 'a-z') image=${pair#*=}
        docker tag "$image" "$repo-$svc:$run" >/dev/null 2>&1 || echo "could not keep $image of $svc"
    done
    refs=$(docker image ls --format '{{.Repository}}:{{.Tag}}' 2>/dev/null | grep "^$repo-")
    # runs are named YYYYMMDD-HHMMSS-PID: sorted by name is sorted by time
    runs=$(printf '%s\n' "$refs" | sed -n 's/.*://p' | sort -u -r)
    n=0
    for r in $runs; do
        n=$((n + 1))
        [ "$n" -gt "$keep" ] || continue
        for ref in $(printf '%s\n' "$refs" | grep ":$r\$"); do docker rmi "$ref" >/dev/null 2>&1; done
    done
    echo "kept the images of the last $keep runs"
fi
if [ "$prune" = 1 ]; then
    out=$(docker image prune --force 2>&1) && echo "$out" | tail -n 1
fi
lock=$HOME/.zdd/locks/$key
if [ -n "$holder" ] && [ "$(cat "$lock/holder" 2>/dev/null)" = "$holder" ]; then
    rm -rf "$lock" && echo "released the lock"
fi
exit 0
