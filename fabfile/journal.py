"""The journal: one JSON line per event of each run, on the host, per project.

``~/.zdd/journal/KEY.jsonl`` (KEY: the project's resolved directory, from survey.sh). zdd
writes a run's ``start`` (who, from where) when it takes the lock, before it changes
anything, and its ``plan`` (each service's image before and after) with the first tier;
``tier.sh`` writes what each tier
does *before* doing it (``tier``, ``new``, ``switched``, ``undone``, ``retired``), so whatever
dies, the next run knows what was half done; the run's ``end`` (result, steps, verify verdict)
goes with the lock's release. Nothing secret is ever written. This module only builds and
reads events; the host scripts append them.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from .plan import HostState, ServicePlan, normalize_ref


def new_run_id() -> str:
    """``YYYYMMDD-HHMMSS-PID`` in UTC: ids sort in time order whichever time zone a client runs in."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{os.getpid()}"


def who() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def line(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(", ", ": "), sort_keys=False)


def start_event(run: str, kind: str) -> dict:
    """``start``: who, from where, what kind of run (written as the lock is taken)."""
    return {
        "run": run,
        "t": int(time.time()),
        "event": "start",
        "kind": kind,
        "who": who(),
        "from": socket.gethostname(),
        "pid": os.getpid(),
    }


def plan_event(run: str, state: HostState, plans: list[ServicePlan], images: dict[str, str]) -> dict:
    """``plan``: per service whether it rolls and why, the image it runs (with the tag it
    came from) and the image it will run."""
    services: dict[str, dict] = {}
    for p in plans:
        svc = state.services.get(p.name) or {}
        ref = normalize_ref(str(svc.get("image", ""))) if svc.get("image") else ""
        before = sorted({c.image for c in p.old})
        now = before[0] if len(before) == 1 else ""
        services[p.name] = {
            "roll": p.roll,
            "reason": p.reason,
            "ref": ref,
            "before": before,
            "after": (images.get(ref) or now) if p.roll else now,
            "old": [c.id for c in p.old],
        }
    return {"run": run, "t": int(time.time()), "event": "plan", "services": services}


def end_event(
    run: str, result: str, seconds: float, steps: list[dict], verify: dict | None = None, error: str = ""
) -> dict:
    event = {
        "run": run,
        "t": int(time.time()),
        "event": "end",
        "result": result,
        "seconds": round(seconds, 1),
        "steps": steps,
    }
    if verify:
        event["verify"] = verify
    if error:
        event["error"] = error[:300]
    return event


def breach_line(run: str, event: str, service: str, reason: str, **figures: object) -> str:
    """A ``canary-breach`` or ``watch-breach`` event, as a line for the journal: why the release
    was stopped, with its figures."""
    ev = {"run": run, "t": int(time.time()), "event": event, "service": service, "reason": reason, **figures}
    return json.dumps(ev, separators=(",", ":"))


@dataclass
class Tier:
    pid: str
    services: list[str]
    old: list[str]
    t: int = 0  # when it started (epoch seconds)
    new: list[str] = field(default_factory=list)  # the containers it started (its `new` event)
    switched: bool = False
    undone: bool = False
    retired: bool = False

    @property
    def finished(self) -> bool:
        return self.undone or self.retired


@dataclass
class Run:
    run: str
    start: dict = field(default_factory=dict)
    plan: dict = field(default_factory=dict)
    end: dict | None = None
    tiers: list[Tier] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.start.get("kind", "?")

    @property
    def ok(self) -> bool:
        return bool(self.end) and self.end.get("result") == "ok"

    @property
    def settled(self) -> dict:
        """Engine swarm: Swarm's verdict once its monitor window ended (``settled``, journaled by
        the monitor job after the run ended), or {}."""
        return next((e for e in reversed(self.events) if e.get("event") == "settled"), {})

    def images_after(self) -> dict[str, str]:
        """service -> the image it ran once this run was done."""
        return {n: s.get("after", "") for n, s in (self.plan.get("services") or {}).items() if s.get("after")}


def parse(text: str) -> list[Run]:
    """The runs of a journal, in the order they started (lines that are not JSON are skipped)."""
    runs: dict[str, Run] = {}
    for raw in text.splitlines():
        try:
            ev = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if not isinstance(ev, dict) or "run" not in ev:
            continue
        run = runs.setdefault(ev["run"], Run(ev["run"]))
        run.events.append(ev)
        kind = ev.get("event")
        if kind == "start":
            run.start = ev
        elif kind == "plan":
            run.plan = ev
        elif kind == "end":
            run.end = ev
        elif kind == "tier":
            run.tiers.append(
                Tier(str(ev.get("pid", "")), _list(ev.get("services")), _list(ev.get("old")), int(ev.get("t") or 0))
            )
        elif kind == "new":
            for t in run.tiers:
                if t.pid == str(ev.get("pid", "")):
                    t.new = _list(ev.get("ids"))
        elif kind in ("switched", "undone", "retired", "returned"):
            for t in run.tiers:
                if t.pid == str(ev.get("pid", "")):
                    if kind == "returned":  # a watch sent the traffic back: the new ones are to go
                        t.switched = False
                    else:
                        setattr(t, kind, True)
    return [r for r in runs.values() if r.start]


def _list(value: Any) -> list[str]:
    return [v for v in str(value or "").split(",") if v]


def unfinished(runs: list[Run], own: str = "") -> Run | None:
    """The last run that started and never ended (not ``own``, the run now starting)."""
    for run in reversed(runs):
        if run.run != own and run.end is None:
            return run
    return None
