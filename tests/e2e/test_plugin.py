"""install-plugin on the sandbox host, against a plugin file served from a local HTTP server;
and, when a real docker-rollout is given (ZDD_DOCKER_ROLLOUT=path), a deploy with it."""

import functools
import hashlib
import http.server
import os
import re
import subprocess
import threading

import pytest

from tests import sandbox as sb

PLUGIN_DIR = sb.STATE / "home" / ".docker" / "cli-plugins"
# A stand-in written for these tests: answers the Docker CLI's plugin metadata call and --version.
STAND_IN = """#!/bin/sh
# test stand-in for the docker-rollout CLI plugin
if [ "$1" = docker-cli-plugin-metadata ]; then
    echo '{"SchemaVersion":"0.1.0","Vendor":"zdd tests","Version":"v0.13","ShortDescription":"stand-in"}'
    exit 0
fi
for a in "$@"; do [ "$a" = --version ] && echo "docker-rollout version v0.13"; done
exit 0
"""


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "www"
    (root / "v0.13").mkdir(parents=True)
    (root / "v0.13" / "docker-rollout").write_text(STAND_IN)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/{{version}}/docker-rollout"
    server.shutdown()


@pytest.fixture
def no_plugin():
    (PLUGIN_DIR / "docker-rollout").unlink(missing_ok=True)
    yield
    (PLUGIN_DIR / "docker-rollout").unlink(missing_ok=True)


def plugin_hosts(tmp_path, url, sha):
    return sb.hosts_file(
        tmp_path,
        engine="docker-rollout",
        extra=f"""
[hosts.sandbox.plugin]
version = "v0.13"
url = "{url}"
sha256 = "{sha}"
""",
    )


def test_install_plugin_verifies_checksum_and_is_idempotent(sandbox, served, no_plugin, tmp_path):
    sha = hashlib.sha256(STAND_IN.encode()).hexdigest()
    env = {"FABRIC_HOSTS_FILE": str(plugin_hosts(tmp_path, served, sha))}
    res = sb.fab("install-plugin", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "installed: docker-rollout version v0.13" in res.stdout
    installed = PLUGIN_DIR / "docker-rollout"
    assert hashlib.sha256(installed.read_bytes()).hexdigest() == sha
    assert os.access(installed, os.X_OK)
    mtime = installed.stat().st_mtime_ns

    res = sb.fab("install-plugin", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "already installed: docker-rollout version v0.13" in res.stdout
    assert installed.stat().st_mtime_ns == mtime


def test_install_plugin_refuses_a_checksum_mismatch(sandbox, served, no_plugin, tmp_path):
    env = {"FABRIC_HOSTS_FILE": str(plugin_hosts(tmp_path, served, "0" * 64))}
    res = sb.fab("install-plugin", env=env)
    assert res.returncode == 1
    assert "checksum mismatch" in res.stderr and "nothing installed" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (PLUGIN_DIR / "docker-rollout").exists()
    assert not list(PLUGIN_DIR.glob(".docker-rollout.*"))  # no temporary file left either


def test_install_plugin_from_a_local_copy(sandbox, no_plugin, tmp_path):
    local = tmp_path / "docker-rollout"
    local.write_text(STAND_IN)
    sha = hashlib.sha256(STAND_IN.encode()).hexdigest()
    env = {"FABRIC_HOSTS_FILE": str(plugin_hosts(tmp_path, "http://127.0.0.1:9/{version}/nowhere", sha))}
    res = sb.fab("install-plugin", "--source", str(local), env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (PLUGIN_DIR / "docker-rollout").read_text() == STAND_IN
    assert not list((sb.STATE / "home").glob(".zdd-upload-*"))  # the upload was cleaned up


def test_deploy_refuses_docker_rollout_engine_without_plugin(sandbox, no_plugin, tmp_path):
    hosts = plugin_hosts(tmp_path, "http://127.0.0.1:9/{version}/nowhere", "a" * 64)
    ids = {svc: [c.id for c in sb.containers(svc)] for svc in sb.APPS}
    res = sb.fab("deploy", "--no-verify", env={"FABRIC_HOSTS_FILE": str(hosts)})
    assert res.returncode == 1
    assert "install-plugin" in res.stderr and "download failed" in res.stderr
    assert {svc: [c.id for c in sb.containers(svc)] for svc in sb.APPS} == ids


REAL = os.environ.get("ZDD_DOCKER_ROLLOUT", "")


@pytest.mark.skipif(
    not REAL,
    reason="set ZDD_DOCKER_ROLLOUT to the path of a docker-rollout v0.13 script "
    "to exercise the docker-rollout engine for real",
)
def test_deploy_with_real_docker_rollout(settled, no_plugin, tmp_path):
    hosts = sb.hosts_file(tmp_path, engine="docker-rollout")
    env = {"FABRIC_HOSTS_FILE": str(hosts)}
    res = sb.fab("install-plugin", "--source", REAL, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    version = sb.publish()
    probe = sb.Verify("--host", "sandbox", json_path=tmp_path / "verify.json")
    jobs = sb.STATE / "home" / ".zdd" / "jobs"
    before = set(jobs.glob("rollout-*.log")) if jobs.exists() else set()
    res = sb.fab("deploy", "--no-verify", "--wait", env=env)
    rc, out, report = probe.stop()
    assert res.returncode == 0, res.stdout + res.stderr
    for svc in sb.APPS:
        assert [c.version for c in sb.containers(svc, all_states=True)] == [version], svc
    # docker-rollout itself replaced each service (its own log says so), while zdd held its
    # pre-stop hook until the old containers were drained at Caddy: so even the abrupt
    # (server) and SIGTERM-ignoring (identity) apps lose nothing
    logs = {p.stem.split("-", 3)[3]: p.read_text() for p in set(jobs.glob("rollout-*.log")) - before}
    assert sorted(logs) == sorted(sb.APPS), logs  # rollout-EPOCH-PID-SERVICE.log
    for svc, log in logs.items():
        assert "==> Stopping and removing old containers" in log, (svc, log)
    assert len(re.findall(r"\[sandbox\] ok   drain .* after \d+s", res.stdout)) == 3, res.stdout
    assert rc == 0 and report["failures"] == 0, out


@pytest.mark.skipif(
    not REAL,
    reason="set ZDD_DOCKER_ROLLOUT to the path of a docker-rollout v0.13 script "
    "to exercise the docker-rollout engine for real",
)
def test_real_docker_rollout_broken_image_keeps_old_containers_serving(settled, no_plugin, tmp_path):
    env = {"FABRIC_HOSTS_FILE": str(sb.hosts_file(tmp_path, engine="docker-rollout"))}
    assert sb.fab("install-plugin", "--source", REAL, env=env).returncode == 0
    [old] = sb.containers("identity")
    broken = sb.publish("--broken", "identity")
    try:
        assert sb.fab("pull", env=env).returncode == 0
        probe = sb.Verify("--host", "sandbox", json_path=tmp_path / "verify.json")
        res = sb.fab("rollout-service", "identity", env=env)
        rc, out, report = probe.stop()
        assert res.returncode == 1 and "not healthy" in res.stderr, res.stdout + res.stderr
        [now] = sb.containers("identity", all_states=True)
        assert now.id == old.id and now.version != broken  # docker-rollout was stopped before it could roll
        left = subprocess.run(["pgrep", "-u", "zddsbx", "-f", "docker-rollout"], capture_output=True, text=True)
        assert left.stdout.strip() == "", left.stdout
        assert rc == 0 and report["failures"] == 0, out
    finally:
        sb.publish("identity")
        sb.fab("pull", env=env)


@pytest.mark.skipif(
    not REAL,
    reason="set ZDD_DOCKER_ROLLOUT to the path of a docker-rollout v0.13 script "
    "to exercise the docker-rollout engine for real",
)
def test_real_docker_rollout_holds_its_hook_without_a_writable_tmp(settled, no_plugin, tmp_path):
    """A read-only image (busybox sh, no writable /tmp) is still rolled by docker-rollout: the
    hold lives in /dev/shm. Without /dev/shm either (ipc: none), zdd says so in one line and
    starts that service's new containers itself."""
    override = sb.STACK / "readonly.override.yaml"
    override.write_text(
        "services:\n"
        "  identity: {read_only: true, tmpfs: [/data, /config]}\n"
        "  profile-server: {read_only: true, ipc: none, tmpfs: [/data, /config]}\n"
    )
    subprocess.run(["chown", "zddsbx", str(override)], check=True)
    hosts = sb.hosts_file(tmp_path, engine="docker-rollout")
    hosts.write_text(
        hosts.read_text().replace(
            "[hosts.sandbox]\n",
            '[hosts.sandbox]\ncompose_files = ["docker-compose.yaml", "readonly.override.yaml"]\n',
            1,
        )
    )
    env = {"FABRIC_HOSTS_FILE": str(hosts)}
    assert sb.fab("install-plugin", "--source", REAL, env=env).returncode == 0
    jobs = sb.STATE / "home" / ".zdd" / "jobs"
    try:
        res = sb.fab("deploy", "--no-verify", "--wait", env=env)  # now the old containers are read-only
        assert res.returncode == 0, res.stdout + res.stderr
        assert "identity: roll (1 → 1), compose config changed" in res.stdout
        before = set(jobs.glob("rollout-*.log"))
        probe = sb.Verify("--host", "sandbox", json_path=tmp_path / "verify.json")
        res = sb.fab("deploy", "--no-verify", "--wait", "--force", env=env)
        rc, out, report = probe.stop()
        assert res.returncode == 0, res.stdout + res.stderr
        logs = {p.stem.split("-", 3)[3]: p.read_text() for p in set(jobs.glob("rollout-*.log")) - before}
        assert "==> Stopping and removing old containers" in logs.get("identity", ""), logs
        assert "profile-server" not in logs
        assert re.search(
            r"profile-server: docker-rollout's pre-stop hook cannot be held in its containers "
            r"\(no sh, or neither /dev/shm nor /tmp writable\)",
            res.stdout,
        ), res.stdout
        for svc in ("identity", "profile-server"):
            [c] = sb.containers(svc, all_states=True)
            assert c.health == "healthy"
        assert rc == 0 and report["failures"] == 0, out
    finally:
        override.unlink()
        sb.fab("deploy", "--no-verify", "--wait")
