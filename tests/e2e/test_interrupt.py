"""Interrupting a deploy the way it happens — SIGKILL, SIGTERM, a real Ctrl-C to the process
group — mid-rollout, under load: the next deploy finishes the job, without `fab unlock`, with
one set of containers per service on the new image and no failed request."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests import sandbox as sb

LOCKS = sb.STATE / "home" / ".zdd" / "locks"


def _start_deploy() -> subprocess.Popen:
    return subprocess.Popen(
        [str(sb.BIN / "fab"), "-H", "sandbox", "deploy", "--no-verify"],
        cwd=sb.ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _until(proc: subprocess.Popen, needle: str, timeout: float = 60) -> list[str]:
    seen, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:
        seen.append(line)
        if needle in line or time.monotonic() > deadline:
            break
    return seen


# SIGKILL after the start, SIGTERM during the switch, an SSH drop during the drain and Ctrl-C
# after the switch are tests/e2e/test_chaos.py's, at tier.sh's named points; here, Ctrl-C to the
# process group as a tier's containers start
@pytest.mark.parametrize("how", ["Ctrl-C"])
def test_an_interrupted_deploy_is_finished_by_the_next_one(settled, tmp_path, how):
    version = sb.publish()
    before = {svc: len(sb.containers(svc, all_states=True)) for svc in sb.APPS}
    probe = sb.Verify("--host", "sandbox", json_path=tmp_path / "verify.json")
    proc = _start_deploy()
    seen = _until(proc, "ok   plan")
    time.sleep(1.5)  # tier 1's new containers are starting
    if how == "SIGKILL":
        proc.kill()
    elif how == "SIGTERM":
        proc.terminate()
    else:
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    rest, _ = proc.communicate(timeout=60)
    text = "".join(seen) + rest
    assert "Traceback" not in text
    if how != "SIGKILL":
        assert proc.returncode == 130, text  # unwound: new containers removed, within seconds
    res = sb.fab("deploy", "--no-verify", "--wait")
    rc, out, report = probe.stop()
    assert res.returncode == 0, res.stdout + res.stderr
    if how == "SIGKILL":  # nobody undid anything: the journal says what was half done
        assert "took over the lock of a zdd that is gone" in res.stdout, res.stdout
        assert "ok   recover" in res.stdout, res.stdout
    for svc in sb.APPS:
        running = sb.containers(svc, all_states=True)
        assert len(running) == before[svc], (svc, running)  # the interruption changed no count
        assert [c.version for c in running] == [version], (svc, running)
    assert not any(LOCKS.iterdir()), "the lock is free again"
    assert rc == 0 and report["failures"] == 0, out
