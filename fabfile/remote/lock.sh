# lock.sh acquire KEY HOLDER WAIT STALE | takeover KEY HOLDER OLD_HOLDER | unlock KEY
# (run on the host by zdd, after lib.sh, as `sh -c 'LIB SCRIPT' lock.sh ARGS...`; stdin: journal lines or nothing)
#
# One deploy at a time per project: a directory ~/.zdd/locks/KEY (mkdir is atomic) holding a
# line about who holds it. KEY names the project by its resolved directory (survey.sh).
#   acquire   takes the lock for HOLDER. A lock held by a job on this host (a `pid` file: the
#             restore at the end of the previous deploy, or engine swarm's monitor job) is
#             waited for, up to WAIT seconds or to the job's own limit (an `until` file, epoch
#             seconds, at most a day on), whichever is later, or taken over when that job is
#             gone (lib.sh: lock_to_job); one held by a deploy that has not renewed it
#             (`renewed`, touched by tier.sh) for STALE seconds is taken over too. Exit 1,
#             printing the holder, when it is taken.
#   takeover  replaces OLD_HOLDER (a holder zdd has shown to be gone) by HOLDER, only if
#             OLD_HOLDER still holds it.
#   unlock    frees it, whoever holds it (not while the previous deploy's restore job is alive).
# The lines on stdin are appended to the project's journal (~/.zdd/journal/KEY.jsonl) once the
# lock is held (acquire, takeover) or before it is let go (unlock). A lock whose journal line
# cannot be written is not taken (exit 3, "cannot ..."), nor one whose directory cannot be made.
# Taking over (a stale lock, a dead job's, a gone holder's) happens under a second lock,
# KEY.takeover, and looks again once that is held: two takers never both win.
action=$1 key=$2
dir=$zdd/locks/$key
holder_tries=10  # a lock just made has its holder line within this many naps (nap_seconds each)
usage() { echo "usage: lock.sh acquire KEY HOLDER WAIT STALE | takeover KEY HOLDER OLD_HOLDER | unlock KEY"; exit 2; }
mutex_stale=60   # s after which a takeover lock left by a taker that died is removed
holder() { cat "$dir/holder" 2>/dev/null || echo "${1-unknown}"; }  # holder [WHEN_NONE]
cannot() { echo "cannot $*"; exit 3; }
age_of() { echo $(( $(date +%s) - $(date -r "$1" +%s 2>/dev/null || date +%s) )); }  # age_of FILE: seconds
lock_age() { if [ -e "$dir/renewed" ]; then age_of "$dir/renewed"; else age_of "$dir/holder"; fi; }
take_mutex() {  # the takeover lock: only one taker at a time (one left by a dead taker goes after a while)
    mkdir "$dir.takeover" 2>/dev/null && return 0
    [ "$(age_of "$dir.takeover")" -lt "$mutex_stale" ] || rm -rf "$dir.takeover"
    return 1
}
drop_mutex() { rm -rf "$dir.takeover"; }
held_as() {  # held_as HOLDER: write the holder line and the journal lines (stdin); undo and fail if not
    if ! { printf '%s\n' "$1" > "$dir/holder" && touch "$dir/renewed"; } 2>/dev/null; then
        rm -rf "$dir"
        cannot "write the lock $dir (disk full?)"
    fi
    if ! journal_append; then
        rm -rf "$dir"
        cannot "write the journal $zdd/journal/$key.jsonl (disk full?): the deploy lock was not taken"
    fi
}
case "$action" in
    acquire)
        [ $# = 5 ] || usage
        holder=$3 wait_max=$4 stale=$5
        mkdir -p "$zdd/locks" 2>/dev/null || cannot "make $zdd/locks (disk full? not writable?)"
        t0=$(date +%s) note='' misses=0
        while ! out=$(mkdir "$dir" 2>&1); do
            if [ ! -d "$dir" ]; then  # not "exists" (or a taker just removed it): full, read-only, no right?
                misses=$((misses + 1))
                [ "$misses" -lt "$holder_tries" ] || cannot "take the lock: $(last "$out")"
                nap
                continue
            fi
            misses=0
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
                age=$(lock_age)
                if [ "$age" -lt "$stale" ]; then
                    echo "locked by: $(holder)"
                    exit 1
                fi
                was=$(holder "")
                if take_mutex; then  # look again under the takeover lock: still the same, still stale?
                    if [ "$(holder "")" = "$was" ] && [ ! -e "$dir/pid" ] &&
                        [ "$(lock_age)" -ge "$stale" ]; then
                        rm -rf "$dir"
                        note="took over the lock of $was, not renewed for ${age}s"
                    fi
                    drop_mutex
                fi
                nap
                continue
            fi
            if ! kill -0 "$job" 2>/dev/null; then
                if take_mutex; then
                    was=$(holder "")
                    [ "$(cat "$dir/pid" 2>/dev/null)" = "$job" ] && rm -rf "$dir" &&
                        note="took over the lock from job $job, which is gone ($was)"
                    drop_mutex
                fi
                nap
                continue
            fi
            limit=$((t0 + wait_max)) job_until=$(cat "$dir/until" 2>/dev/null)
            case $job_until in
                '' | *[!0-9]*) ;;
                *) [ "$job_until" -le $((t0 + 86400)) ] && [ "$job_until" -gt "$limit" ] && limit=$job_until ;;
            esac
            if [ "$(date +%s)" -ge "$limit" ]; then
                echo "locked by: $(holder) (still running after $(( $(date +%s) - t0 ))s)"
                exit 1
            fi
            note="waited for the previous deploy's job $job"
            nap
        done
        held_as "$holder"
        [ -z "$note" ] || echo "$note ($(( $(date +%s) - t0 ))s)"
        echo "locked" ;;
    takeover)
        [ $# = 4 ] || usage
        holder=$3 old=$4
        n=0
        until take_mutex; do
            n=$((n + 1))
            [ "$n" -lt "$holder_tries" ] || { echo "locked by: $(holder nobody) (being taken over meanwhile)"; exit 1; }
            nap
        done
        if [ "$(holder "")" != "$old" ] || [ -e "$dir/pid" ]; then
            drop_mutex
            echo "locked by: $(holder nobody) (changed meanwhile)"
            exit 1
        fi
        rm -rf "$dir"
        mkdir "$dir" 2>/dev/null || { drop_mutex; echo "locked by: $(holder nobody) (changed meanwhile)"; exit 1; }
        drop_mutex
        held_as "$holder"
        echo "locked" ;;
    unlock)
        [ $# = 2 ] || usage
        job=$(cat "$dir/pid" 2>/dev/null)
        if [ -n "$job" ] && kill -0 "$job" 2>/dev/null; then
            echo "not released: the restore job $job of the last deploy holds it and is alive (it frees the lock" \
                "once the old containers are gone; stop it first to free the lock now)"
            exit 1
        fi
        journal_append
        rm -rf "$dir" 2>/dev/null
        if [ -e "$dir" ]; then echo "cannot remove $dir"; exit 1; fi
        echo "released" ;;
    *) usage ;;
esac
