# lock.sh acquire|release|show NAME [HOLDER [WAIT]] (run on the host by zdd)
# One deploy at a time per project: a directory ~/.zdd/locks/NAME (mkdir is atomic) holding
# a line about who holds it. A lock held by a job on this host (a `pid` file: the restore at
# the end of the previous deploy) is waited for, up to WAIT seconds, or taken over when that
# job is gone. acquire exits 1, printing the holder, when it cannot have the lock.
action=$1 name=$2 holder=${3:-} wait=${4:-0}
dir=$HOME/.zdd/locks/$name
case "$action" in
    acquire)
        mkdir -p "$HOME/.zdd/locks"
        t0=$(date +%s) note=
        while ! mkdir "$dir" 2>/dev/null; do
            job=$(cat "$dir/pid" 2>/dev/null)
            if [ -z "$job" ]; then  # held by a deploy (its holder line is written just after mkdir)
                tries=0
                while [ ! -s "$dir/holder" ] && [ -d "$dir" ] && [ $tries -lt 10 ]; do
                    sleep 0.2 2>/dev/null || sleep 1; tries=$((tries + 1))
                done
                [ -d "$dir" ] || continue
                [ -n "$(cat "$dir/pid" 2>/dev/null)" ] && continue
                echo "locked by: $(cat "$dir/holder" 2>/dev/null || echo unknown)"
                exit 1
            fi
            if ! kill -0 "$job" 2>/dev/null; then
                note="took over the lock from job $job, which is gone ($(cat "$dir/holder" 2>/dev/null))"
                rm -rf "$dir"
                continue
            fi
            if [ $(( $(date +%s) - t0 )) -ge "$wait" ]; then
                echo "locked by: $(cat "$dir/holder" 2>/dev/null || echo unknown) (still running after ${wait}s)"
                exit 1
            fi
            note="waited for the previous deploy's restore job $job"
            sleep 0.2 2>/dev/null || sleep 1
        done
        printf '%s\n' "$holder" > "$dir/holder"
        [ -n "$note" ] && echo "$note ($(( $(date +%s) - t0 ))s)"
        echo "locked" ;;
    release)
        rm -rf "$dir" 2>/dev/null
        if [ -e "$dir" ]; then echo "cannot remove $dir"; exit 1; fi
        echo "released" ;;
    show)
        if [ -d "$dir" ]; then echo "locked by: $(cat "$dir/holder" 2>/dev/null || echo unknown)"; else echo "free"; fi ;;
    *) echo "usage: lock.sh acquire|release|show NAME [HOLDER [WAIT]]"; exit 2 ;;
esac
