# proxy.sh: the proxy's side of a tier (sent after lib.sh, before tier.sh): load a config of
# zdd's, wait until addresses have nothing in flight, count a canary's access log.
# Uses tier.sh's $proxy, $admin, $tmp, $drain_timeout, $stream_grace, $blind_wait.

load() {  # load WHAT JSON: JSON to caddy in the proxy container, a graceful reload
    explain load "$1 config"
    if [ -n "$explaining" ]; then run docker exec -i "$proxy" caddy reload --config /dev/stdin --force; return; fi
    out=$(printf '%s\n' "$2" | run docker exec -i "$proxy" caddy reload --config /dev/stdin --force 2>&1) && return 0
    say "load-error $(last "$out")"
    return 1
}

# An open websocket (or SSE, long poll) is a request in flight for Caddy's counters until it
# ends: once the count of in-flight requests on the addresses has stopped falling for
# STREAM_GRACE seconds, what is left is taken for long-lived streams, which end when their
# containers stop (their clients reconnect, to the containers that serve).
drain_wait() {  # drain_wait ADDRS...: until nothing is in flight to them at the proxy; sets $result
    t0=$(date +%s) peak=0 result='' shown='' last=-1 falling=$t0
    if [ $# = 0 ]; then
        result="nothing to drain at the proxy"
    elif [ -n "$explaining" ]; then
        explain wait "drained: $* with nothing in flight at the proxy (or no fall for $stream_grace s)," \
            "up to $drain_timeout s"
        result="not waited for (explain mode)"
    fi
    while [ -z "$result" ]; do
        now=$(date +%s)
        if ! out=$(bounded docker exec "$proxy" wget -q -O - "http://$admin/reverse_proxy/upstreams" 2>&1); then
            result=unobservable; break
        fi
        busy='' total=0
        for addr in "$@"; do
            # shellcheck disable=SC2020 # both braces become newlines: one JSON object a line
            entry=$(printf '%s\n' "$out" | tr '{}' '\n\n' | grep -F "\"$addr\"" | head -n 1)
            k=$(printf '%s\n' "$entry" | sed -n 's/.*"num_requests": *\([0-9][0-9]*\).*/\1/p')
            if [ -z "$k" ]; then result=unobservable; break 2; fi
            if [ "$k" != 0 ]; then busy="$busy $addr=$k"; total=$((total + k)); fi
        done
        [ "$total" -gt "$peak" ] && peak=$total
        if [ "$last" = -1 ] || [ "$total" -lt "$last" ]; then falling=$now; fi
        last=$total
        if [ $((now - t0)) != "$shown" ]; then say "progress draining:$busy, $((now - t0)) s of $drain_timeout"; shown=$((now - t0)); fi
        pause_at in-drain
        if [ -z "$busy" ]; then result="after $((now - t0))s, $peak in flight at most"; break; fi
        if [ $((now - falling)) -ge "$stream_grace" ]; then
            result="after $((now - t0))s, $peak in flight at most; $total long-lived left to the stop:$busy"; break
        fi
        if [ $((now - t0)) -ge "$drain_timeout" ]; then result="timeout after ${drain_timeout}s, still in flight:$busy"; break; fi
        renew
        nap
    done
    if [ "$result" = unobservable ]; then
        grace=$blind_wait
        [ "$drain_timeout" -lt "$grace" ] && grace=$drain_timeout
        sleep "$grace"
        result="unobservable: waited ${grace}s"
    fi
}

# A canary's access log (a file in the proxy container, JSON lines, one per request, written by
# the configs zdd loads during the canary) is read from where the last read stopped; the
# counts per upstream address add up in $tmp/canary.counts. Only whole lines count: one the
# proxy is still writing is read next time.
canary_stats() {  # canary_stats LOG FIELD: print "stats ADDR ANSWERS 5XX B1..B12" lines, then "stats-end"
    off=$(cat "$tmp/canary.off" 2>/dev/null || echo 0)
    if [ -z "$explaining" ] &&
        bounded docker exec "$proxy" tail -c "+$((off + 1))" "$1" > "$tmp/canary.chunk" 2>/dev/null; then
        size=$(wc -c < "$tmp/canary.chunk")
        partial=0
        if [ "$size" -gt 0 ] && [ "$(tail -c 1 "$tmp/canary.chunk" | od -An -tx1 | tr -d ' \n')" != 0a ]; then
            partial=$(tail -n 1 "$tmp/canary.chunk" | wc -c)
        fi
        [ -e "$tmp/canary.counts" ] || : > "$tmp/canary.counts"
        if LC_ALL=C awk -v field="$2" -v partial="$partial" "$canary_awk" "$tmp/canary.counts" "$tmp/canary.chunk" \
            > "$tmp/canary.next"; then
            mv "$tmp/canary.next" "$tmp/canary.counts"
            echo $((off + size - partial)) > "$tmp/canary.off"
        fi
    fi
    [ -e "$tmp/canary.counts" ] && while IFS= read -r l; do say "stats $l"; done < "$tmp/canary.counts"
    say "stats-end"
}
# shellcheck disable=SC2016 # awk's own $ fields
canary_awk='
BEGIN { n = split("5 10 25 50 100 250 500 1000 2500 5000 10000", edge, " ") + 1; key = "\"" field "\": *\"" }
FILENAME == ARGV[1] { t[$1] = $2; e[$1] = $3; for (i = 1; i <= n; i++) b[$1, i] = $(3 + i); next }
{ if (held) count(prev); prev = $0; held = 1 }
END {
    if (held && !partial) count(prev)
    for (a in t) { printf "%s %d %d", a, t[a], e[a]; for (i = 1; i <= n; i++) printf " %d", b[a, i]; printf "\n" }
}
function count(l,    a, s, d, i) {
    if (!match(l, key)) return
    a = substr(l, RSTART + RLENGTH); a = substr(a, 1, index(a, "\"") - 1)
    if (a == "") return
    s = 0; if (match(l, /"status": *[0-9]+/)) { s = substr(l, RSTART, RLENGTH); sub(/.*: */, "", s); s += 0 }
    d = 0; if (match(l, /"duration": *[0-9.eE+-]+/)) { d = substr(l, RSTART, RLENGTH); sub(/.*: */, "", d); d *= 1000 }
    t[a]++
    if (s >= 500) e[a]++
    for (i = 1; i < n && d > edge[i]; i++) ;
    b[a, i]++
}'
