"""The Swarm stack has a Docker engine of its own (scripts/sandbox.sh swarm-up / swarm-down).

The Compose sandbox's engine never enters swarm mode (leaving it would break the name resolution
of its running containers: NOTES); zdd reaches the second engine through the sandbox's sshd on
its swarm port; `swarm-up` twice changes nothing; `swarm-down` removes the second engine and all
it left (processes, socket, data-root, exec-root, mounts, bridges, cgroups), also after a
SIGKILL, and the Compose sandbox answers all along. Each test leaves the swarm stack up.
"""

import os
import signal
import time

import pytest

from fabfile import config as cfg
from fabfile.session import connection_for
from tests import sandbox as sb

pytestmark = pytest.mark.swarm

SCRIPT = str(sb.ROOT / "scripts" / "sandbox.sh")


def sandbox_script(*args: str):
    return sb.run([SCRIPT, *args], timeout=600)


def first_engine_swarm_state() -> str:
    return sb.docker("info", "--format", "{{.Swarm.LocalNodeState}}").strip()


def compose_sandbox_answers() -> None:
    for svc in sb.APPS:
        r = sb.get(f"/{svc}/fast")
        assert r.status_code == 200 and r.text.startswith(f"{svc} v"), (svc, r.text)
    res = sb.fab("status")
    assert res.returncode == 0, res.stdout + res.stderr


def remote(host_name: str, command: str) -> str:
    """A command over zdd's own ssh connection to a hosts.toml host."""
    from fabric import Config, Connection

    host = cfg.load(sb.ROOT / "hosts.toml").host(host_name)
    cxn = connection_for(Connection(host_name, config=Config()), host)
    try:
        return cxn.run(command, hide=True, in_stream=False).stdout
    finally:
        cxn.close()


def test_the_swarm_stack_runs_on_an_engine_of_its_own(swarm_sandbox):
    assert first_engine_swarm_state() == "inactive"
    assert sb.docker("ps", "-aq", "--filter", "label=com.docker.stack.namespace").split() == []
    info = sb.swarm_engine_info()
    assert info["Swarm"]["LocalNodeState"] == "active" and info["Swarm"]["ControlAvailable"]
    assert info["DockerRootDir"] == str(sb.SWARM_ENGINE / "data")
    assert info["ID"] != sb.docker("info", "--format", "{{.ID}}").strip()
    assert sb.SWARM_STACK in sb.swarm_docker("stack", "ls", "--format", "{{.Name}}").split()
    # no iptables rule of its own: its one published port goes through its userland proxy
    assert [r for r in sb.swarm_leftovers() if r.startswith("iptables ")] == []
    compose_sandbox_answers()


def test_ssh_sessions_on_the_swarm_port_reach_the_swarm_engine(swarm_sandbox):
    first_root = sb.docker("info", "--format", "{{.DockerRootDir}}").strip()
    swarm_root = str(sb.SWARM_ENGINE / "data")
    # every way zdd runs docker there: plain, in `sh -c`, with a temporary DOCKER_CONFIG, compose
    out = remote(
        "sandbox-swarm",
        'echo "$DOCKER_HOST"; docker info --format "{{.DockerRootDir}}"; '
        "sh -c 'docker info --format \"{{.Swarm.LocalNodeState}}\"'; "
        'DOCKER_CONFIG=$(mktemp -d) docker info --format "{{.DockerRootDir}}"; '
        'cd ~/remilia-swarm && docker compose config --services | sort | tr "\\n" " "',
    )
    assert out.splitlines() == [
        sb.SWARM_DOCKER_HOST,
        swarm_root,
        "active",
        swarm_root,
        "caddy identity mongodb profile-server property redis server ",
    ], out
    # the Compose sandbox's sessions still get the first engine
    out = remote(
        "sandbox", 'echo "[$DOCKER_HOST]"; docker info --format "{{.DockerRootDir}} {{.Swarm.LocalNodeState}}"'
    )
    assert out.splitlines() == ["[]", f"{first_root} inactive"], out


def test_swarm_up_again_changes_nothing(swarm_sandbox):
    tasks = sorted(sb.swarm_docker("ps", "-aq", "--no-trunc").split())
    services = sb.swarm_docker("service", "ls", "--format", "{{.ID}} {{.Image}}")
    compose = sorted(sb.docker("ps", "-aq", "--no-trunc").split())
    res = sandbox_script("swarm-up")
    assert res.returncode == 0, res.stderr
    said = [ln for ln in res.stderr.splitlines() if ln.startswith("sandbox: ")]
    assert len(said) == 1 and said[0].startswith("sandbox: swarm ready"), res.stderr
    assert sorted(sb.swarm_docker("ps", "-aq", "--no-trunc").split()) == tasks
    assert sb.swarm_docker("service", "ls", "--format", "{{.ID}} {{.Image}}") == services
    assert sorted(sb.docker("ps", "-aq", "--no-trunc").split()) == compose


def kill_swarm_dockerd() -> None:
    """SIGKILL the swarm engines' dockerds (manager and worker), as the end of a session does:
    their containerds go with them, their shims and containers live on."""
    pids = [int((sb.SWARM_ENGINE / d / "dockerd.pid").read_text()) for d in (".", "node2")]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}") for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = sb.swarm_leftovers()
    assert any(r.startswith("process ") for r in left), left


def test_swarm_down_leaves_nothing_of_the_engine_also_after_a_sigkill(swarm_sandbox):
    left = sb.swarm_leftovers()  # the check sees running engines: the manager, the worker, the link
    assert f"netns {sb.SWARM_NETNS}" in left and any("/node2/daemon.json" in r for r in left), left
    try:
        res = sandbox_script("swarm-down")
        assert res.returncode == 0, res.stderr
        assert sb.swarm_leftovers() == []
        assert not (sb.STATE / "home" / "remilia-swarm").exists()
        assert first_engine_swarm_state() == "inactive"
        compose_sandbox_answers()
        again = sandbox_script("swarm-down")  # idempotent: nothing left to do, nothing said
        assert again.returncode == 0 and again.stderr == "", again.stderr

        # a killed engine (shims, containers, mounts, bridges left): swarm-up starts afresh
        res = sandbox_script("swarm-up", "--nodes", "2")
        assert res.returncode == 0, res.stderr
        kill_swarm_dockerd()
        res = sandbox_script("swarm-up", "--nodes", "2")
        assert res.returncode == 0, res.stderr
        assert "removing what an earlier swarm engine left" in res.stderr
        sb.swarm_serves()
        # and swarm-down removes all of it
        kill_swarm_dockerd()
        res = sandbox_script("swarm-down")
        assert res.returncode == 0, res.stderr
        assert "removing what the swarm engine left (it did not answer)" in res.stderr
        assert sb.swarm_leftovers() == []
        assert first_engine_swarm_state() == "inactive"
        compose_sandbox_answers()
    finally:
        res = sandbox_script("swarm-up", "--nodes", "2")
    assert res.returncode == 0, res.stderr
    sb.swarm_serves()
