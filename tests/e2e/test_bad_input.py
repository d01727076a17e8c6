"""Bad input, swept: each case ends in one line that names the cause, exit 2, and nothing
changed on the host (same containers, same journal, no lock left)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests import sandbox as sb

JOURNAL = sb.STATE / "home" / ".zdd" / "journal"
LOCKS = sb.STATE / "home" / ".zdd" / "locks"


def _hosts(tmp_path: Path, old: str = "", new: str = "", extra: str = "") -> dict:
    text = (sb.ROOT / "hosts.toml").read_text()
    if old:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / "hosts.toml"
    path.write_text(text + extra)
    return {"FABRIC_HOSTS_FILE": str(path)}


def _snapshot() -> tuple:
    ids = sb.docker("ps", "-aq", "--no-trunc", "--filter", "label=com.docker.compose.project=remilia").split()
    journal = sorted((p.name, p.stat().st_size) for p in JOURNAL.glob("*")) if JOURNAL.exists() else []
    locks = sorted(p.name for p in LOCKS.glob("*")) if LOCKS.exists() else []
    return sorted(ids), journal, locks


@pytest.fixture(scope="module")
def no_sftp_sshd(tmp_path_factory):
    """A second sshd for the sandbox user without the SFTP subsystem."""
    d = tmp_path_factory.mktemp("nosftp")
    conf = (sb.STATE / "ssh" / "sshd_config").read_text().split("\nMatch ")[0]  # not the swarm port's block
    conf = "\n".join(ln for ln in conf.splitlines() if not ln.startswith(("Subsystem", "Port", "PidFile")))
    (d / "sshd_config").write_text(conf + f"\nPort 22029\nPidFile {d}/sshd.pid\n")
    subprocess.run(["/usr/sbin/sshd", "-f", str(d / "sshd_config")], check=True)
    key = (sb.STATE / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    (d / "known_hosts").write_text(f"[127.0.0.1]:22029 {' '.join(key)}\n")
    for _ in range(50):
        if sb.port_open(22029):
            break
        time.sleep(0.1)
    yield d
    subprocess.run(["kill", (d / "sshd.pid").read_text().strip()])


OVERRIDES = {
    # a proxy service in the compose project that is not running
    "edge.yaml": "services:\n  edge:\n    image: 127.0.0.1:15000/zdd-sandbox/base:latest\n"
    "    command: [caddy, run, --config, /etc/caddy/Caddyfile, --adapter, caddyfile]\n",
    # an app service without a healthcheck
    "nocheck.yaml": "services:\n  property:\n    healthcheck: {disable: true}\n",
    # an app service writing to a volume its old and new containers share
    "shared.yaml": "services:\n  identity:\n    volumes: [beetle_data:/data]\nvolumes:\n  beetle_data: {}\n",
}


@pytest.fixture(scope="module")
def overrides():
    """Compose files beside the sandbox's, for the cases that need another project."""
    for name, text in OVERRIDES.items():
        (sb.STACK / name).write_text(text)
        subprocess.run(["chown", "zddsbx", str(sb.STACK / name)], check=True)
    yield
    for name in OVERRIDES:
        (sb.STACK / name).unlink()


def _with(file: str) -> dict:
    return dict(old="[hosts.sandbox]\n", new=f'[hosts.sandbox]\ncompose_files = ["docker-compose.yaml", "{file}"]\n')


CASES = [
    ("hosts.toml syntax", ["deploy"], dict(extra="\n[hosts.sandbox\n"), "not valid TOML"),
    (
        "unknown key",
        ["deploy"],
        dict(old="health_timeout = 30", new="health_timout = 30"),
        "hosts.sandbox.health_timout: unknown key",
    ),
    (
        "wrong type",
        ["deploy"],
        dict(old="health_timeout = 30", new='health_timeout = "30"'),
        "hosts.sandbox.health_timeout must be an integer",
    ),
    (
        "negative number",
        ["deploy"],
        dict(old="health_timeout = 30", new="health_timeout = -1"),
        "health_timeout must not be negative",
    ),
    (
        "bad duration",
        ["deploy"],
        dict(extra='\n[hosts.sandbox.proxy]\nstream_close_delay = "soon"\n'),
        "stream_close_delay must be a duration",
    ),
    ("unknown host", ["-H", "nowhere", "deploy"], {}, "unknown host 'nowhere'"),
    ("unknown service", ["rollout-service", "nope"], {}, "'nope' is not an app service of sandbox"),
    (
        "service missing on the host",
        ["deploy"],
        dict(old="[hosts.sandbox]\n", new='[hosts.sandbox]\nrollout = [["server", "ghost"]]\n'),
        "service 'ghost' is not in the compose project on the host",
    ),
    (
        "missing token",
        ["deploy"],
        dict(old='password_env = "ZDD_SANDBOX_REGISTRY_PASSWORD"', new='password_env = "ZDD_NO_SUCH_TOKEN"'),
        "$ZDD_NO_SUCH_TOKEN is not set",
    ),
    (
        "compose file missing on the host",
        ["deploy"],
        dict(old="[hosts.sandbox]\n", new='[hosts.sandbox]\ncompose_files = ["nope.yaml"]\n'),
        "docker compose config failed",
    ),
    (
        "project dir missing on the host",
        ["deploy"],
        dict(old='dir = "~/remilia"\nengine', new='dir = "~/nowhere"\nengine'),
        "cannot read the host's compose project in ~/nowhere",
    ),
    (
        "proxy not running",
        ["deploy"],
        {**_with("edge.yaml"), "extra": '\n[hosts.sandbox.proxy]\nservice = "edge"\n'},
        "the proxy edge is not running, so old containers cannot be drained",
    ),
    (
        "app service without a healthcheck",
        ["deploy"],
        _with("nocheck.yaml"),
        "property has no healthcheck, so nothing says when a new container is ready",
    ),
    (
        "unreadable Caddyfile",
        ["deploy"],
        dict(extra='\n[hosts.sandbox.proxy]\nconfig = "/etc/caddy/nope"\n'),
        "reading the proxy config failed",
    ),
    (
        "unknown host key",
        ["deploy"],
        dict(old='known_hosts = "/var/lib/zdd-sandbox/client/known_hosts"', new='known_hosts = "/dev/null"'),
        "host key not known",
    ),
    ("rollback to an unknown run", ["rollback", "--to", "19990101-000000-1"], {}, "no successful run"),
    (
        "install-plugin --source missing",
        ["install-plugin", "--source", "/nonexistent/docker-rollout"],
        {},
        "--source /nonexistent/docker-rollout: no such file",
    ),
]


@pytest.mark.parametrize("name, args, edit, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(sandbox, tmp_path, overrides, name, args, edit, message):
    env = _hosts(tmp_path, **edit)
    before = _snapshot()
    argv = args if args[0] == "-H" else ["-H", "sandbox", *args]
    res = sb.run([str(sb.BIN / "fab"), *argv], env={**env, "ZDD_NO_SUCH_TOKEN": ""})
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert message in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert _snapshot() == before


def test_install_plugin_source_to_a_host_without_sftp(sandbox, tmp_path, no_sftp_sshd):
    env = _hosts(
        tmp_path,
        old='known_hosts = "/var/lib/zdd-sandbox/client/known_hosts"',
        new=f'known_hosts = "{no_sftp_sshd}/known_hosts"',
    )
    text = Path(env["FABRIC_HOSTS_FILE"]).read_text().replace("port = 22022\n", "port = 22029\n", 1)
    Path(env["FABRIC_HOSTS_FILE"]).write_text(text)
    (sb.STATE / "home" / ".docker" / "cli-plugins" / "docker-rollout").unlink(missing_ok=True)
    local = tmp_path / "docker-rollout"
    local.write_text("#!/bin/sh\n")
    before = _snapshot()
    res = sb.run([str(sb.BIN / "fab"), "-H", "sandbox", "install-plugin", "--source", str(local)], env=env)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "the host offers no SFTP" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert _snapshot() == before


def test_preflight_names_a_shared_volume_and_accepts_a_wait_for_a_service_without_healthcheck(
    sandbox, tmp_path, overrides
):
    env = _hosts(
        tmp_path,
        old="[hosts.sandbox]\n",
        new='[hosts.sandbox]\ncompose_files = ["docker-compose.yaml", "nocheck.yaml", "shared.yaml"]\n',
        extra="\n[hosts.sandbox.services.property]\nno_healthcheck_wait = 3\n",
    )
    res = sb.run([str(sb.BIN / "fab"), "-H", "sandbox", "deploy", "--dry-run"], env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "identity: old and new containers share beetle_data while both run" in res.stdout, res.stdout
