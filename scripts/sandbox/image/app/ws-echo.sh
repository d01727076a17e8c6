#!/bin/sh
# One websocket connection (websocketd runs this per connection): each message comes back
# with the app's service name and version.
while IFS= read -r line; do
    printf '%s %s %s\n' "$SERVICE" "$APP_VERSION" "$line"
done
