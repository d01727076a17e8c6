"""Human-readable progress: one line per step with host and elapsed time, and a summary."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, TextIO


@dataclass
class StepRecord:
    name: str
    status: str = "running"   # ok | failed | skipped
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Reporter:
    host: str
    out: TextIO = field(default_factory=lambda: sys.stdout)
    steps: list[StepRecord] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def _line(self, rec: StepRecord) -> None:
        mark = {"ok": "ok  ", "failed": "FAIL", "skipped": "skip"}[rec.status]
        detail = f"  {rec.detail}" if rec.detail else ""
        print(f"[{self.host}] {mark} {rec.name:<28} {rec.seconds:6.1f}s{detail}", file=self.out, flush=True)

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
        rec = StepRecord(name, "skipped", why)
        self.steps.append(rec)
        self._line(rec)

    def summary(self, title: str, extra: list[str] | None = None) -> None:
        total = time.monotonic() - self.started
        failed = [s for s in self.steps if s.status == "failed"]
        print(f"\n[{self.host}] {title}: {'FAILED' if failed else 'ok'} in {total:.1f}s", file=self.out)
        width = max((len(s.name) for s in self.steps), default=4)
        print(f"  {'step':<{width}}  {'result':<7} {'time':>7}  detail", file=self.out)
        for s in self.steps:
            print(f"  {s.name:<{width}}  {s.status:<7} {s.seconds:6.1f}s  {s.detail}", file=self.out)
        for line in extra or []:
            print(f"  {line}", file=self.out)
        self.out.flush()
