#!/bin/sh
# Demo app of the zdd sandbox: Caddy answers /fast and /health with the baked-in
# version; /slow is a busybox-httpd CGI that sleeps first; /ws is a websocket echo
# (websocketd) whose replies carry the version too. SIGTERM behaviour is
# chosen by $SIGTERM (/app/BROKEN, /app/FAIL_AFTER and /app/DIE_AFTER: see sandbox.sh publish):
#   graceful  stop accepting, finish in-flight requests, exit (Caddy's own stop)
#   abrupt    die at once, cutting in-flight requests (a Go server without handling)
#   ignore    keep serving until killed (Node as PID 1 without a handler)
APP_VERSION=$(cat /app/VERSION)
HEALTH_STATUS=200
[ -e /app/BROKEN ] && HEALTH_STATUS=503
export APP_VERSION HEALTH_STATUS SERVICE="${SERVICE:-app}" SLOW_SECONDS="${SLOW_SECONDS:-1.2}"

CADDY='' HTTPD='' WS=''
on_term() {
    case "${SIGTERM:-graceful}" in
        abrupt)
            kill -KILL $CADDY $HTTPD $WS 2>/dev/null
            exit 143 ;;
        *)
            [ -n "$CADDY" ] && kill -TERM "$CADDY" && wait "$CADDY"
            kill -TERM $HTTPD $WS 2>/dev/null
            exit 0 ;;
    esac
}
if [ "${SIGTERM:-graceful}" = ignore ]; then trap '' TERM; else trap on_term TERM; fi
trap 'exit 0' INT

mkdir -p /tmp/zdd-app
if [ -e /app/FAIL_AFTER ]; then (sleep "$(cat /app/FAIL_AFTER)"; : > /tmp/zdd-app/failing) & fi
sleep "${BOOT_DELAY:-0}"
httpd -f -p 127.0.0.1:9000 -h /app/www &
HTTPD=$!
websocketd --address=127.0.0.1 --port=9001 --passenv=SERVICE,APP_VERSION,PATH --loglevel=error /app/ws-echo.sh &
WS=$!
caddy run --config /app/Caddyfile --adapter caddyfile &
CADDY=$!
# DIE_AFTER: the app stops (exit 1) that many seconds after it started, as a crash some time
# after a healthy start would (Swarm's monitor window sees it)
if [ -e /app/DIE_AFTER ]; then (sleep "$(cat /app/DIE_AFTER)"; : > /tmp/zdd-app/died; kill -TERM "$CADDY") & fi
wait "$CADDY"
[ ! -e /tmp/zdd-app/died ] || exit 1
