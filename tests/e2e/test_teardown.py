"""`scripts/sandbox.sh up` twice changes nothing; `down` removes only what it created, the
swarm stack's own engine included.

Runs last (see conftest): it takes the sandbox down (the swarm stack too) and brings it back up.
"""

import pwd
import subprocess

import pytest

from tests import sandbox as sb

SCRIPT = str(sb.ROOT / "scripts" / "sandbox.sh")


def _ids():
    return subprocess.run(
        ["docker", "ps", "-aq", "--no-trunc", "--filter", "label=com.docker.compose.project=remilia"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()


def test_setup_again_changes_nothing(sandbox):
    before = sorted(_ids())
    images = sorted(
        subprocess.run(["docker", "images", "-q", "--no-trunc"], capture_output=True, text=True).stdout.split()
    )
    res = sb.run([SCRIPT, "up"], timeout=300)
    assert res.returncode == 0, res.stderr
    said = [ln for ln in res.stderr.splitlines() if ln.startswith("sandbox: ")]
    assert len(said) == 1 and said[0].startswith("sandbox: ready"), res.stderr  # nothing installed/started
    assert sorted(_ids()) == before
    assert (
        sorted(subprocess.run(["docker", "images", "-q", "--no-trunc"], capture_output=True, text=True).stdout.split())
        == images
    )


def _processes_using(path: str) -> list[str]:
    return [f"{pid} {args}" for pid, args in sb.processes() if path in args]


@pytest.mark.teardown
def test_down_removes_only_what_it_created_and_up_restores(sandbox):
    engine_ours = (sb.STATE / "created" / "dockerd").exists()
    res = sb.run([SCRIPT, "down"], timeout=300)
    assert res.returncode == 0, res.stderr
    try:
        assert not sb.STATE.exists()
        assert _processes_using(str(sb.STATE)) == []  # sshd, registry, dockerds (logs/pids lived there)
        assert sb.swarm_leftovers() == []  # the swarm engine's processes, mounts, bridges, cgroups
        with pytest.raises(KeyError):
            pwd.getpwnam("zddsbx")
        for port in (sb.SSH_PORT, sb.SWARM_SSH_PORT, sb.REGISTRY_PORT, int(sb.HTTP.rsplit(":", 1)[1])):
            assert not sb.port_open(port), port
        if engine_ours:
            assert subprocess.run(["docker", "info"], capture_output=True).returncode != 0
        else:  # somebody else's engine: still running, with no sandbox container or image left
            assert _ids() == []
            refs = subprocess.run(
                ["docker", "images", "--format", "{{.Repository}}"], capture_output=True, text=True
            ).stdout
            assert "zdd-sandbox" not in refs
        env = sb.ROOT / ".env"
        assert not env.exists() or "ZDD_SANDBOX_REGISTRY_PASSWORD" not in env.read_text()
    finally:
        res = sb.run([SCRIPT, "up"], timeout=900)
    assert res.returncode == 0, res.stderr
    assert sb.not_ready_reason() is None
    assert sb.get("/server/fast").status_code == 200
