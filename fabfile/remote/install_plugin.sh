# install_plugin.sh URL SHA256 VERSION [LOCAL_FILE] (run on the host by zdd)
# Installs docker-rollout into ~/.docker/cli-plugins after checking its sha256. The file is
# downloaded from URL (curl or wget), or taken from LOCAL_FILE (uploaded by zdd) when given.
# Nothing is replaced unless the new file's checksum matches.
set -eu
url=$1 sum=$2 src=${4:-}  # $3, VERSION, is for the reader: `docker rollout --version` says it below
dir=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins
mkdir -p "$dir"
tmp=$(mktemp "$dir/.docker-rollout.XXXXXX")
trap 'rm -f "$tmp"' EXIT
if [ -n "$src" ]; then
    cat "$src" > "$tmp"
elif command -v curl >/dev/null 2>&1; then
    curl -fsSL --max-time 60 -o "$tmp" "$url" 2>&1 || { echo "download failed: $url"; exit 4; }
elif command -v wget >/dev/null 2>&1; then
    wget -q -T 60 -O "$tmp" "$url" 2>&1 || { echo "download failed: $url"; exit 4; }
else
    echo "neither curl nor wget on the host: use --source to upload a copy"; exit 4
fi
got=$(sha256sum "$tmp" | cut -d' ' -f1)
if [ "$got" != "$sum" ]; then
    echo "checksum mismatch: expected $sum, got $got (nothing installed)"; exit 5
fi
chmod 755 "$tmp"
mv -f "$tmp" "$dir/docker-rollout"
trap - EXIT
out=$(docker rollout --version 2>&1) || { echo "docker rollout --version failed: $out"; exit 6; }
echo "installed: $out"
