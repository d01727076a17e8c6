# bg_run.sh PIDFILE COMMAND... (run on the host by zdd)
# Runs COMMAND in a session of its own and records its process group in PIDFILE, so that
# bg_kill.sh can stop it and all its children. Exits with COMMAND's status.
pidfile=$1
shift
if command -v setsid >/dev/null 2>&1; then setsid "$@" & else "$@" & fi
pid=$!
echo "$pid" > "$pidfile"
wait "$pid"
rc=$?
rm -f "$pidfile"
exit "$rc"
