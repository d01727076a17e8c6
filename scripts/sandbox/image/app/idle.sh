#!/bin/sh
# Stand-in for an infra service (mongodb, redis): idles, stops at once on SIGTERM.
trap 'exit 0' TERM INT
while :; do sleep 1 & wait $!; done
