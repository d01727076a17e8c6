"""What a task did on each host, as data: the one source of the ``--json`` file, the summary
across hosts, the CI job summary (``inv summary``) and the HTML page (``--report``).

The document (``deploy --json FILE``) is one JSON object, the same shape for one host or
several::

    {"zdd_report": 1, "title": "deploy", "result": "ok" | "failed" | "interrupted",
     "started_at": ISO, "ended_at": ISO, "duration_s": 31.0,
     "hosts": [HOST, ...]}                  # in -H order, hosts never reached included

and each HOST::

    {"host": "reminet-staging", "title": "deploy",
     "result": "ok" | "failed" | "interrupted" | "not run", "dry_run": false,
     "started_at": ISO, "ended_at": ISO, "duration_s": 31.0,
     "steps": [{"name", "status" (ok|failed|skipped|warned), "seconds", "detail", "started_at", "ended_at"}],
     "switches": [{"service", "at": ISO}],  # when the proxy was switched to each service's new containers
     "timeline": [TIER, ...],               # per tier, from the host's marks (empty when none came)
     "notes": [str], "cost": {"remote_commands", "proxy_loads"},
     "verdict": str, "verify_ok": bool, "requests": int, "failed_requests": int,
     "verify": {...},                       # the verify loop's full report (Report.to_dict())
     "error": str,                          # the one-line failure message
     "exit_code": int}

and each TIER (see timeline.py for the marks and the phases; times in seconds from its
``begin_at``, by the host's clock)::

    {"tier": 1, "services": ["server", "property"], "begin_at": ISO | null, "seconds": 7.0 | null,
     "marks": [{"t": 0.15, "what": "up", "service": "", "container": ""}, ...],
     "phases": [{"service": "server", "phase": "pin" | "start" | "boot" | "wait" | "canary"
                 | "switch" | "drain" | "stop", "start": 0.0, "end": 0.1}, ...]}

Keys that do not apply are null (``verify``, ``verdict``... when no loop ran; everything but
``host``, ``title`` and ``result`` for a host that was not run). Times are ISO 8601 in UTC.
Secrets (the values of the variables named by ``registry.password_env`` and the ``notify``
tokens and webhook variable) are replaced by ``***`` wherever they would appear.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .progress import StepRecord
from .timeline import TierTimeline
from .verify.render import iso

SCHEMA = 1
ROLLOUT_STEP = "rollout "  # engines name a tier's step "rollout a, b"; it ends at the switch
REDACTED = "***"


@dataclass
class HostResult:
    """One host's run of a task (or that it was not run)."""

    host: str
    title: str
    result: str = "ok"  # ok | failed | interrupted | not run
    started_at: float | None = None  # wall clock (epoch seconds)
    ended_at: float | None = None
    steps: list[StepRecord] = field(default_factory=list)
    timeline: list[TierTimeline] = field(default_factory=list)  # per tier, when the host sent marks
    notes: list[str] = field(default_factory=list)
    cost: dict[str, int] | None = None
    verify: Any = None  # a verify.Report, when the loop ran
    error: str | None = None  # one line, without the "[host] " prefix
    exit_code: int = 0
    dry_run: bool = False
    secrets: tuple[str, ...] = ()  # values that must not appear in any output

    @property
    def ok(self) -> bool:
        return self.result == "ok"

    def fail(self, error: str, code: int, result: str = "failed") -> HostResult:
        self.result, self.error, self.exit_code = result, error, code
        return self

    @property
    def message(self) -> str:
        """The exit message: the error, prefixed with the host."""
        return f"[{self.host}] {self.error}"

    def switches(self) -> list[tuple[str, float]]:
        """(service, wall time) of each switch of the proxy to new containers: a tier's
        rollout step ends once the host has confirmed its switch."""
        return [
            (name, rec.ended_at)
            for rec in self.steps
            if rec.name.startswith(ROLLOUT_STEP) and rec.status == "ok"
            for name in rec.name[len(ROLLOUT_STEP) :].split(", ")
        ]

    def to_dict(self) -> dict[str, Any]:
        if self.result == "not run":
            return {"host": self.host, "title": self.title, "result": self.result, **dict.fromkeys(_HOST_KEYS)}
        report = self.verify
        return {
            "host": self.host,
            "title": self.title,
            "result": self.result,
            "dry_run": self.dry_run,
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at),
            "duration_s": _seconds(self.started_at, self.ended_at),
            "steps": [
                {
                    "name": r.name,
                    "status": r.status,
                    "seconds": round(r.seconds, 3),
                    "detail": r.detail,
                    "started_at": iso(r.started_at),
                    "ended_at": iso(r.ended_at),
                }
                for r in self.steps
            ],
            "switches": [{"service": name, "at": iso(at)} for name, at in self.switches()],
            "timeline": [t.to_dict() for t in self.timeline],
            "notes": list(self.notes),
            "cost": self.cost,
            "verdict": report.verdict() if report else None,
            "verify_ok": report.ok if report else None,
            "requests": report.total if report else None,
            "failed_requests": report.failures if report else None,
            "verify": report.to_dict() if report else None,
            "error": self.error,
            "exit_code": self.exit_code,
        }


_HOST_KEYS = (
    "dry_run",
    "started_at",
    "ended_at",
    "duration_s",
    "steps",
    "switches",
    "timeline",
    "notes",
    "cost",
    "verdict",
    "verify_ok",
    "requests",
    "failed_requests",
    "verify",
    "error",
    "exit_code",
)


def not_run(host: str, title: str) -> HostResult:
    """A host that a failure before it kept from being touched."""
    return HostResult(host, title, result="not run")


def document(title: str, results: list[HostResult]) -> dict[str, Any]:
    """The whole run, secrets redacted: see the module docstring for the shape."""
    ran = [r for r in results if r.result != "not run"]
    starts = [r.started_at for r in ran if r.started_at is not None]
    ends = [r.ended_at for r in ran if r.ended_at is not None]
    first_bad = next((r.result for r in ran if not r.ok), None)
    doc = {
        "zdd_report": SCHEMA,
        "title": title,
        "result": first_bad or "ok",
        "started_at": _iso(min(starts, default=None)),
        "ended_at": _iso(max(ends, default=None)),
        "duration_s": _seconds(min(starts, default=None), max(ends, default=None)),
        "hosts": [r.to_dict() for r in results],
    }
    return redact(doc, {s for r in results for s in r.secrets})


def redact(value: Any, secrets: set[str]) -> Any:
    """``value`` with every occurrence of a secret in its strings replaced by ``***``."""
    secrets = {s for s in secrets if s}
    if not secrets:
        return value
    if isinstance(value, str):
        for s in sorted(secrets, key=len, reverse=True):
            value = value.replace(s, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, secrets) for v in value]
    return value


def write_json(path: str | Path, doc: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: str | Path) -> dict[str, Any]:
    """A document written by :func:`write_json`; ValueError (one line) when it is not one."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("zdd_report") != SCHEMA or not isinstance(doc.get("hosts"), list):
        raise ValueError(f"{path} is not a zdd report (deploy --json)")
    return doc


def _iso(wall: float | None) -> str | None:
    return None if wall is None else iso(wall)


def _seconds(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round(end - start, 3)


def verify_result(report: Any, host: str = "") -> HostResult:
    """A verify loop run on its own (``inv verify``), as a host's result."""
    r = HostResult(
        host, "verify", started_at=report.started_wall, ended_at=report.started_wall + report.elapsed, verify=report
    )
    return r if report.ok else r.fail(f"verify: {report.verdict()}", 1)
