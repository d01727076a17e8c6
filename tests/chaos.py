"""Real operating conditions on the sandbox, one scenario at a time, under load: deploys back to
back, a `docker compose run` job through a deploy, a signal or a dropped SSH connection at each
point of a tier, a full ~/.zdd, a docker that hangs, two clients racing for the lock, a rollback
with tags pinned in .env. Each scenario ends with a converging deploy and the checks every one
must pass: no failed request (for a client that retries a stale keep-alive GET once, as browsers
do), the declared number of containers per service on the version that was deployed, a job that
ran through it still running, a free lock.

Used by scripts/chaos.py (all of them, one table) and tests/e2e/test_chaos.py (a few, asserted).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests import sandbox as sb

HOME = sb.STATE / "home"
ZDD = HOME / ".zdd"
LOCKS = ZDD / "locks"
POINTS = ("after-start", "in-switch", "after-switch", "in-drain")
RACE = "Server disconnected without sending a response"  # httpx's words for a close before any answer
HOWS = ("SIGTERM", "SIGKILL", "Ctrl-C", "ssh-drop")


@dataclass
class Outcome:
    scenario: str
    exits: list[int | None] = field(default_factory=list)  # the disturbed run(s), then the converging deploy
    failed: int = -1  # failed requests (retrying client) over the whole scenario
    races: int = 0  # of them, the proxy closed the connection before any answer (NOTES 10's reload race)
    requests: int = 0
    containers: dict[str, int] = field(default_factory=dict)
    versions_ok: bool = False
    job_running: bool | None = None  # only for the scenario with a job
    jobs: list[str] = field(default_factory=list)
    lock_free: bool = False
    converge_s: float = 0.0  # the converging deploy's time
    # the longest an older version still answered a URL after a newer one had first answered it
    # (by the time each request was sent): a defect after a switch (traffic routed back to old
    # containers), by design after a canary step sent the traffic back, or a rollback
    back_on_old: float = 0.0
    notes: list[str] = field(default_factory=list)
    cleanup: list[Callable[[], object]] = field(default_factory=list)

    @property
    def dropped(self) -> int:
        """Failed requests, one reload race excused: a reload closes a connection as a request
        goes out on it (NOTES 10; one such failure in each of the last two full e2e runs, some
        60,000 requests each); a removed container, a refused connection or a 502 never is."""
        return self.failed - min(self.races, 1)

    @property
    def ok(self) -> bool:
        return (
            self.dropped == 0
            and self.versions_ok
            and self.lock_free
            and self.job_running is not False
            and all(n == 1 for n in self.containers.values())
            and self.exits[-1] == 0
        )


# --- the host side ------------------------------------------------------------------------------


def as_user(shell: str) -> subprocess.CompletedProcess:
    return subprocess.run(["su", "-s", "/bin/sh", "zddsbx", "-c", shell], capture_output=True, text=True, timeout=120)


def pause_at(point: str) -> None:
    """tier.sh waits at ``point`` (a test hook: ~/.zdd/test-pause) until :func:`resume`."""
    as_user(f"mkdir -p ~/.zdd && printf '%s' {shlex.quote(point)} > ~/.zdd/test-pause && rm -f ~/.zdd/test-paused")


def wait_paused(timeout: float = 90) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (ZDD / "test-paused").exists():
            return True
        time.sleep(0.1)
    return False


def resume() -> None:
    as_user("rm -f ~/.zdd/test-pause")


def drop_ssh() -> None:
    """The SSH connection drops: its sshd session processes on the host are killed."""
    subprocess.run(["pkill", "-KILL", "-f", "^sshd: zddsbx"], capture_output=True)


def lock_free() -> bool:
    deadline = time.monotonic() + 30  # the restore job frees it once the old containers are gone
    while time.monotonic() < deadline:
        if not LOCKS.exists() or not any(p for p in LOCKS.iterdir() if not p.name.endswith(".takeover")):
            return True
        time.sleep(0.5)
    return False


def start_job() -> str:
    """A cron-like one-off job of the server service (`docker compose run -d`), its container id."""
    res = sb.as_host_user("docker compose run -d --no-deps server /app/idle.sh")
    return res.stdout.strip().splitlines()[-1][:12]


def running(cid: str) -> bool:
    res = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", cid], capture_output=True, text=True)
    return res.stdout.strip() == "true"


# --- the client side ----------------------------------------------------------------------------


def start_deploy(*args: str, unshare: bool = False) -> subprocess.Popen:
    argv = [str(sb.BIN / "fab"), "-H", "sandbox", "deploy", "--no-verify", *args]
    if unshare:  # another pid namespace: a client on "another machine" with this host name
        argv = ["unshare", "--pid", "--fork", "--mount-proc", *argv]
    return subprocess.Popen(
        argv, cwd=sb.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def interrupt(proc: subprocess.Popen, how: str) -> None:
    if how == "SIGKILL":
        proc.kill()
    elif how == "SIGTERM":
        proc.terminate()
    elif how == "Ctrl-C":
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    elif how == "ssh-drop":
        drop_ssh()


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int | None, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return None, out + "\n(did not end: killed)"
    return proc.returncode, out


def converge(o: Outcome, *args: str) -> str:
    t0 = time.monotonic()
    res = sb.fab("deploy", "--no-verify", "--wait", *args, timeout=400)
    o.converge_s = time.monotonic() - t0
    o.exits.append(res.returncode)
    return res.stdout + res.stderr


def is_job(c: sb.Container) -> bool:
    return "-run-" in c.name  # `docker compose run` names its containers PROJECT-SERVICE-run-HASH


def check(o: Outcome, version: str) -> None:
    """After the converging deploy: one container per app on ``version``, the lock free."""
    ok = True
    for svc in sb.APPS:
        cs = [c for c in sb.containers(svc, all_states=True) if not is_job(c)]
        o.containers[svc] = len(cs)
        ok = ok and all(c.version == version for c in cs)
    o.versions_ok = ok
    o.lock_free = lock_free()


# --- the scenarios ------------------------------------------------------------------------------


def under_load(name: str, tmp: Path, body: Callable[[Outcome], str | None], publish: bool = True) -> Outcome:
    """Publish new images, run ``body`` under the verify loop, converge, check."""
    sb.stack_settle()
    o = Outcome(name)
    version = sb.publish() if publish else ""
    probe = sb.Verify("--host", "sandbox", json_path=tmp / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}.json")
    try:
        version = body(o) or version
        text = converge(o)
        if o.exits[-1] != 0:
            o.notes.append(text.strip().splitlines()[-1][:200] if text.strip() else "converge failed")
    finally:
        rc, out, report = probe.stop()
    o.failed, o.requests = report.get("failures", -1), report.get("total", 0)
    o.races = sum(1 for f in report.get("failure_list", []) if RACE in f["reason"])
    o.back_on_old = back_on_old(report)
    for f in report.get("failure_list", [])[:5]:  # where a failed request falls, for the one who reads the table
        o.notes.append(f"failed at {f['time']}: {f['url']} {f['kind']}: {f['reason']}"[:200])
    check(o, version or current_version())
    if o.job_running is not None:
        o.job_running = o.job_running and all(running(job) for job in o.jobs)
    for undo in o.cleanup:
        undo()
    return o


def back_on_old(report: dict) -> float:
    """Per URL, each version's last answer after the next version's first, in seconds: the longest."""
    worst = 0.0
    for u in report.get("urls", []):
        seen = sorted(u.get("versions", []), key=lambda v: v["first_s"])
        for old, new in zip(seen, seen[1:]):
            worst = max(worst, old["last_s"] - new["first_s"])
    return round(worst, 3)


def current_version() -> str:
    return sb.containers("server")[0].version


def interrupt_at(o: Outcome, point: str, how: str, *args: str) -> None:
    """A deploy (with ``args``) interrupted by ``how`` while tier.sh waits at ``point``."""
    pause_at(point)
    proc = start_deploy(*args)
    try:
        if not wait_paused():
            o.notes.append(f"never reached {point}")
        interrupt(proc, how)
        time.sleep(1)
    finally:
        resume()
    rc, out = finish(proc)
    o.exits.append(rc)
    if "Traceback" in out:
        o.notes.append("traceback")


def interrupted_at(point: str, how: str) -> Callable[[Outcome], None]:
    return lambda o: interrupt_at(o, point, how)


def canary_interrupted(how: str) -> Callable[[Outcome], None]:
    """``how`` during the first tier's first canary step (10 %): the tier goes back to its old
    containers before its new ones are removed; nothing fails."""

    def body(o: Outcome) -> None:
        old = {svc: sb.containers(svc)[0].version for svc in sb.APPS}
        interrupt_at(o, "in-canary", how, "--canary", "10")
        deadline = time.monotonic() + 30  # with the client gone, the host goes back on its own
        while True:
            left = {
                svc: sorted({c.version for c in sb.containers(svc, all_states=True) if not is_job(c)})
                for svc in sb.APPS
            }
            back = all(v == [old[svc]] for svc, v in left.items())
            if back or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        o.notes.append(f"after the interruption {'only the old version ran' if back else f'ran {left}'}")

    return body


def back_to_back(o: Outcome) -> str:
    first = start_deploy()
    rc, out = finish(first)
    o.exits.append(rc)
    version = sb.publish()  # CI merged again
    second = start_deploy()
    o.exits.append(finish(second)[0])
    return version


def with_job(o: Outcome) -> None:
    job = start_job()
    o.jobs.append(job)
    o.cleanup.append(lambda: subprocess.run(["docker", "rm", "-f", job], capture_output=True))
    proc = start_deploy()
    o.exits.append(finish(proc)[0])
    o.job_running = running(job)


def full_disk(o: Outcome) -> None:
    uid = as_user("id -u").stdout.strip()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size=128k,nr_inodes=64,uid={uid},gid={uid},mode=0755", "zdd-full", str(ZDD)],
        check=True,
    )
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={ZDD}/fill", "bs=4k"], capture_output=True)
        t0 = time.monotonic()
        res = sb.fab("deploy", "--no-verify", timeout=120)
        o.exits.append(res.returncode)
        lines = [ln for ln in (res.stdout + res.stderr).strip().splitlines() if "failed:" in ln]
        o.notes.append(f"refused in {time.monotonic() - t0:.1f}s: {lines[-1][:120] if lines else '?'}")
        left = subprocess.run(["pgrep", "-u", "zddsbx", "-f", "tier.sh|restore.sh"], capture_output=True, text=True)
        if left.stdout.strip():
            o.notes.append(f"left running: {left.stdout.split()}")
    finally:
        subprocess.run(["umount", str(ZDD)], check=False)


def docker_hangs(o: Outcome) -> None:
    """dockerd stops answering for 20 s right after a tier's containers started."""
    pid = subprocess.run(["pgrep", "-o", "-x", "dockerd"], capture_output=True, text=True).stdout.split()[0]
    pause_at("after-start")
    proc = start_deploy()
    try:
        wait_paused()
        os.kill(int(pid), signal.SIGSTOP)
        resume()
        time.sleep(20)
    finally:
        os.kill(int(pid), signal.SIGCONT)
        resume()
    o.exits.append(finish(proc, timeout=400)[0])


APP_IMAGE = re.compile(r"(/zdd-sandbox/(?:server|property|identity|profile-server)):latest\b")


def pinned_tags(o: Outcome) -> Callable[[str], None]:
    """The host's compose file names the app images by a tag pinned in its .env
    (``image: …/server:${APP_TAG}``); returns ``pin(TAG)``. Undone, and deployed back to
    ``:latest``, by the outcome's cleanup."""
    compose, env = sb.STACK / "docker-compose.yaml", sb.STACK / ".env"
    before = compose.read_text()
    pinned = APP_IMAGE.sub(r"\1:${APP_TAG:-latest}", before)
    assert pinned != before, "the sandbox's compose file names no app image by :latest"
    compose.write_text(pinned)

    def undo() -> None:
        compose.write_text(before)
        env.unlink(missing_ok=True)
        sb.fab("deploy", "--no-verify", "--wait", timeout=400)

    o.cleanup.append(undo)
    return lambda tag: env.write_text(f"APP_TAG={tag}\n")


def rollback_pinned(o: Outcome) -> str:
    """Tags pinned in .env: deploy pin-a, then pin-b, then `fab rollback` returns to pin-a's
    images (before: "roll 0 of 4", a successful rollback that changed nothing). The converging
    deploy then moves forward to pin-b again."""
    pin = pinned_tags(o)
    first = sb.publish("--tag", "pin-a")
    pin("pin-a")
    o.exits.append(sb.fab("deploy", "--no-verify", "--wait", timeout=400).returncode)
    second = sb.publish("--tag", "pin-b")
    pin("pin-b")
    o.exits.append(sb.fab("deploy", "--no-verify", "--wait", timeout=400).returncode)
    res = sb.fab("rollback", "--no-verify", "--wait", timeout=400)
    o.exits.append(res.returncode)
    now = {svc: sorted({c.version for c in sb.containers(svc, all_states=True) if not is_job(c)}) for svc in sb.APPS}
    back = all(v == [first] for v in now.values())
    o.notes.append(f"rollback {'returned to' if back else 'did NOT return to'} {first} from {second}: {now}")
    if res.returncode != 0:
        o.notes.append((res.stdout + res.stderr).strip().splitlines()[-1][:200])
    return second


def lock_race(o: Outcome) -> None:
    """Two clients with one host name start at the same instant: exactly one proceeds."""
    a, b = start_deploy(), start_deploy(unshare=True)
    (ra, oa), (rb, ob) = finish(a), finish(b)
    o.exits += [ra, rb]
    proceeded = [r for r in (ra, rb) if r == 0]
    o.notes.append(f"{len(proceeded)} of 2 proceeded")
    if len(proceeded) != 1:
        o.notes.append("RACE: " + (oa + ob)[-300:])


def scenarios(tmp: Path) -> list[tuple[str, Callable[[], Outcome]]]:
    out: list[tuple[str, Callable[[], Outcome]]] = [
        ("two deploys back to back", lambda: under_load("two deploys back to back", tmp, back_to_back)),
        ("a compose run job through a deploy", lambda: under_load("a compose run job through a deploy", tmp, with_job)),
        ("~/.zdd on a full filesystem", lambda: under_load("~/.zdd on a full filesystem", tmp, full_disk)),
        ("dockerd hangs 20 s after start", lambda: under_load("dockerd hangs 20 s after start", tmp, docker_hangs)),
        (
            "rollback with tags pinned in .env",
            lambda: under_load("rollback with tags pinned in .env", tmp, rollback_pinned, publish=False),
        ),
        (
            "two clients, one host name, one instant",
            lambda: under_load("two clients, one host name, one instant", tmp, lock_race),
        ),
    ]
    for how in HOWS:
        name = f"{how} in a canary step"
        out.append((name, lambda name=name, how=how: under_load(name, tmp, canary_interrupted(how))))
    for point in POINTS:
        for how in HOWS:
            name = f"{how} at {point}"
            out.append(
                (name, lambda name=name, point=point, how=how: under_load(name, tmp, interrupted_at(point, how)))
            )
    return out
