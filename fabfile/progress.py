"""Human-readable progress: one line per step with host and elapsed time, and a summary."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

from .timeline import TierTimeline


def emit(*args: Any, **kw: Any) -> None:
    """``print``, but a closed output (the reader gone: a broken pipe) never stops a run half-way,
    an unwind least of all."""
    try:
        print(*args, **kw)
    except (OSError, ValueError):
        pass


@dataclass
class StepRecord:
    name: str
    status: str = "running"  # ok | failed | skipped | warned (went wrong, the run did not: a post-hook, a marker)
    detail: str = ""
    seconds: float = 0.0
    started_at: float = field(default_factory=time.time)  # wall clock (epoch seconds)

    @property
    def ended_at(self) -> float:
        return self.started_at + self.seconds


@dataclass
class Reporter:
    host: str
    out: TextIO = field(default_factory=lambda: sys.stdout)
    steps: list[StepRecord] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.time)  # wall clock, for the JSON and HTML reports
    _progress_shown: bool = False
    proxy_loads: int = 0  # configs loaded into the proxy (each one a graceful reload): proxy_loaded()
    timeline: list[TierTimeline] = field(default_factory=list)  # one per tier, from the host's marks

    def proxy_loaded(self) -> None:
        """One more config loaded into the proxy: the one place that counts them."""
        self.proxy_loads += 1

    def progress(self, text: str) -> None:
        """What a long wait waits for, on one rewritten line; only on a terminal (a CI log
        keeps one line per step)."""
        isatty = getattr(self.out, "isatty", None)
        if not (isatty and isatty()):
            return
        line = f"[{self.host}] ... {text}"[:150]
        emit(f"\r\x1b[2K{line}", end="", file=self.out, flush=True)
        self._progress_shown = True

    def _line(self, rec: StepRecord) -> None:
        if self._progress_shown:
            emit("\r\x1b[2K", end="", file=self.out)
            self._progress_shown = False
        mark = {"ok": "ok  ", "failed": "FAIL", "skipped": "skip", "warned": "WARN"}[rec.status]
        detail = f"  {rec.detail}" if rec.detail else ""
        emit(f"[{self.host}] {mark} {rec.name:<28} {rec.seconds:6.1f}s{detail}", file=self.out, flush=True)

    @contextmanager
    def step(self, name: str) -> Iterator[StepRecord]:
        rec = StepRecord(name)
        self.steps.append(rec)
        t0 = time.monotonic()
        try:
            yield rec
        except BaseException:
            rec.status = "failed"
            raise
        else:
            if rec.status == "running":
                rec.status = "ok"
        finally:
            rec.seconds = time.monotonic() - t0
            self._line(rec)

    def skip(self, name: str, why: str) -> None:
        self.record(name, "skipped", why)

    def record(self, name: str, status: str, detail: str, seconds: float = 0.0) -> None:
        """A step that happened elsewhere (on the host, in the background): one line."""
        rec = StepRecord(name, status, detail, seconds, time.time() - seconds)
        self.steps.append(rec)
        self._line(rec)

    def summary(self, title: str, extra: list[str] | None = None) -> None:
        total = time.monotonic() - self.started
        failed = [s for s in self.steps if s.status == "failed"]
        emit(f"\n[{self.host}] {title}: {'FAILED' if failed else 'ok'} in {total:.1f}s", file=self.out)
        width = max((len(s.name) for s in self.steps), default=4)
        emit(f"  {'step':<{width}}  {'result':<7} {'time':>7}  detail", file=self.out)
        for s in self.steps:
            emit(f"  {s.name:<{width}}  {s.status:<7} {s.seconds:6.1f}s  {s.detail}", file=self.out)
        if self.timeline:
            emit("  timeline (host clock, seconds from each tier's start):", file=self.out)
            for tier in self.timeline:
                emit(f"    {tier.line()}", file=self.out)
        for line in extra or []:
            emit(f"  {line}", file=self.out)
        self.out.flush()
