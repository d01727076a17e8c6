"""What happened: the host's journal as tables. ``history`` lists past runs, ``status`` ends
with the lock and the last run, and ``rollback`` picks the run to go back to (its images
survive ``:latest`` moving and ``prune``, tagged ``zdd-keep/...`` by finish.sh). Pure
functions of parsed runs (:mod:`fabfile.journal`); nothing here talks to a host."""

from __future__ import annotations

import time
from typing import Any

from . import journal
from .runner import BadInput


def short_id(image: str) -> str:
    return image.removeprefix("sha256:")[:12] or "-"


def _when(t: int | float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "?"


def history_lines(runs: list[journal.Run], n: int) -> list[str]:
    """A table of the last ``n`` runs: when, who, what, old → new image per service that
    rolled, duration, result, failed requests seen."""
    rows = [("run", "when", "who", "what", "result", "time", "failed", "changes")]
    for r in runs[-n:]:
        end = r.end or {}
        changes = ", ".join(
            f"{name} {short_id((v.get('before') or ['?'])[0])} → {short_id(v.get('after', ''))}"
            for name, v in (r.plan.get("services") or {}).items()
            if v.get("roll")
        )
        verify = end.get("verify") or {}
        failed = f"{verify.get('failures', 0)}/{verify.get('failures_without_retry', 0)}" if verify else "-"
        rows.append(
            (
                r.run,
                _when(r.start.get("t")),
                r.start.get("who", "?"),
                r.kind,
                end.get("result", "unfinished"),
                f"{end['seconds']:.0f}s" if "seconds" in end else "-",
                failed,
                changes or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]


def journal_lines(state: Any, runs: list[journal.Run]) -> list[str]:
    """The lock's holder, the last finished run and an unfinished one (any engine's state)."""
    lines = [f"lock: {state.lock_holder or 'free'}"]
    done = [r for r in runs if r.end]
    if done:
        last = done[-1]
        lines.append(f"last run: {last.run} {last.kind} by {last.start.get('who', '?')}: {last.end.get('result')}")
        verdict = last.settled
        if verdict:
            said = (
                f"completed after {verdict.get('seconds', '?')}s more"
                if verdict.get("result") == "completed"
                else f"{verdict.get('result', '?')}: {verdict.get('error', '')}"
            )
            lines.append(f"  Swarm's verdict on {verdict.get('services', '?')}: {said}")
    unfinished = journal.unfinished(runs)
    if unfinished:
        lines.append(f"unfinished: {unfinished.run} {unfinished.kind} (the next deploy or `fab recover` finishes it)")
    return lines


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
