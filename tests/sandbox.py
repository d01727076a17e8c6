"""Helpers for end-to-end tests against the local sandbox (scripts/sandbox.sh)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent

# The tests stop the verify loop and interrupt deploys with SIGINT, as a terminal's Ctrl-C does. A
# shell without job control starts a background job with SIGINT ignored, and an ignored signal
# stays ignored across exec: every process the tests start would then ignore their Ctrl-C (the
# verify loop runs on, writes no report, and the tests fail). Handled here, it is back to the
# default in each child.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
STATE = Path(os.environ.get("ZDD_SANDBOX_DIR", "/var/lib/zdd-sandbox"))
STACK = STATE / "home" / "remilia"
HTTP = f"http://127.0.0.1:{os.environ.get('ZDD_SANDBOX_HTTP_PORT', '18080')}"
SWARM_HTTP = f"http://127.0.0.1:{os.environ.get('ZDD_SANDBOX_SWARM_HTTP_PORT', '18090')}"
SWARM_STACK = "remilia-swarm"  # scripts/sandbox.sh swarm-up; hosts.toml's sandbox-swarm
SSH_PORT = int(os.environ.get("ZDD_SANDBOX_SSH_PORT", "22022"))
# The swarm stack's own Docker engine (a second dockerd, started by swarm-up) and the ssh port
# whose sessions get it as DOCKER_HOST
SWARM_ENGINE = STATE / "swarm"
SWARM_DOCKER_HOST = f"unix://{SWARM_ENGINE}/docker.sock"
SWARM_SSH_PORT = int(os.environ.get("ZDD_SANDBOX_SWARM_SSH_PORT", "22023"))
SWARM_BRIDGES = ("zddsw0", "zddsw-gw")
# swarm-up --nodes 2: a worker's dockerd in a network namespace of its own, linked to the manager
# by a veth pair (the manager's side, SWARM_LINK_ADDR, also serves the registry)
WORKER_DOCKER_HOST = f"unix://{SWARM_ENGINE}/node2/docker.sock"
WORKER_NAME = "zdd-node2"
SWARM_NETNS = "zddsw-node2"
SWARM_LINK_ADDR = os.environ.get("ZDD_SANDBOX_SWARM_LINK", "10.215.0") + ".1"
REGISTRY_PORT = int(os.environ.get("ZDD_SANDBOX_REGISTRY_PORT", "15000"))
APPS = ["server", "property", "identity", "profile-server"]
BIN = ROOT / ".venv" / "bin"


def port_open(port: int, addr: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((addr, port)) == 0


def not_ready_reason() -> str | None:
    """Why the sandbox cannot be used, or None when it is up."""
    if not (STATE / "client" / "id_ed25519").exists():
        return f"no sandbox in {STATE}"
    for what, port in (("sshd", SSH_PORT), ("registry", REGISTRY_PORT)):
        if not port_open(port):
            return f"{what} is not listening on 127.0.0.1:{port}"
    try:
        httpx.get(f"{HTTP}/", timeout=3)
    except httpx.HTTPError as e:
        return f"Caddy does not answer on {HTTP}: {e}"
    return None


def run(
    argv: list[str], timeout: float = 300, env: dict | None = None, check: bool = False, input_text: str | None = None
) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **(env or {}))
    res = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env, input=input_text
    )
    if check and res.returncode != 0:
        raise AssertionError(f"{argv} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def fab(
    *args: str, env: dict | None = None, timeout: float = 300, host: str = "sandbox"
) -> subprocess.CompletedProcess:
    return run([str(BIN / "fab"), "-H", host, *args], timeout=timeout, env=env)


def restore_latest(before: dict[str, list[str]]) -> None:
    """:latest answers again, in the registry and on the host (the image the containers ``before``
    ran), for the tests after a failing release: the sandbox's settle runs `docker compose up -d`."""
    publish()
    for svc, ids in before.items():
        image = docker("inspect", "--format", "{{.Image}}", ids[0]).strip()
        docker("tag", image, f"127.0.0.1:{REGISTRY_PORT}/zdd-sandbox/{svc}:latest")


def publish(*args: str) -> str:
    """Publish new app images (scripts/sandbox.sh publish ARGS); returns the version."""
    res = run([str(ROOT / "scripts" / "sandbox.sh"), "publish", *args], check=True)
    return res.stdout.strip().splitlines()[-1]


def as_host_user(shell: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a shell command on the sandbox "host" as its ssh user, in the stack's directory."""
    res = subprocess.run(
        ["su", "-s", "/bin/sh", "zddsbx", "-c", f"cd ~/remilia && {shell}"], capture_output=True, text=True, timeout=180
    )
    if check and res.returncode != 0:
        raise AssertionError(f"{shell} failed:\n{res.stdout}\n{res.stderr}")
    return res


def docker(*args: str, host: str | None = None) -> str:
    """The docker CLI against the Compose sandbox's engine, or the one at ``host``."""
    argv = ["docker", *(["-H", host] if host else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout


def swarm_docker(*args: str) -> str:
    """The docker CLI against the swarm stack's engine."""
    return docker(*args, host=SWARM_DOCKER_HOST)


@dataclass
class Container:
    id: str
    name: str
    service: str
    version: str
    status: str
    health: str


def containers(service: str, all_states: bool = False) -> list[Container]:
    """The stack's containers of one service, with the version their image carries."""
    argv = [
        "ps",
        "-q",
        "--filter",
        "label=com.docker.compose.project=remilia",
        "--filter",
        f"label=com.docker.compose.service={service}",
    ]
    if all_states:
        argv.insert(1, "-a")
    ids = docker(*argv).split()
    if not ids:
        return []
    out = []
    for c in json.loads(docker("inspect", *ids)):
        health = (c["State"].get("Health") or {}).get("Status", "none")
        out.append(
            Container(
                c["Id"][:12], c["Name"].lstrip("/"), service, image_version(c["Image"]), c["State"]["Status"], health
            )
        )
    return out


def image_version(image: str, host: str | None = None) -> str:
    """The version a sandbox image carries (its org.opencontainers.image.version label)."""
    labels = json.loads(docker("image", "inspect", image, host=host))[0].get("Config", {}).get("Labels") or {}
    return labels.get("org.opencontainers.image.version", "?")


def get(path: str, timeout: float = 10, base: str = HTTP) -> httpx.Response:
    return httpx.get(f"{base}{path}", timeout=timeout)


# --- the Swarm stack (scripts/sandbox.sh swarm-up) ---------------------------------------------


def swarm_service(service: str) -> dict:
    """``docker service inspect`` of one service of the sandbox's stack."""
    return json.loads(swarm_docker("service", "inspect", f"{SWARM_STACK}_{service}"))[0]


def swarm_versions(service: str) -> set[str]:
    """The versions the images of a stack service's running tasks carry, each read on the node
    that runs it (the manager may not hold a worker's image: its prune, or it never ran one)."""
    return {version for _, version in swarm_tasks(service)}


def swarm_update_status(service: str) -> dict:
    """A stack service's UpdateStatus ({} when Swarm has none)."""
    return swarm_service(service).get("UpdateStatus") or {}


SWARM_LOCK = STATE / "home" / ".zdd" / "locks" / f"stack_{SWARM_STACK}"


def swarm_verdict(since: float, timeout: float = 60) -> dict:
    """The monitor job's ``settled`` event (Swarm's verdict after a deploy returned) journaled
    after ``since`` (a Unix time), once the job has also freed the deploy lock; {} if none
    within ``timeout`` seconds."""
    journal = STATE / "home" / ".zdd" / "journal" / f"stack_{SWARM_STACK}.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = journal.read_text().splitlines() if journal.exists() else []
        events = [json.loads(ln) for ln in lines if '"settled"' in ln]
        events = [e for e in events if e.get("event") == "settled" and e.get("t", 0) >= int(since)]
        if events and not SWARM_LOCK.exists():
            return events[-1]
        time.sleep(0.5)
    return {}


def swarm_wait_state(service: str, state: str, timeout: float = 60) -> None:
    """Until Swarm's UpdateStatus of a stack service says ``state`` (at most ``timeout`` s; the
    caller asserts what it needs)."""
    deadline = time.monotonic() + timeout
    while swarm_update_status(service).get("State") != state and time.monotonic() < deadline:
        time.sleep(0.5)


@contextmanager
def swarm_monitor_window(service: str, seconds: int) -> Iterator[None]:
    """A stack service's update_config.monitor set to ``seconds`` (a change of settings only: no
    task is replaced), then back to the stack file's 2 s."""
    full = f"{SWARM_STACK}_{service}"
    swarm_docker("service", "update", "--detach", "--quiet", "--update-monitor", f"{seconds}s", full)
    try:
        yield
    finally:
        swarm_docker("service", "update", "--detach", "--quiet", "--update-monitor", "2s", full)


def swarm_on_worker(*services: str) -> list[str]:
    """The services with a running task on the worker (swarm-up --nodes 2)."""
    return [svc for svc in services if any(node == WORKER_NAME for node, _ in swarm_tasks(svc))]


def worker_docker(*args: str) -> str:
    """The docker CLI against the worker's engine (swarm-up --nodes 2)."""
    return docker(*args, host=WORKER_DOCKER_HOST)


def swarm_tasks(service: str) -> list[tuple[str, str]]:
    """(node hostname, version) of each running task of a stack service; the version is read
    from the image on the node that runs the task (so the worker's own pull is what is seen)."""
    out = swarm_docker(
        "service",
        "ps",
        "--no-trunc",
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Node}} {{.Image}} {{.CurrentState}}",
        f"{SWARM_STACK}_{service}",
    )
    tasks = []
    for line in out.splitlines():
        node, ref, state = line.split(" ", 2)
        if not state.startswith("Running"):
            continue
        name, _, digest = ref.partition("@")
        last = name.rsplit("/", 1)[-1]
        repo = name.rsplit(":", 1)[0] if ":" in last else name
        host = WORKER_DOCKER_HOST if node == WORKER_NAME else SWARM_DOCKER_HOST
        tasks.append((node, image_version(f"{repo}@{digest}" if digest else ref, host=host)))
    return sorted(tasks)


def swarm_serves(timeout: float = 90) -> None:
    """Wait until every app answers through the stack's Caddy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if all(get(f"/{svc}/fast", base=SWARM_HTTP).status_code == 200 for svc in APPS):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the {SWARM_STACK} apps do not answer on {SWARM_HTTP}")


def processes() -> list[tuple[int, str]]:
    """Every process's pid and whole command line (``ps`` may cut it to the terminal's width)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                args = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            if args:
                out.append((int(d.name), args))
    return out


def swarm_engine_info() -> dict:
    """``docker info`` of the swarm stack's engine."""
    return json.loads(swarm_docker("info", "--format", "{{json .}}"))


def swarm_leftovers() -> list[str]:
    """What of the swarm engine is on this machine: nothing once swarm-down (or down) ran."""
    engine = str(SWARM_ENGINE)
    left = [
        f"process {pid} {args}"
        for pid, args in processes()
        if f"{engine}/" in args or ("docker-proxy" in args and "-container-ip 10.213." in args)
    ]
    left += [f"path {p}" for p in (SWARM_ENGINE, SWARM_ENGINE / "docker.sock", SWARM_ENGINE / "data") if p.exists()]
    left += [f"bridge {b}" for b in SWARM_BRIDGES if Path("/sys/class/net", b).exists()]
    vxlans = subprocess.run(["ip", "-d", "-o", "link", "show", "type", "vxlan"], capture_output=True, text=True).stdout
    left += [
        f"vxlan {ln.split()[1].rstrip(':')}" for ln in vxlans.splitlines() if "dstport 14789 " in ln
    ]  # its data-path port
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        lines = Path(table).read_text().splitlines()[1:] if Path(table).exists() else []
        left += [f"udp port 14789 ({table})" for ln in lines if ln.split()[1].endswith(":39C5")]  # its VXLAN socket
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point == engine or point.startswith(f"{engine}/"):
            left.append(f"mount {point}")
    cgroups = Path("/sys/fs/cgroup")
    left += [f"cgroup {d}" for d in (*cgroups.glob("zdd-sandbox-swarm"), *cgroups.glob("*/zdd-sandbox-swarm"))]
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    left += [f"iptables {r}" for r in rules.splitlines() if any(w in r for w in ("10.213.", "10.214.", "zddsw"))]
    left += [f"port {port}" for port in (int(SWARM_HTTP.rsplit(":", 1)[1]), 12377) if port_open(port)]
    left += [f"netns {SWARM_NETNS}" for p in [Path("/run/netns", SWARM_NETNS)] if p.exists()]
    left += [f"link {b}" for b in ("zddsw-m",) if Path("/sys/class/net", b).exists()]
    return left


def stack_settle(timeout: float = 90) -> None:
    """Bring the stack back to one healthy container per app (after a test disturbed it), with no
    one-off job (`docker compose run`) a test that was stopped midway left running: it would be
    counted among its service's containers."""
    jobs = docker(
        "ps",
        "-aq",
        "--filter",
        "label=com.docker.compose.project=remilia",
        "--filter",
        "label=com.docker.compose.oneoff=True",
    ).split()
    if jobs:
        docker("rm", "-f", *jobs)
    as_host_user("docker compose up -d --wait --wait-timeout 90 >/dev/null 2>&1", check=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(get(f"/{svc}/fast").status_code == 200 for svc in APPS):
            return
        time.sleep(0.5)
    raise AssertionError("the sandbox stack did not settle")


class Verify:
    """``inv verify`` as a separate process, stopped with Ctrl-C (SIGINT) like a person would."""

    live: set[Verify] = set()  # probes not stopped yet (a failed test's are killed after it)

    def __init__(self, *args: str, json_path: Path):
        self.json_path = json_path
        Verify.live.add(self)
        self.proc = subprocess.Popen(
            [str(BIN / "inv"), "verify", *args, "--json", str(json_path)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def stop(self, settle: float = 2.0) -> tuple[int, str, dict]:
        Verify.live.discard(self)
        time.sleep(settle)  # let requests started during the change finish
        self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            raise AssertionError(f"inv verify did not stop on SIGINT:\n{out}") from None
        data = json.loads(self.json_path.read_text()) if self.json_path.exists() else {}
        return self.proc.returncode, out, data


def kill_leftover_probes() -> None:
    """A test that failed before stopping its probe must not leave it loading the sandbox."""
    for probe in list(Verify.live):
        Verify.live.discard(probe)
        if probe.proc.poll() is None:
            probe.proc.kill()
            probe.proc.wait(timeout=10)


def hosts_file(tmp_path: Path, engine: str | None = None, extra: str = "") -> Path:
    """The repo's hosts.toml with the sandbox entry changed: another engine, extra tables."""
    text = (ROOT / "hosts.toml").read_text()
    if engine:
        text, n = re.subn(r'(?m)^(\[hosts\.sandbox\]\n(?:.*\n)*?)engine = "[^"]*"', rf'\1engine = "{engine}"', text)
        assert n == 1
    path = tmp_path / "hosts.toml"
    path.write_text(text + "\n" + extra)
    return path
