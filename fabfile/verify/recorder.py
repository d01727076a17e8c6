"""What the HTTP loop records: each request's outcome, per URL and per second.

A request's time ``t`` is when it was *sent*, in seconds since the loop
started. Latencies (ms) are kept for successful (2xx) requests only, so fast
connection refusals cannot flatter the percentiles and timeouts do not drown
them.
"""

from __future__ import annotations

import time
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from .versions import VersionSeen, note_version

OK = "ok"


@dataclass(slots=True)
class Failure:
    """One failed request; ``t`` is its send time in seconds since start."""

    t: float
    url: str
    kind: str
    reason: str
    latency_ms: float


class UrlStats:
    """Everything recorded for one URL."""

    __slots__ = ("url", "counts", "latencies", "versions", "requests_per_second", "failures_per_second")

    def __init__(self, url: str) -> None:
        self.url = url
        self.counts: Counter[str] = Counter()
        self.latencies = array("d")  # ms, successful requests only
        self.versions: dict[str, VersionSeen] = {}
        self.requests_per_second: Counter[int] = Counter()
        self.failures_per_second: Counter[int] = Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def ok(self) -> int:
        return self.counts.get(OK, 0)


class Recorder:
    """Accumulates request outcomes. Not thread-safe: one event loop writes it."""

    def __init__(self, urls: Iterable[str]) -> None:
        self.urls: dict[str, UrlStats] = {u: UrlStats(u) for u in urls}
        self.failures: list[Failure] = []
        self.requests_per_second: Counter[int] = Counter()
        self.failures_per_second: Counter[int] = Counter()
        self.cancelled_in_flight = 0
        self.stale_retries: list[tuple[float, str]] = []  # (t, url) of each retried request
        self.started_mono = time.monotonic()
        self.started_wall = time.time()
        self.stopped_mono: float | None = None

    def restart_clock(self) -> None:
        """Make 'now' time zero (called when the loop actually starts)."""
        self.started_mono = time.monotonic()
        self.started_wall = time.time()

    def record(
        self,
        url: str,
        t: float,
        latency_s: float,
        kind: str,
        reason: str = "",
        version: str | None = None,
    ) -> None:
        """Record one finished request sent ``t`` seconds after start."""
        stats = self.urls.get(url) or self.urls.setdefault(url, UrlStats(url))
        stats.counts[kind] += 1
        second = int(t)
        self.requests_per_second[second] += 1
        stats.requests_per_second[second] += 1
        latency_ms = latency_s * 1000.0
        if kind == OK:
            stats.latencies.append(latency_ms)
            if version is not None:
                note_version(stats.versions, version, t)
        else:
            self.failures_per_second[second] += 1
            stats.failures_per_second[second] += 1
            self.failures.append(Failure(t, url, kind, reason or kind, latency_ms))

    def elapsed(self) -> float:
        """Seconds from start to stop (or to now while running)."""
        end = self.stopped_mono if self.stopped_mono is not None else time.monotonic()
        return max(0.0, end - self.started_mono)
