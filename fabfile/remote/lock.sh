# lock.sh acquire|takeover|release|unlock|show KEY [HOLDER [WAIT|OLD_HOLDER [STALE]]]
# (run on the host by zdd, as `sh -c SCRIPT lock.sh ARGS...`; stdin: a journal line or nothing)
#
# One deploy at a time per project: a directory ~/.zdd/locks/KEY (mkdir is atomic) holding a
# line about who holds it. KEY names the project by its resolved directory (survey.sh).
#   acquire   takes the lock for HOLDER. A lock held by a job on this host (a `pid` file: the
#             restore at the end of the previous deploy) is waited for, up to WAIT seconds, or
#             taken over when that job is gone; one held by a deploy that has not renewed it
#             (`renewed`, touched by tier.sh) for STALE seconds is taken over too. Exit 1,
#             printing the holder, when it is taken.
#   takeover  replaces OLD_HOLDER (a holder zdd has shown to be gone) by HOLDER, only if
#             OLD_HOLDER still holds it.
#   release   frees it, only if HOLDER (when given) still holds it; unlock frees it whoever holds it.
# A line on stdin is appended to the project's journal (~/.zdd/journal/KEY.jsonl) once the
# lock is held (acquire, takeover) or before it is let go (release).
action=$1 key=$2 holder=${3:-} arg=${4:-0} stale=${5:-1800}
dir=$HOME/.zdd/locks/$key
journal() {  # stdin's lines, appended in one write (concurrent writers cannot interleave them)
    t=$(mktemp) || return 1
    cat > "$t"
    if [ -s "$t" ]; then mkdir -p "$HOME/.zdd/journal" && cat "$t" >> "$HOME/.zdd/journal/$key.jsonl"; fi
    rm -f "$t"
}
nap() { sleep 0.2 2>/dev/null || sleep 1; }
case "$action" in
    acquire)
        mkdir -p "$HOME/.zdd/locks"
        t0=$(date +%s) note=
        while ! mkdir "$dir" 2>/dev/null; do
            job=$(cat "$dir/pid" 2>/dev/null)
            if [ -z "$job" ]; then  # held by a deploy (its holder line is written just after mkdir)
                tries=0
                while [ ! -s "$dir/holder" ] && [ -d "$dir" ] && [ $tries -lt 10 ]; do nap; tries=$((tries + 1)); done
                [ -d "$dir" ] || continue
                [ -n "$(cat "$dir/pid" 2>/dev/null)" ] && continue
                # a deploy renews its lock while it works on the host (tier.sh); one silent for
                # STALE seconds is gone (its machine, its connection): take the lock over
                age=$(( $(date +%s) - $(date -r "$dir/renewed" +%s 2>/dev/null || date -r "$dir/holder" +%s 2>/dev/null || date +%s) ))
                if [ "$age" -ge "$stale" ]; then
                    note="took over the lock of $(cat "$dir/holder" 2>/dev/null), not renewed for ${age}s"
                    rm -rf "$dir"
                    continue
                fi
                echo "locked by: $(cat "$dir/holder" 2>/dev/null || echo unknown)"
                exit 1
            fi
            if ! kill -0 "$job" 2>/dev/null; then
                note="took over the lock from job $job, which is gone ($(cat "$dir/holder" 2>/dev/null))"
                rm -rf "$dir"
                continue
            fi
            if [ $(( $(date +%s) - t0 )) -ge "$arg" ]; then
                echo "locked by: $(cat "$dir/holder" 2>/dev/null || echo unknown) (still running after ${arg}s)"
                exit 1
            fi
            note="waited for the previous deploy's restore job $job"
            nap
        done
        printf '%s\n' "$holder" > "$dir/holder"
        touch "$dir/renewed"
        journal
        [ -n "$note" ] && echo "$note ($(( $(date +%s) - t0 ))s)"
        echo "locked" ;;
    takeover)
        if [ "$(cat "$dir/holder" 2>/dev/null)" != "$arg" ] || [ -e "$dir/pid" ]; then
            echo "locked by: $(cat "$dir/holder" 2>/dev/null || echo nobody) (changed meanwhile)"; exit 1
        fi
        printf '%s\n' "$holder" > "$dir/holder"
        journal
        echo "locked" ;;
    release)
        if [ -n "$holder" ] && [ -d "$dir" ] && [ "$(cat "$dir/holder" 2>/dev/null)" != "$holder" ]; then
            echo "not released: held by $(cat "$dir/holder" 2>/dev/null || echo unknown)"; exit 1
        fi
        journal
        rm -rf "$dir" 2>/dev/null
        if [ -e "$dir" ]; then echo "cannot remove $dir"; exit 1; fi
        echo "released" ;;
    unlock)
        journal
        rm -rf "$dir" 2>/dev/null
        if [ -e "$dir" ]; then echo "cannot remove $dir"; exit 1; fi
        echo "released" ;;
    show)
        if [ -d "$dir" ]; then echo "locked by: $(cat "$dir/holder" 2>/dev/null || echo unknown)"; else echo "free"; fi ;;
    *) echo "usage: lock.sh acquire|takeover|release|unlock|show KEY [HOLDER [WAIT|OLD_HOLDER]]"; exit 2 ;;
esac
