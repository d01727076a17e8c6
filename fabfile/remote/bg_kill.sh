# bg_kill.sh PIDFILE (run on the host by zdd): stop what bg_run.sh started, children too.
[ -s "$1" ] || { echo "nothing running"; exit 0; }
pid=$(cat "$1")
kill -TERM -"$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
n=0
while kill -0 "$pid" 2>/dev/null && [ $n -lt 50 ]; do sleep 0.2 2>/dev/null || sleep 1; n=$((n + 1)); done
kill -KILL -"$pid" 2>/dev/null
rm -f "$1"
echo "stopped $pid"
