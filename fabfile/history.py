"""What happened and what runs: ``history`` and ``status`` read the host's journal and state;
``rollback`` deploys the images of an earlier run again (they survive ``:latest`` moving and
``prune``, tagged ``zdd-keep/...`` by finish.sh)."""

from __future__ import annotations

import time
from typing import Any, Callable

from . import commands as cmds
from . import journal
from .plan import HostState, normalize_ref
from .runner import BadInput, StepFailed
from .session import Session
from .steps import deploy_steps, locked, recover, validate


def read_runs(s: Session, state: Any) -> list[journal.Run]:
    res = s.r.probe(cmds.journal_read(state.key))
    return journal.parse(res.stdout) if res.ok else []


def _short(image: str) -> str:
    return image.removeprefix("sha256:")[:12] or "-"


def _when(t: int | float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "?"


def history_lines(runs: list[journal.Run], n: int) -> list[str]:
    """A table of the last ``n`` runs: when, who, what, old → new image per service that
    rolled, duration, result, failed requests seen."""
    rows = [("run", "when", "who", "what", "result", "time", "failed", "changes")]
    for r in runs[-n:]:
        end = r.end or {}
        changes = ", ".join(f"{name} {_short((v.get('before') or ['?'])[0])} → {_short(v.get('after', ''))}"
                            for name, v in (r.plan.get("services") or {}).items() if v.get("roll"))
        verify = end.get("verify") or {}
        failed = (f"{verify.get('failures', 0)}/{verify.get('failures_without_retry', 0)}" if verify else "-")
        rows.append((r.run, _when(r.start.get("t")), r.start.get("who", "?"), r.kind,
                     end.get("result", "unfinished"), f"{end['seconds']:.0f}s" if "seconds" in end else "-",
                     failed, changes or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]


def history(s: Session, n: int = 10, read: Callable[..., Any] = validate) -> None:
    """The journal's last ``n`` runs; ``read`` is the engine's validate (the journal's key)."""
    state = read(s, only=[])
    runs = read_runs(s, state)
    print(f"[{s.name}] {len(runs)} run(s) in the journal (failed: retrying client / never retrying)")
    for line in history_lines(runs, n):
        print(f"  {line}")


def status_lines(s: Session, state: HostState, runs: list[journal.Run]) -> list[str]:
    lines = []
    now = time.time()
    for name in s.host.app_services + list(s.host.infra) + ([s.host.proxy.service] if s.host.proxy.service else []):
        cs = [c for c in state.containers if c.service == name]
        if not cs:
            lines.append(f"{name}: no container")
        for c in cs:
            started = c.started_at
            age = f"{int(now - started)}s" if started else "?"
            lines.append(f"{name}: {c.id} {c.state} {c.health} image {_short(c.image)} up {age}")
    if state.proxy:
        routing = ("pinned to container addresses by an unfinished run" if state.proxy_pinned
                   else "by service name (its config file)")
        lines.append(f"proxy {s.host.proxy.service}: routes {routing}")
    return lines + journal_lines(state, runs)


def journal_lines(state: Any, runs: list[journal.Run]) -> list[str]:
    """The lock's holder, the last finished run and an unfinished one (any engine's state)."""
    lines = [f"lock: {state.lock_holder or 'free'}"]
    done = [r for r in runs if r.end]
    if done:
        last = done[-1]
        lines.append(f"last run: {last.run} {last.kind} by {last.start.get('who', '?')}: {last.end.get('result')}")
    unfinished = journal.unfinished(runs)
    if unfinished:
        lines.append(f"unfinished: {unfinished.run} {unfinished.kind} (the next deploy or `fab recover` finishes it)")
    return lines


def status(s: Session) -> None:
    state = validate(s, only=[])
    for line in status_lines(s, state, read_runs(s, state)):
        print(f"  {line}")


def rollback_target(runs: list[journal.Run], to: str | None) -> journal.Run:
    done = [r for r in runs if r.ok and r.images_after()]
    if to:
        match = [r for r in done if r.run == to or r.run.startswith(to)]
        if not match:
            raise BadInput(f"no successful run {to!r} in the journal (fab history lists them)")
        return match[-1]
    current = done[-1].images_after() if done else {}
    for run in reversed(done[:-1]):  # the last successful run that ran other images than now
        if run.images_after() != current:
            return run
    raise BadInput("no earlier successful deploy with other images in the journal to roll back to")


def rollback(s: Session, to: str | None = None, wait: bool = False) -> None:
    """The images of the run before the last successful one (or ``to``), deployed again
    through the same engine with zero downtime; a run of its own in the journal."""
    state = validate(s)
    target = rollback_target(read_runs(s, state), to)
    refs = {name: v.get("ref", "") for name, v in (target.plan.get("services") or {}).items()}
    wanted = {name: image for name, image in target.images_after().items()
              if name in s.host.app_services and refs.get(name)}
    present = s.r.probe(cmds.Command(("docker", "image", "inspect", "--format", "{{.Id}}", *wanted.values())))
    have = set(present.stdout.split())
    gone = [f"{n} ({_short(i)})" for n, i in wanted.items() if i not in have]
    if gone:
        raise BadInput(f"the images of run {target.run} are gone for {', '.join(gone)}: "
                       f"prune keeps those of the last {s.host.keep_images} runs (keep_images)")
    with locked(s, state, f"rollback to {target.run}") as held:
        state = recover(s, state)
        with s.report.step("retag") as rec:
            tags = [cmds.tag(image, refs[name]) for name, image in wanted.items()]
            if tags:
                s.r.change(tags[0].and_then(*tags[1:]), "docker tag")
            rec.detail = f"{', '.join(refs[n] for n in wanted)} → the images of run {target.run}"
        images = {normalize_ref(refs[n]): i for n, i in wanted.items()}
        deploy_steps(s, state, held, wait=wait, images=images)


__all__ = ["history", "rollback", "status", "StepFailed"]
