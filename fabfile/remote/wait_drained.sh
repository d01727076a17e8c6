# wait_drained.sh PROXY_CONTAINER ADMIN TIMEOUT ADDRESS... (run on the host by zdd)
# Polls Caddy's admin API (GET /reverse_proxy/upstreams, through wget inside the proxy
# container) until no ADDRESS has requests in flight. Every ADDRESS must be listed (zdd keeps
# them referenced while they drain): one that is not means the counters cannot be trusted.
# Prints one final line. Exit 0 drained, 2 timeout, 3 when the counters cannot be read.
proxy=$1 admin=$2 timeout=$3
shift 3
start=$(date +%s)
while :; do
    now=$(date +%s)
    if ! out=$(docker exec "$proxy" wget -q -O - "http://$admin/reverse_proxy/upstreams" 2>&1); then
        echo "cannot read http://$admin/reverse_proxy/upstreams in $proxy: $out" | head -n 1
        exit 3
    fi
    busy=
    for addr in "$@"; do
        entry=$(printf '%s\n' "$out" | tr '{}' '\n\n' | grep -F "\"$addr\"" | head -n 1)
        n=$(printf '%s\n' "$entry" | sed -n 's/.*"num_requests": *\([0-9][0-9]*\).*/\1/p')
        if [ -z "$n" ]; then echo "no in-flight counter for $addr in the admin API"; exit 3; fi
        if [ "$n" != 0 ]; then busy="$busy $addr=$n"; fi
    done
    if [ -z "$busy" ]; then echo "drained after $((now - start))s"; exit 0; fi
    if [ $((now - start)) -ge "$timeout" ]; then echo "timeout after ${timeout}s, still in flight:$busy"; exit 2; fi
    sleep 0.2
done
