# lock.sh acquire KEY HOLDER WAIT STALE | takeover KEY HOLDER OLD_HOLDER | unlock KEY
# (run on the host by zdd, after lib.sh, as `sh -c 'LIB SCRIPT' lock.sh ARGS...`; stdin: journal lines or nothing)
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
#   unlock    frees it, whoever holds it.
# The lines on stdin are appended to the project's journal (~/.zdd/journal/KEY.jsonl) once the
# lock is held (acquire, takeover) or before it is let go (unlock).
action=$1 key=$2
dir=$zdd/locks/$key
holder_tries=10  # a lock just made has its holder line within this many naps (nap_seconds each)
usage() { echo "usage: lock.sh acquire KEY HOLDER WAIT STALE | takeover KEY HOLDER OLD_HOLDER | unlock KEY"; exit 2; }
holder() { cat "$dir/holder" 2>/dev/null || echo "${1-unknown}"; }  # holder [WHEN_NONE]
case "$action" in
    acquire)
        [ $# = 5 ] || usage
        holder=$3 wait_max=$4 stale=$5
        mkdir -p "$zdd/locks"
        t0=$(date +%s) note=
        while ! mkdir "$dir" 2>/dev/null; do
            job=$(cat "$dir/pid" 2>/dev/null)
            if [ -z "$job" ]; then  # held by a deploy (its holder line is written just after mkdir)
                tries=0
                while [ ! -s "$dir/holder" ] && [ -d "$dir" ] && [ "$tries" -lt "$holder_tries" ]; do
                    nap
                    tries=$((tries + 1))
                done
                [ -d "$dir" ] || continue
                [ -n "$(cat "$dir/pid" 2>/dev/null)" ] && continue
                # a deploy renews its lock while it works on the host (tier.sh); one silent for
                # STALE seconds is gone (its machine, its connection): take the lock over
                age=$(( $(date +%s) - $(date -r "$dir/renewed" +%s 2>/dev/null || date -r "$dir/holder" +%s 2>/dev/null || date +%s) ))
                if [ "$age" -ge "$stale" ]; then
                    note="took over the lock of $(holder ""), not renewed for ${age}s"
                    rm -rf "$dir"
                    continue
                fi
                echo "locked by: $(holder)"
                exit 1
            fi
            if ! kill -0 "$job" 2>/dev/null; then
                note="took over the lock from job $job, which is gone ($(holder ""))"
                rm -rf "$dir"
                continue
            fi
            if [ $(( $(date +%s) - t0 )) -ge "$wait_max" ]; then
                echo "locked by: $(holder) (still running after ${wait_max}s)"
                exit 1
            fi
            note="waited for the previous deploy's restore job $job"
            nap
        done
        printf '%s\n' "$holder" > "$dir/holder"
        touch "$dir/renewed"
        journal_append
        [ -n "$note" ] && echo "$note ($(( $(date +%s) - t0 ))s)"
        echo "locked" ;;
    takeover)
        [ $# = 4 ] || usage
        holder=$3 old=$4
        if [ "$(holder "")" != "$old" ] || [ -e "$dir/pid" ]; then
            echo "locked by: $(holder nobody) (changed meanwhile)"
            exit 1
        fi
        printf '%s\n' "$holder" > "$dir/holder"
        journal_append
        echo "locked" ;;
    unlock)
        [ $# = 2 ] || usage
        journal_append
        rm -rf "$dir" 2>/dev/null
        if [ -e "$dir" ]; then echo "cannot remove $dir"; exit 1; fi
        echo "released" ;;
    *) usage ;;
esac
