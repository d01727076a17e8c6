"""The host-side helpers (fabfile/remote/*.sh) run by a real POSIX sh against a stub
`docker`, and rendered commands checked by a real shell."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from fabfile import commands as cmds

SH = shutil.which("dash") or "/bin/sh"


@pytest.fixture
def stub(tmp_path):
    """A `docker` on PATH that prints $STUB_OUT and exits $STUB_RC."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text('#!/bin/sh\nprintf "%s\\n" "$STUB_OUT"\nexit "${STUB_RC:-0}"\n')
    (bin_dir / "docker").chmod(0o755)

    def run(cmd: cmds.Command, out: str = "", rc: int = 0, timeout: float = 20) -> subprocess.CompletedProcess:
        env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", STUB_OUT=out, STUB_RC=str(rc))
        return subprocess.run([SH, "-s", "--", *cmd.argv[3:]], input=cmd.stdin.text, capture_output=True,
                              text=True, env=env, timeout=timeout)
    return run


IDLE = '[{"address":"server:8080","num_requests":0,"fails":0},{"address":"10.0.0.5:8080","num_requests":0,"fails":0}]'
BUSY_SPACED = '[{"address": "server:8080", "num_requests": 2, "fails": 0}, {"address": "10.0.0.5:8080", "num_requests": 0}]'


def test_wait_drained_idle(stub):
    res = stub(cmds.wait_drained("caddy1", "localhost:2019", ["server:8080", "10.0.0.5:8080"], 5), IDLE)
    assert res.returncode == 0 and res.stdout.startswith("drained after")


def test_wait_drained_busy_with_spaced_json_times_out(stub):
    res = stub(cmds.wait_drained("caddy1", "localhost:2019", ["server:8080", "10.0.0.5:8080"], 1), BUSY_SPACED)
    assert res.returncode == 2 and "still in flight: server:8080=2" in res.stdout


def test_wait_drained_missing_address_or_unreadable_api_is_unknown(stub):
    res = stub(cmds.wait_drained("caddy1", "localhost:2019", ["server:8080", "10.0.0.9:8080"], 5), IDLE)
    assert res.returncode == 3 and "no in-flight counter for 10.0.0.9:8080" in res.stdout
    res = stub(cmds.wait_drained("caddy1", "localhost:2019", ["server:8080"], 5), "exec: wget: not found", rc=126)
    assert res.returncode == 3 and "cannot read" in res.stdout


@pytest.mark.parametrize("state,rc,first", [
    ("running healthy 0", 0, "healthy after"),
    ("running none 0", 0, "healthy after"),          # no healthcheck: NO_HEALTHCHECK_WAIT is 0 here
    ("exited none 0", 1, "failed: abc=exited"),
    ("running starting 1", 1, "failed: abc=running"),  # it restarted
    ("running starting 0", 2, "timeout after 1s: abc=starting"),
])
def test_wait_healthy(stub, state, rc, first):
    res = stub(cmds.wait_healthy(["abc"], 1, 0), state)
    assert res.returncode == rc and res.stdout.startswith(first), res.stdout


def test_release_hook_waits_for_the_marker_then_runs_the_own_hook(tmp_path):
    marker = tmp_path / "release"
    hook = cmds.release_hook(str(marker), 20, then="echo own-hook")
    proc = subprocess.Popen([SH, "-c", hook], stdout=subprocess.PIPE, text=True)
    time.sleep(0.6)
    assert proc.poll() is None  # held
    marker.write_text("")
    out, _ = proc.communicate(timeout=5)
    assert out.strip() == "own-hook"


def test_release_hook_gives_up_after_its_limit(tmp_path):
    t0 = time.monotonic()
    subprocess.run([SH, "-c", cmds.release_hook(str(tmp_path / "never"), 1)], timeout=10, check=True)
    assert 0.8 <= time.monotonic() - t0 < 4


def test_background_run_and_kill_stop_the_whole_group(tmp_path):
    pidfile = tmp_path / "bg.pid"
    bg = cmds.run_in_background(str(pidfile), cmds.Command(("sh", "-c", "sleep 30 & sleep 30")))
    proc = subprocess.Popen([SH, "-s", "--", *bg.argv[3:]], stdin=subprocess.PIPE, text=True)
    proc.stdin.write(bg.stdin.text)
    proc.stdin.close()
    for _ in range(50):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.05)
    pgid = int(pidfile.read_text())
    kill = cmds.kill_background(str(pidfile), None)
    res = subprocess.run([SH, "-s", "--", *kill.argv[3:]], input=kill.stdin.text, capture_output=True, text=True,
                         timeout=20)
    assert res.stdout.startswith("stopped")
    proc.wait(timeout=10)
    time.sleep(0.2)
    ps = subprocess.run(["ps", "-o", "stat=", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
    assert [st for st in ps if not st.startswith("Z")] == []  # killed (zombies wait for their reaper)


def test_rendered_commands_reach_a_real_shell_as_the_same_words():
    nasty = ["it's", 'a "b"', "$HOME", "; rm -rf /", "`id`", "tab\there", "new\nline", "*"]
    rendered = cmds.Command(("printf", "%s\\0", *nasty)).render()
    out = subprocess.run([SH, "-c", rendered], capture_output=True, check=True).stdout
    assert out.decode().split("\0")[:-1] == nasty
    home = subprocess.run([SH, "-c", cmds.Command(("pwd",), cwd="~").render()], capture_output=True, text=True,
                          env=dict(os.environ, HOME="/tmp")).stdout.strip()
    assert home == "/tmp"


def test_stdin_secret_is_not_in_repr():
    c = cmds.login("ghcr.io", "bot", "s3cr3t-token", "GH_PACKAGES_TOKEN")
    assert "s3cr3t-token" not in repr(c) and "s3cr3t-token" not in c.describe() and "s3cr3t-token" not in c.render()
    assert c.stdin.text == "s3cr3t-token"
