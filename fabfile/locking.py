"""The deploy lock and the run's journal entry, shared by every engine.

A run that changes a host holds the project's lock (``~/.zdd/locks/KEY``, ``remote/lock.sh``)
from its ``start`` journal line to its ``end`` line (``remote/finish.sh``, one round trip
that also keeps images and prunes). :func:`recover` finishes or undoes the runs an
interruption left unfinished (``remote/recover.sh``). Everything a run needs here is passed
in: the state's ``key``, the :class:`Held` lock, and the verify verdict to journal.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from . import commands as cmds
from . import journal
from .config import JOURNAL_TAIL, LOCK_WAIT
from .interrupts import shielded
from .runner import StepFailed
from .session import Session

_HOLDER = re.compile(r"^(?P<who>\S+)@(?P<host>\S+) pid (?P<pid>\d+)(?:\.(?P<client>\S+))? ")


def client_id() -> str:
    """This machine's boot and pid namespace: two machines (or containers) with one host name
    have different ones, so a pid is compared only where it means the same process."""
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()[:8]
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return "unknown"
    return f"{boot}-{ns}"


Verdict = Callable[[], "dict | None"]  # stops the verify loop (once) and returns its verdict for the journal


def no_verdict() -> dict | None:
    return None


@dataclass
class Held:
    """This run's hold of the host's lock, and its journal entry."""

    run: str
    kind: str
    holder: str
    started: float = field(default_factory=time.monotonic)
    handed_over: bool = False  # a job on the host holds the lock now (the restore)
    lines: list[str] = field(default_factory=list)  # journal lines to write with the next command
    images: dict[str, str] = field(default_factory=dict)  # service -> image it runs once done
    prune: bool = False  # something rolled: keep its images, prune the rest
    waited: bool = False  # the lock was waited for or taken over: the host may have changed

    def note_plan(self, event: dict) -> None:
        """The plan goes to the journal before the first change it makes (with the first tier)."""
        self.lines.append(journal.line(event))
        self.images = {n: v["after"] for n, v in event["services"].items() if v.get("after")}

    def take_lines(self) -> tuple[str, ...]:
        """The journal lines not yet sent, now on their way with a command."""
        lines, self.lines[:] = tuple(self.lines), []
        return lines


def _client_gone(holder: str) -> bool:
    """A holder that is a zdd on this machine (same host name, boot and pid namespace) whose
    process is gone (provably dead)."""
    m = _HOLDER.match(holder)
    here = client_id()
    if not m or m.group("host") != socket.gethostname() or here == "unknown" or m.group("client") != here:
        return False
    try:
        os.kill(int(m.group("pid")), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def acquire(s: Session, state: Any, kind: str, run: str | None = None) -> Held:
    """Take the lock of ``state.key`` for a run of ``kind`` (id ``run``, default a new one),
    journaling its start."""
    held = Held(run or journal.new_run_id(), kind, "")
    held.holder = (
        f"{journal.who()} pid {os.getpid()}.{client_id()} {kind} since "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')} "
        f"(run {held.run})"
    )
    start = (journal.line(journal.start_event(held.run, kind)),)
    res = s.r.change(
        cmds.lock(state.key, "acquire", held.holder, str(LOCK_WAIT), start, s.host.lock_stale), check=False
    )
    if not res.ok and res.exited == 3:  # the lock or its journal line cannot be written (a full disk...)
        raise StepFailed(f"{res.first_error_line()}; nothing was changed")
    if not res.ok:
        holder = res.first_error_line().removeprefix("locked by: ")
        if not _client_gone(holder):
            raise StepFailed(
                f"another deploy holds the lock ({res.first_error_line()}); if it is gone, run: fab -H {s.name} unlock"
            )
        res = s.r.change(cmds.lock(state.key, "takeover", held.holder, holder, start), check=False)
        if not res.ok:
            raise StepFailed(f"could not take over the lock of a zdd that is gone: {res.first_error_line()}")
        s.notes.append(f"took over the lock of a zdd that is gone ({holder})")
        held.waited = True
    said = res.stdout.strip().splitlines()[:-1]
    s.notes.extend(said)
    held.waited = held.waited or bool(said)
    return held


@contextmanager
def locked(s: Session, state: Any, kind: str, verdict: Verdict = no_verdict, run: str | None = None) -> Iterator[Held]:
    """Hold the project's lock while ``kind`` runs (one at a time), journaled: ``start``
    before anything changes, ``end`` with the result (and ``verdict()``) when it lets go."""
    held = acquire(s, state, kind, run)
    result, error = "ok", ""
    try:
        yield held
    except KeyboardInterrupt:
        result = "interrupted"
        raise
    except BaseException as e:
        result, error = "failed", str(e)
        raise
    finally:
        with shielded("the end of the run (journal, lock release)"):
            finish(s, state, held, result, error, verdict())


def finish(s: Session, state: Any, held: Held, result: str, error: str, verify: dict | None) -> None:
    """One command: the journal's end of this run, keep tags, prune, release the lock."""
    steps = [
        {"name": r.name, "status": r.status, "seconds": round(r.seconds, 1), "detail": r.detail[:200]}
        for r in s.report.steps
    ]
    end = journal.end_event(held.run, result, time.monotonic() - held.started, steps, verify, error)
    prune_now = held.prune and result == "ok" and s.host.prune
    keep = held.images if result == "ok" and held.prune else {}  # a run that rolled nothing takes no slot
    with s.report.step("finish") as rec:
        res = s.r.change(
            cmds.finish(
                state.key,
                "" if held.handed_over else held.holder,
                prune_now,
                s.host.keep_images,
                held.run if keep else "",
                keep,
                (*held.take_lines(), journal.line(end)),
            ),
            check=False,
        )
        rec.detail = "; ".join(res.stdout.strip().splitlines()) or ("" if res.ok else res.first_error_line())
        if not res.ok:
            rec.status = "failed"
            s.notes.append(f"finish: {res.first_error_line()} (if the lock is still held: fab -H {s.name} unlock)")


def unlock(s: Session, state: Any) -> None:
    """Free the lock of ``state.key`` whoever holds it."""
    with s.report.step("unlock") as rec:
        line = journal.line(
            {
                "run": journal.new_run_id(),
                "t": int(time.time()),
                "event": "unlock",
                "who": journal.who(),
                "was": state.lock_holder,
            }
        )
        s.r.change(cmds.lock(state.key, "unlock", lines=(line,)), "releasing the lock")
        rec.detail = f"was locked by: {state.lock_holder}" if state.lock_holder else "was free"


def read_runs(s: Session, state: Any) -> list[journal.Run]:
    """The runs in the project's journal (its last ``JOURNAL_TAIL`` lines)."""
    res = s.r.probe(cmds.journal_read(state.key, JOURNAL_TAIL))
    return journal.parse(res.stdout) if res.ok else []


def recover(s: Session, state: Any, own: str, survey: Callable[[Session], Any]) -> Any:
    """Finish or undo what interrupted runs (other than ``own``, the run now holding the lock)
    left half done, from the journal lines the survey read; the state read again afterwards
    (by ``survey``). Nothing to do: the same state, no round trip."""
    others = [r for r in journal.parse(state.journal) if r.run != own]
    runs = [r for r in others if r.end is None]
    # the last run may have ended with a tier the host had not finished: its connection dropped
    # as the tier switched (its client never heard it), or its tier.sh still drains and retires
    if others and others[-1].end is not None and any(not t.finished for t in others[-1].tiers):
        runs.append(others[-1])
    if not runs:
        return state
    for prev in runs:  # oldest first: a run that died while recovering leaves two
        with s.report.step("recover") as rec:
            tiers = [(t.pid, t.switched, t.services, t.old, t.new, t.t) for t in prev.tiers if not t.finished]
            res = s.r.change(cmds.recover(s.host, state.key, prev.run, tiers), "recovering", check=False)
            done = res.stdout.strip().splitlines()
            what = "was interrupted" if prev.end is None else "left a tier to the host"
            rec.detail = f"run {prev.run} ({prev.kind}, {prev.start.get('who', '?')}) {what}" + (
                "; " + "; ".join(done) if done else "; nothing was half done"
            )
            if not res.ok:
                raise StepFailed(f"could not recover run {prev.run}: {res.first_error_line()}")
    return survey(s)
