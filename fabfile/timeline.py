"""A tier's timeline: when, by the host's clock, each part of replacing its services happened.

Pure: lines in, phases and JSON out. ``remote/tier.sh`` prints, among its other lines, one
line per moment it can date::

    mark EPOCH WHAT [SERVICE [CONTAINER]]

EPOCH is the host's wall clock in seconds, with or without a decimal fraction
(``1764461234.517``, ``1764461234``); WHAT is one of

- ``begin``: tier.sh started; ``pinned``: the proxy's pin config is loaded (or nothing to pin);
- ``up``: ``docker compose up`` for the tier started; ``up-done``: it returned;
- per new container (SERVICE and CONTAINER given), from Docker's own timestamps: ``created``,
  ``started``, ``healthy`` (its first passing healthcheck; none without a healthcheck);
- ``ready``: every new container of the tier is healthy;
- ``canary-P`` (``canary-10``): a canary step's weights (P % to the new containers) loaded;
- ``switch``: loading the config that routes the tier to its new containers started;
  ``switched``: it is loaded;
- ``drained``: the old containers have nothing in flight at the proxy;
- ``retired``: stopping the old containers started (in the background); ``stopped``: they are
  gone (often never seen: the deploy does not wait for it).

tier.sh also prints, once every new container is healthy, one line per container with
Docker's own times (RFC 3339), which :func:`host_line` turns into its created, started and
healthy marks::

    container SERVICE CONTAINER CREATED STARTED [PASSED...]

Any mark may be missing (a failed tier, an engine or a dry run that sends none). A WHAT not
listed here is kept but has no phase; a line that is not a mark parses to None.

From the marks, per service, these phases (seconds from the tier's ``begin``), each only
when both its ends are known: ``pin`` begin → pinned; ``start`` up → the service's last
container started; ``boot`` → its last healthy; ``wait`` → ready (the tier's slowest service,
plus polling); ``canary`` ready → switch (only with canary steps); ``switch`` → switched (from
ready when there was no canary); ``drain`` → drained; ``stop`` retired (or drained) → stopped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from .verify.render import iso

PHASES = ("pin", "start", "boot", "wait", "canary", "switch", "drain", "stop")
CANARY = "canary-"  # a canary step's mark: canary-10 (percent to the new containers)
_EPOCH = re.compile(r"\d+(\.\d+)?")


@dataclass(frozen=True)
class Mark:
    """One moment of a tier, by the host's clock (epoch seconds)."""

    t: float
    what: str
    service: str = ""
    container: str = ""


class Phase(NamedTuple):
    """One part of a service's replacement, in seconds from the tier's start."""

    phase: str
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return round(self.end - self.start, 3)


def parse_mark(line: str) -> Mark | None:
    """``mark EPOCH WHAT [SERVICE [CONTAINER]]`` as a Mark (words after CONTAINER are
    ignored); None for any other line."""
    words = line.split()
    if len(words) < 3 or words[0] != "mark" or not _EPOCH.fullmatch(words[1]):
        return None
    return Mark(float(words[1]), words[2], *words[3:5])


def host_line(line: str) -> list[Mark] | None:
    """The marks of one of tier.sh's timeline lines: a ``mark``, or a ``container`` line (its
    created, started and first passing healthcheck; Docker's zero time is no time); None for
    any other line."""
    word, _, rest = line.partition(" ")
    if word == "mark":
        mark = parse_mark(line)
        return [mark] if mark else []
    if word != "container":
        return None
    service, container, *times = rest.split() + ["", ""]
    marks = []
    for what, stamp in zip(("created", "started", "healthy"), times):
        try:
            t = datetime.fromisoformat(stamp).timestamp()
        except ValueError:
            continue
        if t > 0:
            marks.append(Mark(t, what, service, container))
    return marks


def _known(*times: float | None) -> float | None:
    """The first of ``times`` that is known."""
    return next((x for x in times if x is not None), None)


@dataclass
class TierTimeline:
    """The marks of one tier (``tier`` counts from 1) of ``services``, replaced together."""

    tier: int
    services: list[str]
    marks: list[Mark] = field(default_factory=list)

    @property
    def origin(self) -> float | None:
        """When the tier began (its ``begin`` mark, else its first), None without marks."""
        begin = self._tier("begin")
        return begin if begin is not None else min((m.t for m in self.marks), default=None)

    @property
    def seconds(self) -> float | None:
        """From the tier's start to its last mark."""
        origin = self.origin
        return None if origin is None else round(max(m.t for m in self.marks) - origin, 3)

    def _tier(self, what: str) -> float | None:
        """The first ``what`` mark's time."""
        return min((m.t for m in self.marks if m.what == what), default=None)

    def _last(self, what: str, service: str) -> float | None:
        """The last ``what`` mark of one of the service's containers."""
        return max((m.t for m in self.marks if m.what == what and m.service == service), default=None)

    def phases(self) -> dict[str, list[Phase]]:
        """Per service (in ``services`` order), its phases in :data:`PHASES` order, each only
        when both ends are known; seconds from the tier's start, to the millisecond."""
        origin = self.origin
        if origin is None:
            return {name: [] for name in self.services}
        tier_marks = ("begin", "pinned", "up", "ready", "switch", "switched", "drained", "retired", "stopped")
        t = {w: self._tier(w) for w in tier_marks}
        canary = any(m.what.startswith(CANARY) for m in self.marks)
        tier_wide = [
            ("canary", t["ready"] if canary else None, t["switch"]),
            ("switch", _known(t["switch"], t["ready"]) if canary else _known(t["ready"], t["switch"]), t["switched"]),
            ("drain", t["switched"], t["drained"]),
            ("stop", _known(t["retired"], t["drained"]), t["stopped"]),
        ]
        out = {}
        for name in self.services:
            started, healthy = self._last("started", name), self._last("healthy", name)
            spans = [
                ("pin", t["begin"], t["pinned"]),
                ("start", t["up"], started),
                ("boot", started, healthy),
                ("wait", _known(healthy, started), t["ready"]),
                *tier_wide,
            ]
            out[name] = [
                Phase(what, round(a - origin, 3), round(b - origin, 3))
                for what, a, b in spans
                if a is not None and b is not None
            ]
        return out

    def slowest(self) -> str:
        """The service that decided the tier: the last to be started and healthy ("" without any)."""
        ends = {
            name: max(p.end for p in phases if p.phase in ("start", "boot"))
            for name, phases in self.phases().items()
            if any(p.phase in ("start", "boot") for p in phases)
        }
        return max(ends, key=ends.__getitem__, default="")

    def line(self) -> str:
        """One line for the summary: the phases of the service that decided the tier."""
        head = f"tier {self.tier} {', '.join(self.services)}:"
        if self.origin is None:
            return f"{head} no marks from the host"
        phases = self.phases()
        slowest = self.slowest()
        shown = phases.get(slowest or (self.services[0] if self.services else ""), [])
        figures = " · ".join(f"{p.phase} {max(p.seconds, 0.0):.1f}s" for p in shown) or "no phase completed"
        who = f", slowest: {slowest}" if slowest and len(self.services) > 1 else ""
        return f"{head} {figures} ({self.seconds:.1f}s{who})"

    def to_dict(self) -> dict[str, Any]:
        """The tier in the JSON report: times in seconds from ``begin_at``, to the millisecond."""
        origin = self.origin
        marks = [] if origin is None else [(round(m.t - origin, 3), m) for m in self.marks]
        return {
            "tier": self.tier,
            "services": list(self.services),
            "begin_at": None if origin is None else iso(origin),
            "seconds": self.seconds,
            "marks": [{"t": t, "what": m.what, "service": m.service, "container": m.container} for t, m in marks],
            "phases": [
                {"service": name, "phase": p.phase, "start": p.start, "end": p.end}
                for name, phases in self.phases().items()
                for p in phases
            ],
        }
