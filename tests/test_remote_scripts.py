"""The host-side programs (fabfile/remote/*.sh) run by a real POSIX sh (dash) against a stub
`docker`, as their builders render them, and rendered commands checked by a real shell."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fabfile import command as command_mod
from fabfile import commands as cmds
from fabfile import journal
from fabfile.commands import TierService
from fabfile.config import HostConfig, ProxyConfig, RegistryConfig
from fabfile.plan import parse_survey
from fabfile.proxy import Routing
from fabfile.runner import CommandResult, Runner
from tests.fakes import PROXY_NETWORK, cid, dead_pid, sandbox_caddy_config

SH = shutil.which("dash") or "/bin/sh"
SLEEP = shutil.which("sleep") or "/bin/sleep"
OLD, NEW = cid("01d"), cid("2e3")  # full ids, as `docker compose ps --quiet` prints them
JOB = cid("j0b")  # a one-off `docker compose run` container
NEW_IP = "172.18.0.9"
RUN = "20250101-120000-77"  # the run a test's scripts write to the journal

# A `docker` that logs its arguments to $STUB/calls and answers from files in $STUB:
#   gone           every container is gone (inspect fails)
#   gone-ID        container ID is gone
#   images         what `docker image ls` prints
#   state          what `inspect` says of a new container's state (default: running healthy 0)
#   reload-fails   `caddy reload` in the proxy fails
#   reload-slow    `caddy reload` takes a second (and writes $STUB/reloading as it starts)
#   upstreams      what Caddy's admin API says of /reverse_proxy/upstreams
#   access.log     the canary's access log in the proxy container (`tail -c +N FILE` reads it)
#   up             written by `compose up`: from then on `compose ps` lists the new container too
#   oneoff-ID      container ID is a `docker compose run` job (label com.docker.compose.oneoff=True)
#   created-ID     when container ID was created (docker's RFC 3339; default 2099: after any tier)
#   job            `compose ps` and `ps` list a one-off job container too
#   loads          the configs loaded through `docker exec -i PROXY caddy reload --config /dev/stdin`
#   login          written by `login`: its DOCKER_CONFIG, then its stdin (the token), and "plugins"
#                  when that config has the user's cli-plugins; pull: the DOCKER_CONFIG `compose pull` had
DOCKER = f"""#!/bin/sh
d=$STUB
printf '%s\\n' "$*" >> "$d/calls"
case "$1" in
inspect)
    [ -e "$d/gone" ] || [ -e "$d/gone-$4" ] && {{ echo "Error: No such object: $4" >&2; exit 1; }}
    [ "$2" = --format ] || {{ echo '[]'; exit 0; }}
    case "$3" in
        *'"com.docker.compose.project"}}}}') echo app ;;
        *RestartCount*oneoff* | *oneoff*RestartCount*)  # tier.sh's poll: every container at once
            f=$3; shift 3; rc=0
            for id in "$@"; do
                short=$(printf '%s' "$id" | cut -c1-12)
                [ -e "$d/gone-$id" ] && {{ echo "Error: No such object: $id" >&2; rc=1; continue; }}
                if [ -e "$d/oneoff-$short" ]; then o=True; else o=False; fi
                if [ "$short" = {NEW[:12]} ]; then st=$(cat "$d/state" 2>/dev/null || echo "running healthy 0")
                else st="running healthy 0"; fi
                echo "$short server $o $st 2099-01-01T00:00:01.5Z 2099-01-01T00:00:02.25Z 2099-01-01T00:00:04Z"
            done
            exit "$rc" ;;
        *State.Status*) cat "$d/state" 2>/dev/null || echo "running healthy 0" ;;
        *Networks*) echo "{PROXY_NETWORK}={NEW_IP} " ;;
        *oneoff*Created*)
            if [ -e "$d/oneoff-$(printf '%s' "$4" | cut -c1-12)" ]; then o=True; else o=False; fi
            echo "$o $(cat "$d/created-$4" 2>/dev/null || echo 2099-01-01T00:00:00.123456789Z)" ;;
        *oneoff*)
            f=$3; shift 3
            for id in "$@"; do
                short=$(printf '%s' "$id" | cut -c1-12)
                if [ -e "$d/oneoff-$short" ]; then echo "$id True"; else echo "$id False"; fi
            done ;;
        *) echo . ;;
    esac ;;
ps) echo {OLD}; [ -e "$d/up" ] && echo {NEW}; [ -e "$d/job" ] && echo {JOB} ;;  # the project's, by label
exec)
    case "$*" in
        *"caddy reload"*)
            [ -e "$d/reload-fails" ] && {{ echo "Error: loading new config: bad"; exit 1; }}
            [ -e "$d/reload-slow" ] && {{ : > "$d/reloading"; sleep 1; }}
            [ "$2" = -i ] && cat >> "$d/loads"
            exit 0 ;;
        *wget*) cat "$d/upstreams" ;;
        *" tail -c "*) tail -c "$5" "$d/access.log" ;;
    esac ;;
compose)
    case "$*" in
        *" up "*) : > "$d/up" ;;
        *" ps "*--status*) ;;
        *" ps "*) echo {OLD}; [ -e "$d/up" ] && echo {NEW}; [ -e "$d/job" ] && echo {JOB} ;;
        *" config --format json"*) echo '{{"name": "app", "services": {{}}}}' ;;
        *" pull "*) printf '%s\\n' "${{DOCKER_CONFIG:-}}" > "$d/pull" ;;
    esac ;;
login)
    {{ printf '%s\\n' "${{DOCKER_CONFIG:-}}"; cat; echo
       [ -e "$DOCKER_CONFIG/cli-plugins" ] && echo plugins; }} > "$d/login" ;;
image)
    case "$2" in
        ls) cat "$d/images" 2>/dev/null ;;
        prune) printf 'Deleted Images:\nTotal reclaimed space: 42MB\n' ;;
    esac ;;
logs) echo "panic: boom" ;;
esac
exit 0
"""

# `sleep` leaves a mark, so a test knows when a script started waiting
SLEEP_MARK = f'#!/bin/sh\n: > "$STUB/slept"\nexec {SLEEP} "$@"\n'


class Host:
    """A fake host: HOME and the project directory under tmp_path, `sh` = dash, and the
    stub `docker` first on PATH."""

    def __init__(self, tmp_path: Path):
        self.home = tmp_path / "home"
        self.stub = tmp_path / "stub"
        bin_dir = tmp_path / "bin"
        for d in (self.home / "app", self.stub, bin_dir):
            d.mkdir(parents=True)
        for name, text in (("docker", DOCKER), ("sleep", SLEEP_MARK)):
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        (bin_dir / "sh").symlink_to(SH)
        self.env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", HOME=str(self.home), STUB=str(self.stub))
        self.config = HostConfig(
            name="t",
            dir="~/app",
            compose_files=("x.yaml",),
            engine="native",
            rollout=(("server",),),
            no_healthcheck_wait=0,
            proxy=ProxyConfig(drain_timeout=5),
        )
        self.key = project_key(self.home / "app")
        self.lock_dir = self.home / ".zdd" / "locks" / self.key
        self.journal_file = self.home / ".zdd" / "journal" / f"{self.key}.jsonl"

    def _argv(self, cmd: cmds.Command, stdin: str | None) -> tuple[list[str], str]:
        return [SH, "-c", cmd.render()], stdin if stdin is not None else (cmd.stdin.text if cmd.stdin else "")

    def run(self, cmd: cmds.Command, stdin: str | None = None, timeout: float = 20) -> subprocess.CompletedProcess:
        """Run the command as SSH would: its rendered text by a shell, in HOME."""
        argv, text = self._argv(cmd, stdin)
        return subprocess.run(
            argv, input=text, capture_output=True, text=True, env=self.env, cwd=self.home, timeout=timeout
        )

    def start(self, cmd: cmds.Command) -> subprocess.Popen:
        argv, text = self._argv(cmd, None)
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            cwd=self.home,
        )
        proc.stdin.write(text)
        proc.stdin.close()
        proc.stdin = None  # all sent: communicate() only reads
        return proc

    def set(self, name: str, text: str = "") -> None:
        (self.stub / name).write_text(text)

    def calls(self) -> list[str]:
        path = self.stub / "calls"
        return path.read_text().splitlines() if path.exists() else []

    def lock(self, action: str, holder: str = "", arg: int | str = "", *lines: str) -> subprocess.CompletedProcess:
        stale = 1800 if action == "acquire" else None
        return self.run(cmds.lock(self.key, action, holder, str(arg), lines, stale=stale))

    def holder(self) -> str | None:
        """Who holds the lock (its holder line), None when it is free."""
        return (self.lock_dir / "holder").read_text().strip() if self.lock_dir.exists() else None

    def journal(self) -> list[dict]:
        """The project's journal, one event per line."""
        if not self.journal_file.exists():
            return []
        return [json.loads(line) for line in self.journal_file.read_text().splitlines()]

    def write_journal(self, *events: dict) -> None:
        self.journal_file.parent.mkdir(parents=True, exist_ok=True)
        with self.journal_file.open("a") as f:
            f.writelines(journal.line(e) + "\n" for e in events)

    def hold_lock(self, holder: str, pid: int | None = None) -> None:
        """The lock as a deploy (holder only) or a restore job (holder and pid) leaves it."""
        self.lock_dir.mkdir(parents=True)
        (self.lock_dir / "holder").write_text(holder + "\n")
        if pid is not None:
            (self.lock_dir / "pid").write_text(f"{pid}\n")


def project_key(directory: Path, project: str = "") -> str:
    """The key survey.sh computes: the resolved directory and the compose project, as a file name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(directory.resolve()) + (f":{project}" if project else ""))


@pytest.fixture
def host(tmp_path) -> Host:
    return Host(tmp_path)


def eventually(check: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def sleeper() -> subprocess.Popen:
    """A live process to stand for a restore job."""
    return subprocess.Popen([SLEEP, "30"])


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(timeout=5)  # reaped: `kill -0` of a zombie would still succeed


# --- lock.sh -----------------------------------------------------------------------------------


def test_lock_acquire_unlock(host):
    assert host.holder() is None
    res = host.lock("acquire", "alice@laptop pid 7 deploy", 30)
    assert (res.returncode, res.stdout) == (0, "locked\n")
    assert (host.lock_dir / "holder").read_text() == "alice@laptop pid 7 deploy\n"
    assert host.lock("unlock").stdout == "released\n"
    assert not host.lock_dir.exists()
    assert host.lock("unlock").stdout == "released\n"  # unlocking a free lock is fine


@pytest.mark.parametrize(
    "argv", [("acquire", "k", "me", "0"), ("takeover", "k", "me"), ("unlock",), ("release", "k"), ("show", "k")]
)
def test_lock_refuses_missing_arguments_and_unknown_actions(host, argv):
    """STALE is required (its default is lock_stale in config.py); release and show are gone."""
    res = host.run(cmds.Command(("sh", "-c", command_mod.program("lock.sh"), "lock.sh", *argv)))
    assert res.returncode == 2 and res.stdout.startswith("usage: lock.sh acquire KEY HOLDER WAIT STALE")
    assert not (host.home / ".zdd" / "locks").exists() or not any((host.home / ".zdd" / "locks").iterdir())


def test_lock_held_by_a_deploy_fails_at_once_naming_it(host):
    host.lock("acquire", "alice@laptop pid 7 deploy", 0)
    t0 = time.monotonic()
    res = host.lock("acquire", "bob@desk pid 9 deploy", 60)
    assert (res.returncode, res.stdout) == (1, "locked by: alice@laptop pid 7 deploy\n")
    assert time.monotonic() - t0 < 30  # no waiting for a deploy (WAIT is for restore jobs)
    assert (host.lock_dir / "holder").read_text() == "alice@laptop pid 7 deploy\n"


def test_lock_of_a_deploy_that_stopped_renewing_it_is_taken_over(host):
    """A holder on another machine that went away: its lock is not renewed (tier.sh renews
    it while it works), and after STALE seconds it is taken over, with a note."""
    host.lock("acquire", "alice@laptop pid 7 deploy", 0)
    old = time.time() - 120
    os.utime(host.lock_dir / "renewed", (old, old))
    res = host.run(cmds.lock(host.key, "acquire", "bob@desk pid 9 deploy", "0", (), stale=60))
    assert res.returncode == 0, res.stdout
    assert res.stdout.startswith("took over the lock of alice@laptop pid 7 deploy, not renewed for 12")
    assert (host.lock_dir / "holder").read_text() == "bob@desk pid 9 deploy\n"
    # renewed recently: refused
    res = host.run(cmds.lock(host.key, "acquire", "carol pid 1 deploy", "0", (), stale=60))
    assert res.returncode == 1 and "locked by: bob@desk pid 9 deploy" in res.stdout


def test_lock_of_a_dead_job_is_taken_over(host):
    gone = dead_pid()
    host.hold_lock("restore job of yesterday", gone)
    res = host.lock("acquire", "bob", 30)
    assert res.returncode == 0
    note, locked = res.stdout.splitlines()
    assert note.startswith(f"took over the lock from job {gone}, which is gone (restore job of yesterday) (")
    assert locked == "locked"
    assert sorted(p.name for p in host.lock_dir.iterdir()) == ["holder", "renewed"]
    assert (host.lock_dir / "holder").read_text() == "bob\n"


def test_lock_of_a_live_job_is_waited_for_then_fails(host):
    job = sleeper()
    try:
        host.hold_lock("restore job 1", job.pid)
        res = host.lock("acquire", "bob", 1)
        assert res.returncode == 1
        assert res.stdout == "locked by: restore job 1 (still running after 1s)\n"
        assert (host.lock_dir / "pid").read_text() == f"{job.pid}\n"
    finally:
        stop(job)


def test_a_job_that_says_until_when_it_may_run_is_waited_for_that_long(host):
    """A job with a limit of its own (swarm's monitor job: Swarm's monitor window) is waited for
    until then, past lock.sh's usual wait, and no longer."""
    job = sleeper()
    try:
        host.hold_lock("swarm monitor job 1", job.pid)
        (host.lock_dir / "until").write_text(f"{int(time.time()) + 3}\n")
        t0 = time.monotonic()
        res = host.lock("acquire", "bob", 1)
        took = time.monotonic() - t0
        assert res.returncode == 1
        assert res.stdout.startswith("locked by: swarm monitor job 1 (still running after "), res.stdout
        assert 2 <= took < 8, took  # its 3 s, not the usual 1 s
    finally:
        stop(job)


@pytest.mark.parametrize("until", ["", "soon", "0", "99999999999"])
def test_a_job_limit_that_is_unreadable_past_or_beyond_a_day_is_the_usual_wait(host, until):
    job = sleeper()
    try:
        host.hold_lock("restore job 1", job.pid)
        (host.lock_dir / "until").write_text(until)
        t0 = time.monotonic()
        res = host.lock("acquire", "bob", 1)
        assert res.returncode == 1 and "still running after" in res.stdout
        assert time.monotonic() - t0 < 5
    finally:
        stop(job)


def test_lock_is_acquired_once_the_job_releases_it(host):
    job = sleeper()
    try:
        host.hold_lock("restore job 1", job.pid)
        waiting = host.start(cmds.lock(host.key, "acquire", "bob", "30", ('{"run": "b", "event": "start"}',), 1800))
        assert eventually(lambda: (host.stub / "slept").exists())  # it is waiting
        assert waiting.poll() is None and host.journal() == []  # its start line waits for the lock
        shutil.rmtree(host.lock_dir)  # the job ends as restore.sh does: lock removed, then exit
    finally:
        stop(job)
    out, _ = waiting.communicate(timeout=10)
    assert waiting.returncode == 0
    note, locked = out.splitlines()
    assert note.startswith(f"waited for the previous deploy's job {job.pid} (")
    assert locked == "locked"
    assert (host.lock_dir / "holder").read_text() == "bob\n"
    assert host.journal() == [{"run": "b", "event": "start"}]


START = '{"run": "b", "event": "start"}'


def test_lock_acquire_writes_its_journal_line_only_once_held(host):
    host.lock("acquire", "alice", 0)
    res = host.lock("acquire", "bob", 0, START)
    assert (res.returncode, res.stdout) == (1, "locked by: alice\n")
    assert host.journal() == []  # refused: nothing written
    host.lock("unlock")
    res = host.lock("acquire", "bob", 0, START)
    assert (res.returncode, res.stdout) == (0, "locked\n")
    assert host.journal() == [json.loads(START)]


def test_lock_takeover_replaces_only_the_expected_holder(host):
    host.hold_lock("alice pid 7")
    res = host.lock("takeover", "bob pid 9", "alice pid 7", START)
    assert (res.returncode, res.stdout) == (0, "locked\n")
    assert (host.lock_dir / "holder").read_text() == "bob pid 9\n"
    assert host.journal() == [json.loads(START)]


@pytest.mark.parametrize("job", [None, 4242], ids=["holder changed", "a restore job"])
def test_lock_takeover_refuses_when_the_lock_changed_meanwhile(host, job):
    host.hold_lock("carol pid 8" if job is None else "alice pid 7", job)
    res = host.lock("takeover", "bob pid 9", "alice pid 7", START)
    holder = (host.lock_dir / "holder").read_text().strip()
    assert (res.returncode, res.stdout) == (1, f"locked by: {holder} (changed meanwhile)\n")
    assert holder != "bob pid 9" and host.journal() == []


def test_unlock_releases_whoever_holds_it(host):
    host.hold_lock("restore job 5", dead_pid())
    res = host.lock("unlock", "", "", '{"run": "u", "event": "unlock"}')
    assert (res.returncode, res.stdout) == (0, "released\n")
    assert not host.lock_dir.exists() and host.journal() == [{"run": "u", "event": "unlock"}]


def test_unlock_leaves_a_lock_its_live_restore_job_holds(host):
    """The restore job frees the lock once the old containers are gone: unlock must not let the
    next deploy in while it still works."""
    job = sleeper()
    try:
        host.hold_lock("restore job", job.pid)
        res = host.lock("unlock", "", "", '{"run": "u", "event": "unlock"}')
        assert res.returncode == 1 and res.stdout.startswith(f"not released: the restore job {job.pid} of the last")
        assert host.lock_dir.exists() and host.journal() == []
    finally:
        job.kill()


# --- restore.sh --------------------------------------------------------------------------------


def restore(host: Host, detach: bool, timeout: int = 20) -> cmds.Command:
    return cmds.restore(host.config, host.key, "cad", [OLD[:12]], detach, timeout)


RELOAD = "exec cad caddy reload --config /etc/caddy/Caddyfile --adapter caddyfile --force"


def test_restore_waits_for_the_old_containers_then_reloads(host):
    host.lock("acquire", "alice", 0)
    host.set("gone")
    res = host.run(restore(host, detach=False))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith("restored /etc/caddy/Caddyfile after ")
    assert host.calls() == [f"inspect --format . {OLD[:12]}", RELOAD]
    assert host.lock_dir.exists()  # in the foreground, the deploy releases its lock itself


def test_restore_removes_the_access_log_of_zdds_configs_once_reloaded(host):
    host.set("gone")
    res = host.run(cmds.restore(host.config, host.key, "cad", [OLD[:12]], False, 20, "/tmp/zdd-r.log"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert host.calls()[-2:] == [RELOAD, "exec cad rm -f /tmp/zdd-r.log"]


def test_restore_reports_a_failed_reload(host):
    host.set("gone")
    host.set("reload-fails")
    res = host.run(cmds.restore(host.config, host.key, "cad", [OLD[:12]], False, 20, "/tmp/zdd-r.log"))
    assert (res.returncode, res.stdout) == (
        1,
        "reload of /etc/caddy/Caddyfile failed: Error: loading new config: bad\n",
    )
    assert not any(" rm " in c for c in host.calls())  # the config that writes it may still run


def test_restore_gives_up_while_old_containers_are_still_there(host):
    res = host.run(restore(host, detach=False, timeout=1))
    assert res.returncode == 2
    assert "still there after" in res.stdout and OLD[:12] in res.stdout
    assert res.stdout.rstrip().endswith("the proxy stays on container addresses")
    assert RELOAD not in host.calls()


def test_restore_detached_job_takes_the_lock_over_and_releases_it(host):
    host.lock("acquire", "alice", 0)
    try:
        res = host.run(restore(host, detach=True), timeout=5)
        assert res.returncode == 0
        assert res.stdout.startswith("restore queued (job ")
        job = res.stdout.split("(job ", 1)[1].split(")", 1)[0]
        pid_file = host.lock_dir / "pid"
        assert eventually(lambda: pid_file.exists() and pid_file.read_text().strip() == job)
        assert eventually(lambda: (host.holder() or "").startswith(f"restore job {job} on "))
        assert host.lock_dir.exists()  # still waiting for the old container
    finally:
        host.set("gone")
    assert eventually(lambda: not host.lock_dir.exists())
    log = host.home / ".zdd" / "jobs" / "restore.log"
    assert eventually(lambda: log.exists() and log.read_text().startswith("restored /etc/caddy/Caddyfile after "))
    assert RELOAD in host.calls()


# --- tier.sh -----------------------------------------------------------------------------------


def tier(host: Host, held: tuple[str, ...] = ()) -> cmds.Command:
    return cmds.tier(
        host.config,
        False,
        "cad",
        [TierService("server", 1, 5, None, (OLD[:12],), held)],
        (PROXY_NETWORK,),
        host.key,
        RUN,
    )


def lines(res: subprocess.CompletedProcess) -> list[str]:
    """What tier.sh printed after its pid, progress and the timeline (mark, container) left out."""
    out = res.stdout.splitlines()
    assert out and out[0].startswith("pid "), res.stdout
    return [line for line in out[1:] if not line.startswith(("progress ", "mark ", "container "))]


def test_tier_without_a_pin_line_fails(host):
    res = host.run(tier(host), stdin="")
    assert (res.returncode, lines(res)) == (1, ["failed no pin line from zdd"])
    assert host.calls() == []


def test_tier_happy_path_without_proxy_routing(host):
    res = host.run(tier(host), stdin="nopin\ngo\n")
    assert res.returncode == 0, res.stdout + res.stderr
    out = lines(res)
    assert [line.split()[0] for line in out] == ["pinned", "new", "healthy", "switched", "drained", "retired"]
    assert out[1].split() == ["new", "server", NEW[:12], f"{PROXY_NETWORK}={NEW_IP}"]
    assert out[4] == "drained nothing to drain at the proxy"
    assert "compose -f x.yaml up --detach --no-deps --no-recreate --scale server=2 server" in host.calls()
    assert not any("caddy reload" in c for c in host.calls())
    # the old container is stopped and removed in the background
    assert eventually(lambda: f"rm {OLD[:12]}" in host.calls())
    assert f"stop {OLD[:12]}" in host.calls()
    assert not any(NEW[:12] in c and c.startswith(("stop", "rm")) for c in host.calls())


def test_tier_marks_its_timeline_and_looks_at_all_containers_at_once(host):
    """The host's clock at each point of the tier, before the line zdd waits for (``retired``
    ends zdd's reading), and each new container's own times from one `docker inspect`; the
    health wait reads every container with one `docker ps` and one `docker inspect` a round,
    never `docker compose ps` (a fraction of its cost) once the project is known."""
    res = host.run(tier(host), stdin="nopin\ngo\n")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout.splitlines()
    marks = [line.split() for line in out if line.startswith("mark ")]
    assert [m[2] for m in marks] == [
        "begin",
        "pinned",
        "up",
        "up-done",
        "ready",
        "switch",
        "switched",
        "drained",
        "retired",
    ]
    times = [float(m[1]) for m in marks]
    assert times == sorted(times) and abs(times[0] - time.time()) < 60
    assert out.index(next(line for line in out if line.endswith(" retired"))) < out.index("retired")
    assert [line for line in out if line.startswith("container ")] == [
        f"container server {NEW[:12]} 2099-01-01T00:00:01.5Z 2099-01-01T00:00:02.25Z 2099-01-01T00:00:04Z"
    ]
    calls = host.calls()
    assert not any(c.startswith("compose -f x.yaml ps") for c in calls), calls
    polls = [c for c in calls if c.startswith("inspect") and "RestartCount" in c]
    assert polls and all(c.endswith((f"{OLD} {NEW}", f" {NEW[:12]}")) for c in polls[1:]), polls
    assert 0 < len([c for c in calls if c.startswith("ps ")]) <= len(polls)


def test_tier_pins_switches_and_drains_at_the_proxy(host):
    routing = Routing(sandbox_caddy_config(), (PROXY_NETWORK,))
    held = routing.held_for("server", ["172.18.0.5"])
    routing.route("server", ["172.18.0.5"], held)
    pin = routing.load_line("pin")
    routing.route("server", [NEW_IP], held)
    switch = routing.load_line("switch")
    host.set(
        "upstreams",
        '[{"address": "server:8080", "num_requests": 0, "fails": 0},'
        '{"address": "172.18.0.5:8080", "num_requests": 0, "fails": 0}]',
    )
    res = host.run(tier(host, tuple(held)), stdin=f"{pin}\n{switch}\n")
    assert res.returncode == 0, res.stdout + res.stderr
    out = lines(res)
    assert out[3] == "switched"
    assert out[4].startswith("drained after ") and out[4].endswith("s, 0 in flight at most")
    assert out[5] == "retired"
    assert (host.stub / "loads").read_text().splitlines() == [pin[len("pin ") :], switch[len("switch ") :]]
    assert host.calls().count("exec -i cad caddy reload --config /dev/stdin --force") == 2
    assert "exec cad wget -q -O - http://localhost:2019/reverse_proxy/upstreams" in host.calls()


def access(addr: str, status: int, seconds: float = 0.004) -> str:
    """One line of a canary's access log, as Caddy writes it (abridged)."""
    return json.dumps(
        {
            "level": "info",
            "logger": "http.log.access",
            "request": {"uri": "/x"},
            "duration": seconds,
            "status": status,
            "zdd_upstream": addr,
        },
        separators=(",", ":"),
    )


def canary_lines(routing: Routing, new_addr: str) -> tuple[str, str, str]:
    """zdd's lines before a canary step: where it logs, the way back, the step's weights."""
    back = routing.load_line("back", routing.config(hold=[new_addr]))
    routing.log = "/tmp/c.log"
    weigh = routing.load_line("weigh 10", routing.config({"server": ([NEW_IP], 10)}))
    return f"canary /tmp/c.log zdd_upstream {new_addr}", back, weigh


def test_tier_canary_step_loads_the_weights_and_counts_the_proxys_log_per_upstream(host):
    routing = Routing(sandbox_caddy_config(), (PROXY_NETWORK,))
    held = routing.held_for("server", ["172.18.0.5"])
    routing.route("server", ["172.18.0.5"], held)
    pin = routing.load_line("pin")
    new_addr = f"{NEW_IP}:8080"
    canary, back, weigh = canary_lines(routing, new_addr)
    routing.route("server", [NEW_IP], held)
    switch = routing.load_line("switch")
    host.set(
        "access.log",
        "\n".join([access(new_addr, 200), access(new_addr, 502, 0.3), access("172.18.0.5:8080", 200)] * 2)
        + "\n"
        + access(new_addr, 500)[:40],  # a line the proxy is still writing: not counted yet
    )
    host.set(
        "upstreams",
        '[{"address": "server:8080", "num_requests": 0}, {"address": "172.18.0.5:8080", "num_requests": 0}]',
    )
    res = host.run(
        tier(host, tuple(held)), stdin="\n".join([pin, canary, back, weigh, "stats", "stats", switch]) + "\n"
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = lines(res)
    stats = [f"stats {new_addr} 4 2 2 0 0 0 0 0 2 0 0 0 0 0", "stats 172.18.0.5:8080 2 0 2 0 0 0 0 0 0 0 0 0 0 0"]
    i = out.index("weighted 10")
    assert sorted(out[i + 1 : i + 3]) == sorted(stats) and out[i + 3] == "stats-end"
    assert sorted(out[i + 4 : i + 6]) == sorted(stats) and out[i + 6] == "stats-end"  # nothing new: the same
    assert out[i + 7] == "switched"
    loads = (host.stub / "loads").read_text().splitlines()
    assert loads == [pin[len("pin ") :], weigh[len("weigh 10 ") :], switch[len("switch ") :]]
    events = [
        json.loads(line) for line in (host.home / ".zdd" / "journal" / f"{host.key}.jsonl").read_text().splitlines()
    ]
    assert {"event": "canary", "percent": "10"}.items() <= next(e for e in events if e["event"] == "canary").items()
    assert not any(NEW[:12] in c and c.startswith(("stop", "rm")) for c in host.calls())


@pytest.mark.parametrize("end", ["abort\n", ""])  # zdd aborts (a breach), or its connection is gone
def test_tier_after_a_canary_step_goes_back_to_the_old_containers_before_removing_the_new(host, end):
    routing = Routing(sandbox_caddy_config(), (PROXY_NETWORK,))
    held = routing.held_for("server", ["172.18.0.5"])
    routing.route("server", ["172.18.0.5"], held)
    new_addr = f"{NEW_IP}:8080"
    canary, back, weigh = canary_lines(routing, new_addr)
    host.set("upstreams", f'[{{"address": "{new_addr}", "num_requests": 0}}]')
    breach = json.dumps({"run": RUN, "event": "canary-breach", "service": "server", "reason": "5 of 20 failed"})
    stdin = "\n".join(["nopin", canary, back, weigh, "journal " + breach]) + "\n" + end
    res = host.run(tier(host, tuple(held)), stdin=stdin)
    assert res.returncode == 3, res.stdout + res.stderr
    out = lines(res)
    assert out[-2].startswith("note the canary's traffic is back on the old containers; the new ones drained after ")
    assert out[-1] == "failed aborted before the switch: new containers removed"
    loads = (host.stub / "loads").read_text().splitlines()
    assert loads == [weigh[len("weigh 10 ") :], back[len("back ") :]]  # the way back before the removal
    calls = host.calls()
    assert calls.index("exec cad wget -q -O - http://localhost:2019/reverse_proxy/upstreams") < calls.index(
        f"rm --force {NEW[:12]}"
    )
    journal = (host.home / ".zdd" / "journal" / f"{host.key}.jsonl").read_text()
    assert '"event": "canary-breach"' in journal and '"event": "undone"' in journal


def watched_tier(host: Host, after: list[str]) -> tuple[subprocess.CompletedProcess, list[str], str, str]:
    """A tier switched with a watch, then zdd's ``after`` lines; its output, the loads, pin and switch."""
    routing = Routing(sandbox_caddy_config(), (PROXY_NETWORK,), log="/tmp/c.log")
    held = routing.held_for("server", ["172.18.0.5"])
    routing.route("server", ["172.18.0.5"], held)
    pin = routing.load_line("pin")
    routing.route("server", [NEW_IP], held)
    routing.logged.append("server")
    switch = routing.load_line("switch")
    host.set(
        "upstreams",
        f'[{{"address": "server:8080", "num_requests": 0}}, {{"address": "172.18.0.5:8080", "num_requests": 0}},'
        f'{{"address": "{NEW_IP}:8080", "num_requests": 0}}]',
    )
    host.set("access.log", access(f"{NEW_IP}:8080", 500) + "\n")
    lines_in = [pin, f"canary /tmp/c.log zdd_upstream {NEW_IP}:8080", "watch", switch, *after]
    res = host.run(tier(host, tuple(held)), stdin="\n".join(lines_in) + "\n")
    loads = (host.stub / "loads").read_text().splitlines()
    return res, loads, pin[len("pin ") :], switch[len("switch ") :]


def journal_tiers(host: Host) -> list[journal.Tier]:
    text = (host.home / ".zdd" / "journal" / f"{host.key}.jsonl").read_text()
    return journal.parse(json.dumps({"run": RUN, "event": "start"}) + "\n" + text)[0].tiers


def test_a_watched_tier_holds_its_old_containers_then_goes_back_to_them_on_return(host):
    ret = "return " + json.dumps({"apps": {}})
    res, loads, pin, switch = watched_tier(host, ["stats", ret])
    assert res.returncode == 0, res.stdout + res.stderr
    out = lines(res)
    i = out.index("watching")
    assert out[i - 1] == "switched"  # judged at once: no drain of the old ones, which may serve again
    assert out[i + 1 : i + 3] == [f"stats {NEW_IP}:8080 1 1 1 0 0 0 0 0 0 0 0 0 0 0", "stats-end"]
    assert out[i + 3] == "returning" and out[-1].startswith("returned: the new containers drained after ")
    assert loads == [pin, switch, '{"apps": {}}']
    calls = host.calls()
    assert f"rm --force {NEW[:12]}" in calls and not any(OLD[:12] in c and c.startswith(("stop", "rm")) for c in calls)
    (t,) = journal_tiers(host)
    assert (t.switched, t.undone, t.retired) == (False, True, False)  # the next run sees a tier undone


@pytest.mark.parametrize("after", [["retire"], []])  # zdd's clean watch, or zdd gone
def test_a_watched_tier_retires_its_old_containers_after_the_watch(host, after):
    res, loads, pin, switch = watched_tier(host, after)
    assert res.returncode == 0, res.stdout + res.stderr
    out = lines(res)
    assert out[-3] == "watching" and out[-2].startswith("drained after ") and out[-1] == "retired"
    assert eventually(lambda: f"rm {OLD[:12]}" in host.calls())
    assert not any(NEW[:12] in c and c.startswith(("stop", "rm")) for c in host.calls())


def test_tier_drain_leaves_long_lived_streams_to_the_stop(host):
    """Websockets stay in flight: once the count stops falling for stream_grace, the drain ends
    (the old containers' stop closes them) instead of sitting out drain_timeout."""
    host.config = dataclasses.replace(host.config, proxy=ProxyConfig(drain_timeout=30, stream_grace=1))
    host.set("upstreams", '[{"address": "server:8080", "num_requests": 3, "fails": 0}]')
    t0 = time.monotonic()
    res = host.run(tier(host, ("server:8080",)), stdin="nopin\nswitch {}\n")
    assert res.returncode == 0, res.stdout + res.stderr
    drained = next(line for line in lines(res) if line.startswith("drained "))
    assert (
        drained.startswith("drained after ")
        and "3 in flight at most; 3 long-lived left to the stop: server:8080=3" in drained
    )
    assert time.monotonic() - t0 < 10  # not the 30 s drain timeout
    assert eventually(lambda: f"stop {OLD[:12]}" in host.calls())


def test_tier_waits_out_a_passing_unhealthy_verdict_but_not_a_lasting_one(host):
    """A container starved of CPU while its tier boots may miss a few checks (Docker says
    unhealthy) and pass the next: the tier goes on. One still unhealthy after the grace fails."""
    host.set("state", "running unhealthy 0\n")
    timer = threading.Timer(2.0, lambda: host.set("state", "running healthy 0\n"))
    timer.start()
    try:
        res = host.run(tier(host), stdin="nopin\ngo\n")
    finally:
        timer.cancel()
    assert res.returncode == 0, res.stdout + res.stderr
    assert [line.split()[0] for line in lines(res)][:3] == ["pinned", "new", "healthy"]
    host.set("state", "running unhealthy 0\n")
    t0 = time.monotonic()
    slow = cmds.tier(  # a health timeout well past the grace
        host.config,
        False,
        "cad",
        [TierService("server", 1, 30, None, (OLD[:12],), ())],
        (PROXY_NETWORK,),
        host.key,
        RUN,
    )
    res = host.run(slow, stdin="nopin\ngo\n")
    assert res.returncode == 1 and "=running/unhealthy" in res.stdout.splitlines()[-1], res.stdout
    assert 4 <= time.monotonic() - t0 < 15  # the grace (5 s, counted in whole seconds), not the timeout


@pytest.mark.parametrize(
    "state, stdin, rc, last",
    [
        ("exited none 0", "nopin\n", 1, f"failed not healthy: server:{NEW[:12]}=exited/none"),
        ("running unhealthy 0", "nopin\n", 1, f"failed not healthy: server:{NEW[:12]}=running/unhealthy"),
        ("running healthy 0", "nopin\n", 3, "failed aborted before the switch: new containers removed"),
        ("running healthy 0", "nopin\nabort\n", 3, "failed aborted before the switch: new containers removed"),
    ],
)
def test_tier_failure_before_the_switch_removes_the_new_containers(host, state, stdin, rc, last):
    host.set("state", state + "\n")
    res = host.run(tier(host), stdin=stdin)
    assert res.returncode == rc, res.stdout + res.stderr
    assert res.stdout.splitlines()[-1] == last
    assert f"rm --force {NEW[:12]}" in host.calls()
    assert not any(OLD[:12] in c and c.startswith(("stop", "rm")) for c in host.calls())
    if rc == 1:
        assert f"detail-log {NEW[:12]} panic: boom" in res.stdout


def test_tier_that_cannot_pin_starts_nothing(host):
    host.set("reload-fails")
    res = host.run(tier(host), stdin="pin {}\n")
    assert res.returncode == 1
    assert lines(res) == [
        "load-error Error: loading new config: bad",
        "failed cannot pin the proxy to the old containers",
    ]
    assert not any(" up " in c for c in host.calls())


def test_tier_first_says_its_pid_and_undoes_on_sigterm_before_the_switch(host):
    """compose_rollout.py signals that pid on Ctrl-C: tier.sh removes the new containers and ends."""
    proc = subprocess.Popen(
        host._argv(tier(host), None)[0],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=host.env,
        cwd=host.home,
    )
    pid = proc.stdout.readline().split()
    assert pid[0] == "pid"
    proc.stdin.write("nopin\n")
    proc.stdin.flush()
    while "healthy" not in (line := proc.stdout.readline()) and line:
        pass
    os.kill(int(pid[1]), signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 3 and "failed interrupted: new containers removed" in out
    assert f"rm --force {NEW[:12]}" in host.calls()


def test_tier_writes_its_events_and_zdds_lines_to_the_journal(host):
    plan = journal.line({"run": RUN, "t": 1, "event": "plan", "services": {}})
    res = host.run(tier(host), stdin=f"journal {plan}\nnopin\ngo\n")
    assert res.returncode == 0, res.stdout + res.stderr
    pid = res.stdout.split()[1]
    events = host.journal()
    assert [e["event"] for e in events] == ["tier", "plan", "new", "switched", "retired"]
    assert events[1] == json.loads(plan)  # as zdd sent it
    assert all(e["run"] == RUN and e["pid"] == int(pid) for e in events if e["event"] != "plan")
    assert (events[0]["services"], events[0]["old"], events[2]["ids"]) == ("server", OLD[:12], NEW[:12])
    [run] = journal.parse(journal.line({"run": RUN, "event": "start"}) + "\n" + host.journal_file.read_text())
    assert [(t.pid, t.services, t.old, t.switched, t.retired) for t in run.tiers] == [
        (pid, ["server"], [OLD[:12]], True, True)
    ]


def test_tier_with_docker_rollout_journals_every_event_under_its_run(host):
    host.set("up")  # docker rollout (the stub) started the new container
    cmd = cmds.tier(
        host.config, True, "cad", [TierService("server", 1, 5, None, (OLD[:12],), ())], (PROXY_NETWORK,), host.key, RUN
    )
    res = host.run(cmd, stdin="nopin\ngo\n")
    assert res.returncode == 0, res.stdout + res.stderr
    assert any(c.startswith("rollout -f x.yaml ") for c in host.calls())
    assert [(e["run"], e["event"]) for e in host.journal()] == [
        (RUN, "tier"),
        (RUN, "new"),
        (RUN, "switched"),
        (RUN, "retired"),
    ]


def test_tier_undone_is_journaled(host):
    res = host.run(tier(host), stdin="nopin\nabort\n")
    assert res.returncode == 3
    assert [e["event"] for e in host.journal()] == ["tier", "new", "undone"]


# --- rendering -----------------------------------------------------------------------------------


def test_rendered_commands_reach_a_real_shell_as_the_same_words():
    nasty = ["it's", 'a "b"', "$HOME", "; rm -rf /", "`id`", "tab\there", "new\nline", "*"]
    rendered = cmds.Command(("printf", "%s\\0", *nasty)).render()
    out = subprocess.run([SH, "-c", rendered], capture_output=True, check=True).stdout
    assert out.decode().split("\0")[:-1] == nasty
    home = subprocess.run(
        [SH, "-c", cmds.Command(("pwd",), cwd="~").render()],
        capture_output=True,
        text=True,
        env=dict(os.environ, HOME="/tmp"),
    ).stdout.strip()
    assert home == "/tmp"


def test_host_program_gets_its_name_and_args(host):
    text = cmds.host_program("plugin_version.sh", "v0.13", "ab" * 32, cwd="~/app")
    res = host.run(text)
    assert (res.returncode, res.stdout) == (1, "not installed\n")  # ran, with $1 and $2 as given


H_PULL = HostConfig(name="h", registry=RegistryConfig(server="ghcr.io", password_env="GH_PACKAGES_TOKEN"))


def test_stdin_secret_is_not_in_repr():
    c = cmds.pull(H_PULL, ["server"], ("ghcr.io", "bot", "s3cr3t-token", "GH_PACKAGES_TOKEN"), 900)
    assert "s3cr3t-token" not in repr(c) and "s3cr3t-token" not in c.describe() and "s3cr3t-token" not in c.render()
    assert c.stdin.text == "s3cr3t-token"


# --- pull.sh: log in (to a temporary config), pull, list --------------------------------------------


def pull(host: Host, keep_login: bool = False, credentials: bool = True) -> subprocess.CompletedProcess:
    host.config = dataclasses.replace(host.config, registry=RegistryConfig(server="reg.test", keep_login=keep_login))
    host.set("images", "reg.test/server:latest sha256:aa\n")
    res = host.run(
        cmds.pull(host.config, ["server"], ("reg.test", "bot", "t0k3n", "X") if credentials else None, limit=30)
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def test_pull_logs_in_to_a_temporary_config_then_removes_it(host):
    (host.home / ".docker" / "cli-plugins").mkdir(parents=True)
    res = pull(host)
    assert res.stdout == "logged in to reg.test (temporary config)\nreg.test/server:latest sha256:aa\n"
    config, token, plugins = (host.stub / "login").read_text().splitlines()
    assert (token, plugins) == ("t0k3n", "plugins")  # the token on stdin; the user's docker-rollout at hand
    assert config and config != str(host.home / ".docker") and not Path(config).exists()  # removed
    assert (host.stub / "pull").read_text() == config + "\n"  # the pull used that login
    assert host.calls() == [
        "login --username bot --password-stdin reg.test",
        "compose -f x.yaml pull --quiet server",
        "image ls --no-trunc --format {{.Repository}}:{{.Tag}} {{.ID}}",
    ]


def test_pull_keeps_the_login_when_asked_and_logs_in_to_nothing_without_a_registry(host):
    res = pull(host, keep_login=True)
    assert res.stdout.splitlines()[0] == "logged in to reg.test"
    assert (host.stub / "login").read_text().splitlines()[:2] == [str(host.home / ".docker"), "t0k3n"]
    (host.stub / "login").unlink()
    res = pull(host, credentials=False)
    assert res.stdout == "reg.test/server:latest sha256:aa\n"
    assert not (host.stub / "login").exists() and (host.stub / "pull").read_text() == "\n"


# --- survey.sh: the key, the lock, the last run's journal -------------------------------------------


def test_survey_prints_the_key_the_lock_holder_and_the_recent_runs(host):
    host.config = dataclasses.replace(host.config, project_name="remi")
    host.key = project_key(host.home / "app", "remi")
    host.lock_dir = host.home / ".zdd" / "locks" / host.key
    host.journal_file = host.home / ".zdd" / "journal" / f"{host.key}.jsonl"
    host.hold_lock("alice@laptop pid 7 deploy since noon")
    first = [{"run": "r1", "event": "start"}, {"run": "r1", "event": "end", "result": "ok"}]
    last = [{"run": "r2", "event": "start"}, {"run": "r2", "event": "tier", "pid": 9, "services": "server"}]
    host.write_journal(*first, *last)
    res = host.run(cmds.survey(host.config))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith(f"=== key 0\n{host.key}\n=== lock 0\nalice@laptop pid 7 deploy since noon\n")
    assert host.key.endswith("_home_app_remi") and "/" not in host.key
    state = parse_survey(res.stdout, "caddy")
    assert (state.key, state.lock_holder) == (host.key, "alice@laptop pid 7 deploy since noon")
    assert [json.loads(line) for line in state.journal.splitlines()] == [*first, *last]  # all recent lines


def test_survey_of_a_free_project_without_a_journal(host):
    res = host.run(cmds.survey(host.config))
    state = parse_survey(res.stdout, "caddy")
    assert (state.key, state.lock_holder, state.journal) == (host.key, "", "")


# --- finish.sh: journal, keep tags, prune, release ----------------------------------------------------


def keep_repo(key: str) -> str:
    """finish.sh's repository for a project's keep tags."""
    crc = subprocess.run(["cksum"], input=key, capture_output=True, text=True, check=True).stdout.split()[0]
    return f"zdd-keep/p{crc}"


def finish(
    host: Host,
    holder: str = "",
    prune: bool = False,
    keep: int = 3,
    run: str = "",
    images: dict[str, str] | None = None,
    *lines: str,
) -> subprocess.CompletedProcess:
    res = host.run(cmds.finish(host.key, holder, prune, keep, run, images or {}, lines))
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def test_finish_journals_tags_trims_to_keep_prunes_and_releases(host):
    repo = keep_repo(host.key)
    runs = ["20250101-000000-1", "20250102-000000-2", "20250103-000000-3", RUN.replace("2025", "2026")]
    listed = [
        f"{repo}-server:{runs[0]}",
        f"{repo}-server:{runs[1]}",
        f"{repo}-property:{runs[1]}",
        f"{repo}-server:{runs[2]}",
        f"{repo}-server:{runs[3]}",
        f"{repo}-profile-server:{runs[3]}",
        f"zdd-keep/p1-server:{runs[0]}",
        "redis:latest",
    ]
    host.set("images", "\n".join(listed) + "\n")
    host.lock("acquire", "alice", 0)
    end = journal.line({"run": runs[3], "event": "end", "result": "ok"})
    res = finish(host, "alice", True, 2, runs[3], {"server": "sha256:aa", "profile-server": "sha256:bb"}, end)
    assert res.stdout.splitlines() == [
        "kept the images of the last 2 runs",
        "Total reclaimed space: 42MB",
        "released the lock",
    ]
    calls = host.calls()
    assert sorted(calls[:2]) == [  # the services' tags run side by side
        f"tag sha256:aa {repo}-server:{runs[3]}",
        f"tag sha256:bb {repo}-profile-server:{runs[3]}",
    ]
    assert calls[2:] == [
        "image ls --format {{.Repository}}:{{.Tag}}",
        f"rmi {repo}-server:{runs[1]} {repo}-property:{runs[1]} {repo}-server:{runs[0]}",  # beyond the 2 newest
        "image prune --force",
    ]
    assert host.journal() == [json.loads(end)] and not host.lock_dir.exists()


@pytest.mark.parametrize("holder", ["", "bob"])
def test_finish_leaves_anothers_lock_and_prunes_only_when_asked(host, holder):
    host.lock("acquire", "alice", 0)
    res = finish(host, holder, False, 3, "", {}, '{"run": "x", "event": "end"}')
    assert res.stdout == ""
    assert host.calls() == []  # no run: no keep tags; no prune
    assert (host.lock_dir / "holder").read_text() == "alice\n"
    assert host.journal() == [{"run": "x", "event": "end"}]


# --- recover.sh: finish or undo an interrupted run's tiers -------------------------------------------


def recover(host: Host, *tiers: tuple) -> subprocess.CompletedProcess:
    """recover.sh for these tiers: (pid, switched, services, old[, new, since])."""
    full = [(*t, [], 0) if len(t) == 4 else t for t in tiers]
    res = host.run(cmds.recover(host.config, host.key, RUN, full))
    assert res.returncode == 0, res.stdout + res.stderr
    end = host.journal()[-1]
    assert (end["run"], end["event"], end["result"]) == (RUN, "end", "interrupted")
    return res


def test_recover_dead_tiers_removes_the_new_or_the_old_containers(host):
    host.set("up")  # compose ps lists the old and the new container
    host.set(f"gone-{'b' * 12}")
    res = recover(
        host,
        (str(dead_pid()), False, ["server"], [OLD[:12]]),
        (str(dead_pid()), True, ["identity", "property"], ["a" * 12, "b" * 12]),
    )
    assert res.stdout.splitlines() == [
        f"recovered server: removed the new containers: {NEW[:12]}",
        f"recovered identity,property: stopped the old containers, out of rotation since the switch: {'a' * 12}",
    ]
    calls = host.calls()
    assert "compose -f x.yaml ps --all --quiet server" in calls and f"rm --force {NEW[:12]}" in calls
    assert f"stop {'a' * 12}" in calls and f"rm {'a' * 12}" in calls
    assert not any(c.startswith(("stop", "rm")) and (OLD[:12] in c or "b" * 12 in c) for c in calls)


def test_recover_journals_each_tier_it_finished_and_keeps_the_result_of_a_run_that_ended(host):
    """A run whose client wrote its end (its connection dropped as a tier switched): the tier is
    journaled retired (so no later run recovers it again), and the run keeps its own result."""
    ended = json.dumps({"run": RUN, "t": 1, "event": "end", "result": "failed"})
    (host.home / ".zdd" / "journal").mkdir(parents=True, exist_ok=True)
    (host.home / ".zdd" / "journal" / f"{host.key}.jsonl").write_text(ended + "\n")
    pid = str(dead_pid())
    res = host.run(cmds.recover(host.config, host.key, RUN, [(pid, True, ["identity"], ["a" * 12], [], 0)]))
    assert res.returncode == 0, res.stdout + res.stderr
    events = host.journal()
    assert [(e["event"], str(e.get("pid"))) for e in events] == [("end", "None"), ("retired", pid)]
    assert journal.parse(json.dumps({"run": RUN, "event": "start"}) + "\n" + "\n".join(map(json.dumps, events)))[
        0
    ].end == {"run": RUN, "t": 1, "event": "end", "result": "failed"}


DUMMY_TIER = {
    False: 'trap "exit 0" TERM; while :; do sleep 0.1; done',  # stopped by SIGTERM
    True: 'trap "" TERM; i=0; while [ $i -lt 5 ]; do sleep 0.1; i=$((i+1)); done',
}  # ends on its own


@pytest.mark.parametrize(
    "switched, said",
    [
        (False, "stopped its tier.sh (it removed the new containers)"),
        (True, "waited for its tier.sh to drain and retire the old containers"),
    ],
)
def test_recover_a_live_tier_sh_stops_it_before_its_switch_and_waits_after(host, switched, said):
    proc = subprocess.Popen([SH, "-c", DUMMY_TIER[switched], "tier.sh"])
    if switched:  # its retire stops the old container in the background: gone a moment after it ends
        threading.Timer(1.5, lambda: host.set(f"gone-{OLD[:12]}")).start()
    try:
        t0 = time.monotonic()
        res = recover(host, (str(proc.pid), switched, ["server"], [OLD[:12]]))
        assert res.stdout == f"recovered server: {said}\n"
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            stop(proc)
    calls = host.calls()
    assert not any(c.startswith(("stop", "rm", "kill")) for c in calls)  # tier.sh removes or retires on its own
    if switched:  # and the next run plans only once the old containers are gone, not while they stop
        assert time.monotonic() - t0 >= 1.5 and f"inspect --format . {OLD[:12]}" in calls


def test_tier_renews_the_deploys_lock_while_it_waits(host):
    host.lock("acquire", "alice@laptop pid 7 deploy", 0)
    renewed = host.lock_dir / "renewed"
    os.utime(renewed, (0, 0))
    res = host.run(tier(host), stdin="nopin\ngo\n")
    assert res.returncode == 0, res.stdout + res.stderr
    assert renewed.stat().st_mtime > time.time() - 60


# --- explain mode (ZDD_EXPLAIN=1, lib.sh): what `deploy --dry-run` runs -------------------------------

READS = ("compose -f x.yaml ps ", "inspect ", "ps ", "image ls ", f"exec {OLD[:12]} sh -c for d in /dev/shm /tmp")


def ran(host: Host) -> list[str]:
    """The commands the host programs recorded as they ran them (~/.zdd/ran.log)."""
    log = host.home / ".zdd" / "ran.log"
    return [line.split(" ran ", 1)[1] for line in log.read_text().splitlines()] if log.exists() else []


def same_run(commands: list[str]) -> list[str]:
    """Commands with what only exists at run time made equal: the hold marker's time and pid."""
    return [re.sub(r"zdd-release-\d+-\d+", "zdd-release-T-P", c) for c in commands]


def assert_changed_nothing(host: Host) -> None:
    assert all(c.startswith(READS) or c.startswith("            rm -f") for c in host.calls()), host.calls()
    assert not (host.home / ".zdd").exists()  # no journal, lock, job log or ran.log


@pytest.mark.parametrize("plugin", [False, True], ids=["compose", "plugin"])
def test_tier_explains_what_it_would_run_and_a_real_run_runs_exactly_that(host, plugin):
    svc = TierService("server", 1, 5, 10, (OLD[:12],), (), "sleep 1")
    cmd = cmds.tier(host.config, plugin, "cad", [svc], (PROXY_NETWORK,), host.key, RUN)
    assert cmd.explain is not None and cmd.explain.argv[:2] == ("env", "ZDD_EXPLAIN=1")
    assert cmd.explain.describe().startswith("cd ~/app && env ZDD_EXPLAIN=1 sh -c '<fabfile/remote/tier.sh>' tier.sh ")
    res = host.run(cmd.explain, stdin="journal {}\npin {}\nswitch {}\n")
    assert res.returncode == 0, res.stdout + res.stderr
    assert_changed_nothing(host)
    out = [line for line in res.stdout.splitlines()[1:] if not line.startswith("progress ")]
    reload = "run docker exec -i cad caddy reload --config /dev/stdin --force"
    if plugin:
        start = [
            "run setsid docker rollout -f x.yaml --timeout 5 --wait 0 --pre-stop-hook 'n=0; while [ ! -e "
            "/dev/shm/zdd-release-T-P ] && [ ! -e /tmp/zdd-release-T-P ] && [ $n -lt 350 ]; do sleep 0.2 "
            "2>/dev/null || sleep 1; n=$((n+1)); done; sleep 1' server"
        ]
        retire = [
            f"run docker exec {OLD[:12]} sh -c 'true 2>/dev/null > /dev/shm/zdd-release-T-P || true > "
            "/tmp/zdd-release-T-P'"
        ]
    else:
        start = [
            "run timeout -k 10 65 docker compose -f x.yaml up --detach --no-deps --no-recreate --scale server=2 server"
        ]
        retire = [
            f"run timeout -k 5 5 docker exec {OLD[:12]} sh -c 'sleep 1'",
            f"run docker stop --time 10 {OLD[:12]}",
            f"run docker rm {OLD[:12]}",
        ]
    assert same_run(out) == [
        "load pin config",
        reload,
        "pinned",
        *start,
        "wait healthy: server (1 container) up to 5 s",
        f"new server <new-server-1> {PROXY_NETWORK}=<ip-of-new-server-1>",
        "healthy after 0s",
        "load switch config",
        reload,
        "switched",
        "drained nothing to drain at the proxy",
        *retire,
        "retired",
    ]
    # the real run: what it records having run is what the explanation said
    if plugin:
        host.set("up")  # the stub `docker rollout` started the new container
    res = host.run(cmd, stdin="journal {}\npin {}\nswitch {}\n")
    assert res.returncode == 0, res.stdout + res.stderr
    expected = [line[len("run ") :] for line in out if line.startswith("run ")]
    assert eventually(lambda: len(ran(host)) >= len(expected))  # the old containers retire in the background
    assert same_run(ran(host)) == same_run(expected)


def test_explain_mode_of_restore_finish_recover_and_pull_changes_nothing(host):
    host.set("images", "r/server:latest sha256:aa\n")
    res = host.run(cmds.restore(host.config, host.key, "cad", [OLD[:12]], True, 20).explain)
    assert (res.returncode, res.stdout.splitlines()) == (
        0,
        [
            f"wait gone: {OLD[:12]} up to 20 s",
            "run docker exec cad caddy reload --config /etc/caddy/Caddyfile --adapter caddyfile --force",
            "restore queued (explain mode: not started): it waits for 1 old container(s) to stop, then reloads "
            "/etc/caddy/Caddyfile and releases the lock",
        ],
    )
    res = host.run(cmds.finish(host.key, "", True, 3, RUN, {"server": "sha256:aa"}, ('{"event": "end"}',)).explain)
    repo = keep_repo(host.key)
    assert (res.returncode, res.stdout.splitlines()) == (
        0,
        [
            f"run docker tag sha256:aa {repo}-server:{RUN}",
            "kept the images of the last 3 runs",
            "run docker image prune --force",
        ],
    )
    res = host.run(
        cmds.recover(host.config, host.key, RUN, [(str(dead_pid()), True, ["server"], [OLD[:12]], [], 0)]).explain
    )
    assert (res.returncode, res.stdout.splitlines()) == (
        0,
        [
            f"run docker stop {OLD[:12]}",
            f"run docker rm {OLD[:12]}",
            f"recovered server: stopped the old containers, out of rotation since the switch: {OLD[:12]}",
        ],
    )
    host.config = dataclasses.replace(host.config, registry=RegistryConfig(server="reg.test"))
    cmd = cmds.pull(host.config, ["server"], ("reg.test", "bot", "t0k3n", "X"), limit=30)
    assert cmd.explain is not None and cmd.explain.stdin is None  # the token is not sent to an explanation
    res = host.run(cmd.explain)
    assert (res.returncode, res.stdout.splitlines()) == (
        0,
        [
            "run docker login --username bot --password-stdin reg.test",
            "logged in to reg.test (temporary config)",
            "run timeout -k 10 30 docker compose -f x.yaml pull --quiet server",
        ],
    )
    assert "t0k3n" not in res.stdout
    assert_changed_nothing(host)
    assert not (host.stub / "login").exists()


def test_lock_and_survey_do_not_explain():
    assert cmds.lock("k", "unlock").explain is None
    assert cmds.survey(HostConfig(name="t", dir="~/app")).explain is None


def test_quoted_words_read_back_as_the_same_words():
    nasty = ["plain", "it's", 'a "b"', "$HOME", "*", "", "a=b,c:d/e.f@g%h+i-j_k"]
    text = "\n".join([command_mod.script("lib.sh"), 'quoted "$@"'])
    out = subprocess.run([SH, "-c", text, "x", *nasty], capture_output=True, text=True, check=True).stdout
    assert shlex.split(out) == nasty
    assert out == shlex.join(nasty)


class LocalExecutor:
    """Runs zdd's commands on the fake host (as SshExecutor does over SSH), conversations too."""

    explains = True

    def __init__(self, host: Host):
        self.host = host

    def __call__(self, command: str, stdin: str | None, deadline: float | None = None) -> CommandResult:
        res = subprocess.run(
            [SH, "-c", command],
            input=stdin or "",
            capture_output=True,
            text=True,
            env=self.host.env,
            cwd=self.host.home,
            timeout=20,
        )
        return CommandResult(ok=res.returncode == 0, stdout=res.stdout, stderr=res.stderr, exited=res.returncode)

    def converse(self, command: str) -> LocalConversation:
        return LocalConversation(
            subprocess.Popen(
                [SH, "-c", command],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=self.host.env,
                cwd=self.host.home,
            )
        )


class LocalConversation:
    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def readline(self, timeout: float) -> str | None:
        line = self.proc.stdout.readline()  # the explanation never waits: a line or the end comes at once
        return line.rstrip("\n") if line else None

    def close(self) -> CommandResult:
        out, _ = self.proc.communicate(timeout=10)
        return CommandResult(ok=self.proc.returncode == 0, stdout=out, exited=self.proc.returncode)

    def close_early(self) -> None:
        self.close()


def test_dry_run_prints_the_hosts_explanation_of_a_tier_and_of_the_restore(host):
    out = io.StringIO()
    r = Runner(LocalExecutor(host), "t", dry_run=True, out=out)
    cmd = cmds.tier(
        host.config, False, "cad", [TierService("server", 1, 5, None, (OLD[:12],), ())], (PROXY_NETWORK,), host.key, RUN
    )
    conv = r.converse(cmd, {"nopin": "nothing to pin", "go": "go on"})
    conv.send("nopin")
    got = []
    while (line := conv.readline(1)) is not None:
        got.append(line)
        if line.startswith("healthy"):
            conv.send("go")
    assert conv.close().ok
    assert [line.split()[0] for line in got] == ["pid", "pinned", "new", "healthy", "switched", "drained", "retired"]
    res = r.change(cmds.restore(host.config, host.key, "cad", [OLD[:12]], False, 20))
    assert res.ok and res.stdout == "restored /etc/caddy/Caddyfile after 0s\n"
    assert out.getvalue().splitlines() == [
        "[t] tier.sh explains (changing nothing):",
        "[t] would send: nothing to pin",
        "[t] would run: timeout -k 10 65 docker compose -f x.yaml up --detach --no-deps --no-recreate --scale "
        "server=2 server",
        "[t] would wait: healthy: server (1 container) up to 5 s",
        "[t] would send: go on",
        f"[t] would run: docker stop {OLD[:12]}",
        f"[t] would run: docker rm {OLD[:12]}",
        "[t] restore.sh explains (changing nothing):",
        f"[t] would wait: gone: {OLD[:12]} up to 20 s",
        "[t] would run: docker exec cad caddy reload --config /etc/caddy/Caddyfile --adapter caddyfile --force",
    ]
    assert_changed_nothing(host)
    assert f"docker stop {OLD[:12]}" in r.history  # what the dry run would run, as a plan


# --- the lock's state machine under races and a full disk -------------------------------------------


def old_file(path: Path, seconds: int) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_a_stale_lock_raced_for_by_eight_takers_goes_to_exactly_one(host):
    """Two CI runners (or laptops) retrying at once: the takeover is atomic (under KEY.takeover)."""
    host.hold_lock("gone@elsewhere pid 1 deploy")
    old_file(host.lock_dir / "holder", 4000)
    procs = [
        host.start(cmds.lock(host.key, "acquire", f"taker {i}", "5", (f'{{"run": "t{i}"}}',), stale=1800))
        for i in range(8)
    ]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    won = [i for i, p in enumerate(procs) if p.returncode == 0]
    assert len(won) == 1, outs
    assert host.holder() == f"taker {won[0]}"
    assert [e["run"] for e in host.journal()] == [f"t{won[0]}"]
    assert all(o.startswith("locked by: ") for i, o in enumerate(outs) if i not in won), outs
    assert not Path(str(host.lock_dir) + ".takeover").exists()


def test_two_takeovers_of_one_gone_holder_make_one_owner(host):
    host.hold_lock("gone@here pid 1 deploy")
    procs = [host.start(cmds.lock(host.key, "takeover", f"taker {i}", "gone@here pid 1 deploy", ())) for i in range(6)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert sum(p.returncode == 0 for p in procs) == 1, outs
    assert host.holder() in {f"taker {i}" for i in range(6)}


def test_a_lock_that_cannot_be_made_fails_at_once_naming_why(host):
    """mkdir fails for another reason than "exists" (a full disk, no right): no spin, exit 3."""
    (host.home / ".zdd").mkdir(exist_ok=True)
    (host.home / ".zdd" / "locks").write_text("not a directory\n")
    t0 = time.monotonic()
    res = host.lock("acquire", "me", 5)
    assert time.monotonic() - t0 < 5
    assert res.returncode == 3 and res.stdout.startswith("cannot make ") and "locks" in res.stdout


def test_a_lock_whose_journal_line_cannot_be_written_is_not_taken(host):
    (host.home / ".zdd").mkdir(exist_ok=True)
    (host.home / ".zdd" / "journal").write_text("not a directory\n")
    res = host.lock("acquire", "me", 5, '{"run": "r", "event": "start"}')
    assert res.returncode == 3 and res.stdout.startswith("cannot write the journal ")
    assert "the deploy lock was not taken" in res.stdout and not host.lock_dir.exists()


# --- what a run may remove: never a one-off job, never what serves ---------------------------------------


def test_tier_takes_a_one_off_job_for_no_new_container(host):
    """A cron job's `docker compose run` container of the service runs through the tier untouched."""
    host.set("job")
    host.set(f"oneoff-{JOB[:12]}")
    res = host.run(tier(host), stdin="nopin\ngo\n")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"new server {NEW[:12]} " in res.stdout and JOB[:12] not in res.stdout
    assert not any(JOB[:12] in c for c in host.calls() if c.startswith(("rm", "stop", "exec")))
    assert [e.get("ids") for e in host.journal() if e["event"] == "new"] == [NEW[:12]]


def test_sigterm_while_the_switch_loads_keeps_the_containers_it_switches_to(host):
    """The switch is journaled before the load: a TERM that lands during it never undoes."""
    host.set("reload-slow")
    proc = subprocess.Popen(
        host._argv(tier(host, held=("server:8080",)), None)[0],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=host.env,
        cwd=host.home,
    )
    pid = int(proc.stdout.readline().split()[1])
    proc.stdin.write("nopin\nswitch {}\n")
    proc.stdin.flush()
    deadline = time.monotonic() + 10
    while not (host.stub / "reloading").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "switched" in out.splitlines() and "failed" not in out
    assert not any(c.startswith("rm --force") for c in host.calls())
    assert [e["event"] for e in host.journal()] == ["tier", "new", "switched", "retired"]


def test_a_tier_that_cannot_write_its_journal_changes_nothing(host):
    (host.home / ".zdd" / "journal").mkdir(parents=True, exist_ok=True)
    (host.home / ".zdd" / "journal").rmdir()
    (host.home / ".zdd" / "journal").write_text("a file where the journal's directory should be\n")
    res = host.run(tier(host), stdin="nopin\ngo\n")
    assert res.returncode == 1
    assert res.stdout.splitlines()[-1].startswith("failed cannot write the journal ")
    assert not any(c.startswith(("compose", "rm", "stop")) and " up " in f" {c} " for c in host.calls())
    assert not (host.stub / "up").exists()


def test_recover_removes_only_the_containers_the_run_journaled_as_new(host):
    host.set("up")
    host.set("job")
    other = cid("0th")  # started by someone else meanwhile (listed too): not the run's
    res = recover(host, (str(dead_pid()), False, ["server"], [OLD[:12]], [NEW[:12]], 0))
    assert res.stdout == f"recovered server: removed the new containers: {NEW[:12]}\n"
    assert not any((JOB[:12] in c or other[:12] in c) and c.startswith("rm") for c in host.calls())


def test_recover_without_the_new_event_removes_what_was_created_since_the_tier_only(host):
    """It died before it journaled its new containers: created since the tier's start, not old, no job."""
    host.set("up")
    host.set("job")
    host.set(f"oneoff-{JOB[:12]}")
    host.set(f"created-{OLD[:12]}", "2020-01-01T00:00:00.000000000Z")
    since = int(time.time()) - 60
    res = recover(host, (str(dead_pid()), False, ["server"], [OLD[:12]], [], since))
    assert res.stdout == f"recovered server: removed the new containers: {NEW[:12]}\n"
    assert not any(JOB[:12] in c and c.startswith("rm") for c in host.calls())
