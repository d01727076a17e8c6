"""HTTP verification loop: proves that a deploy dropped no requests.

``concurrency`` asyncio workers, each with its own keep-alive
``httpx.AsyncClient`` (no redirects followed, no proxies from the
environment; see ``_make_clients`` for why not one shared pool), hit the
configured URLs round-robin, optionally paced by a shared token schedule.
Every request is classified:

* ``ok``            -- a 2xx response
* ``status NNN``    -- any other HTTP status (each status separately)
* ``connect error`` -- ``httpx.ConnectError`` / ``httpx.ConnectTimeout``
* ``timeout``       -- ``ReadTimeout``, ``WriteTimeout``, ``PoolTimeout`` or no
  complete response within ``VerifySettings.timeout``
* ``read error``    -- every other transport error (``ReadError``,
  ``RemoteProtocolError``, ``WriteError``, ...)

Conventions used throughout the report:

* A request's time ``t`` is when it was *sent*, in seconds since the loop
  started; timeline buckets, failures and version first/last seen use it.
* Latencies are measured from send until the body (at most ``BODY_LIMIT``
  bytes) was read, and only successful (2xx) requests contribute to the
  latency percentiles, so fast connection refusals cannot flatter them and
  timeouts do not drown them.
* Percentiles use the nearest-rank method, see :func:`percentile`.
* Requests still in flight when the loop is stopped are cancelled and are not
  counted (their number is reported as ``cancelled_in_flight``).

This module is plain library code: it never prints; ``Report.render()``
returns text for the caller to print.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import re
import sys
import threading
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import httpx

__all__ = [
    "BODY_LIMIT",
    "CONNECT_ERROR",
    "OK",
    "READ_ERROR",
    "TIMEOUT",
    "BackgroundLoop",
    "Failure",
    "Recorder",
    "Report",
    "TimelineRow",
    "TokenSchedule",
    "VerifySettings",
    "VersionSeen",
    "build_timeline",
    "classify_exception",
    "classify_status",
    "collapse_timeline",
    "extract_version",
    "latency_summary",
    "percentile",
    "render_timeline",
    "run",
    "timeline_from_buckets",
]

OK = "ok"
CONNECT_ERROR = "connect error"
READ_ERROR = "read error"
TIMEOUT = "timeout"

DEFAULT_VERSION_REGEX = r"\bv\d+[\w.-]*"
BODY_LIMIT = 64 * 1024          # bytes of each body that are read and searched
POLL_INTERVAL = 0.05            # how often the loop checks its stop conditions
MAX_SCHEDULE_LAG = 1.0          # seconds of backlog the rate schedule may catch up
TIMELINE_MAX_ROWS = 60          # longer timelines get failure-free runs collapsed
USER_AGENT = "zdd-verify/0.1"


# --------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------

@dataclass
class VerifySettings:
    """What to hit, how hard, for how long, and how to read the version."""

    urls: list[str]
    concurrency: int = 8
    rate: float | None = None
    duration: float | None = None
    timeout: float = 10.0
    version_regex: str | None = DEFAULT_VERSION_REGEX
    version_header: str | None = None
    max_failures: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    # Retry a GET once, at once, when the server closed a kept-alive connection without
    # answering (RFC 9110 9.2.2; browsers and Go do the same). Counted apart as
    # ``stale_retries``; False counts each such request as a failure instead.
    retry_stale: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.urls, str):
            raise ValueError("urls must be a list of URLs, not a single string")
        self.urls = list(self.urls)
        if not self.urls:
            raise ValueError("no urls to verify")
        for url in self.urls:
            _check_url(url)
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ValueError(f"concurrency must be an integer >= 1, got {self.concurrency!r}")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"rate must be > 0 requests/s (or None for unlimited), got {self.rate!r}")
        if self.duration is not None and not self.duration > 0:
            raise ValueError(f"duration must be > 0 s (or None to run until stopped), got {self.duration!r}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0 s, got {self.timeout!r}")
        if not isinstance(self.max_failures, int) or self.max_failures < 0:
            raise ValueError(f"max_failures must be an integer >= 0, got {self.max_failures!r}")
        if self.version_regex is not None:
            _compile(self.version_regex)
        self.headers = dict(self.headers)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy of the settings."""
        return {
            "urls": list(self.urls),
            "concurrency": self.concurrency,
            "rate": self.rate,
            "duration": self.duration,
            "timeout": self.timeout,
            "version_regex": self.version_regex,
            "version_header": self.version_header,
            "max_failures": self.max_failures,
            "headers": dict(self.headers),
            "retry_stale": self.retry_stale,
        }


def _check_url(url: str) -> None:
    """Raise ValueError unless ``url`` is an absolute http(s) URL."""
    try:
        parsed = httpx.URL(url)
    except Exception as exc:  # httpx.InvalidURL, TypeError
        raise ValueError(f"invalid url {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"invalid url {url!r}: need an absolute http:// or https:// URL")


@lru_cache(maxsize=32)
def _compile(pattern: str) -> re.Pattern[str]:
    """Compile a version regex, turning ``re.error`` into a one-line ValueError."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid version_regex {pattern!r}: {exc}") from None


# --------------------------------------------------------------------------
# Pure helpers: classification, versions, percentiles, timeline
# --------------------------------------------------------------------------

def classify_status(status: int) -> str:
    """``ok`` for 2xx, else ``status NNN``."""
    return OK if 200 <= status < 300 else f"status {status}"


def classify_exception(exc: BaseException) -> str:
    """Map an exception raised while requesting to a failure class."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return CONNECT_ERROR
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return TIMEOUT
    return READ_ERROR


def describe_exception(exc: BaseException, limit: int = 160) -> str:
    """Short one-line text for an exception: ``Type: first line of message``."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def extract_version(pattern: re.Pattern[str] | None, text: str) -> str | None:
    """Search ``text``; return group 1 if the regex has groups, else group 0."""
    if pattern is None:
        return None
    match = pattern.search(text)
    if match is None:
        return None
    return match.group(1) if pattern.groups else match.group(0)


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None if empty).

    The p-th percentile is the smallest recorded value such that at least p %
    of all values are <= it: the value at 1-based rank ``ceil(p/100 * n)``
    (rank at least 1). No interpolation, so the result is always a value that
    was actually observed; p100 is the maximum.
    """
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0..100, got {p!r}")
    n = len(sorted_values)
    if n == 0:
        return None
    rank = math.ceil(round(p * n / 100, 9))
    return sorted_values[min(max(rank, 1), n) - 1]


def latency_summary(values_ms: Iterable[float]) -> dict[str, float | None]:
    """p50/p95/p99/max (ms, nearest rank) of unsorted latencies."""
    ordered = sorted(values_ms)
    return {
        "count": len(ordered),
        "p50": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
        "p99": percentile(ordered, 99),
        "max": ordered[-1] if ordered else None,
    }


@dataclass(frozen=True, slots=True)
class TimelineRow:
    """Seconds ``start``..``end`` (inclusive, since loop start) and their counts."""

    start: int
    end: int
    requests: int
    failures: int

    @property
    def collapsed(self) -> bool:
        return self.end > self.start


def timeline_from_buckets(
    requests: Mapping[int, int], failures: Mapping[int, int], elapsed: float | None = None
) -> list[TimelineRow]:
    """One row per elapsed second, from per-second request/failure counts.

    Rows run from second 0 to the last second that had requests or that the
    run completed (``elapsed``), so quiet seconds show up as ``req 0``.
    """
    seconds = max(list(requests) + list(failures), default=-1) + 1
    if elapsed is not None:
        seconds = max(seconds, int(elapsed + 1e-6))  # 19.9999999 s of float arithmetic is 20
    return [TimelineRow(s, s, requests.get(s, 0), failures.get(s, 0)) for s in range(seconds)]


def build_timeline(
    request_times: Iterable[float], failure_times: Iterable[float], elapsed: float | None = None
) -> list[TimelineRow]:
    """Timeline from raw send times (seconds since start) of all requests and of failed ones."""
    requests = Counter(int(t) for t in request_times)
    failures = Counter(int(t) for t in failure_times)
    return timeline_from_buckets(requests, failures, elapsed)


def collapse_timeline(
    rows: Sequence[TimelineRow], max_rows: int = TIMELINE_MAX_ROWS, context: int = 2
) -> list[TimelineRow]:
    """Merge long failure-free stretches when there are more than ``max_rows`` rows.

    Seconds with failures, the ``context`` seconds around them, and the first
    and last second are always kept; every other run of two or more
    failure-free seconds becomes one summary row. A second with failures is
    never hidden.
    """
    if len(rows) <= max_rows:
        return list(rows)
    keep = {0, len(rows) - 1}
    for i, row in enumerate(rows):
        if row.failures:
            keep.update(range(max(0, i - context), min(len(rows), i + context + 1)))
    out: list[TimelineRow] = []
    run: list[TimelineRow] = []
    for i, row in enumerate(rows):
        if i in keep:
            out.extend(_merge_run(run))
            run = []
            out.append(row)
        else:
            run.append(row)
    out.extend(_merge_run(run))
    return out


def _merge_run(run: list[TimelineRow]) -> list[TimelineRow]:
    """One summary row for a run of failure-free rows (unchanged if shorter than 2)."""
    if len(run) < 2:
        return run
    return [TimelineRow(run[0].start, run[-1].end, sum(r.requests for r in run), 0)]


def render_timeline(rows: Sequence[TimelineRow]) -> list[str]:
    """Plain-ASCII lines, e.g. ``   13s  req    198  fail    7  <-- FAIL``."""
    lines = []
    for row in rows:
        label = f"{row.start}s-{row.end}s" if row.collapsed else f"{row.start}s"
        line = f"{label:>11}  req {row.requests:>6,}  fail {row.failures:>4,}"
        if row.failures:
            line += "  <-- FAIL"
        elif row.collapsed:
            line += f"  ({row.end - row.start + 1} s without failures)"
        lines.append(line)
    return lines


def _second_ranges(seconds: Iterable[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5s, 9s"``."""
    ordered = sorted(set(seconds))
    parts = []
    for _, group in itertools.groupby(enumerate(ordered), key=lambda pair: pair[1] - pair[0]):
        block = [s for _, s in group]
        parts.append(f"{block[0]}s" if len(block) == 1 else f"{block[0]}-{block[-1]}s")
    return ", ".join(parts)


# --------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------

@dataclass(slots=True)
class VersionSeen:
    """How often a version was served and when it was first/last seen (s since start)."""

    count: int
    first: float
    last: float


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

    __slots__ = ("url", "counts", "latencies", "versions")

    def __init__(self, url: str) -> None:
        self.url = url
        self.counts: Counter[str] = Counter()
        self.latencies = array("d")            # ms, successful requests only
        self.versions: dict[str, VersionSeen] = {}

    @property
    def total(self) -> int:
        return sum(self.counts.values())


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
        latency_ms = latency_s * 1000.0
        if kind == OK:
            stats.latencies.append(latency_ms)
            if version is not None:
                seen = stats.versions.get(version)
                if seen is None:
                    stats.versions[version] = VersionSeen(1, t, t)
                else:
                    seen.count += 1
                    seen.first = min(seen.first, t)
                    seen.last = max(seen.last, t)
        else:
            self.failures_per_second[second] += 1
            self.failures.append(Failure(t, url, kind, reason or kind, latency_ms))

    def elapsed(self) -> float:
        """Seconds from start to stop (or to now while running)."""
        end = self.stopped_mono if self.stopped_mono is not None else time.monotonic()
        return max(0.0, end - self.started_mono)


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------

def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, tz=timezone.utc).isoformat(timespec="milliseconds")


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f}" if value < 10 else f"{value:,.0f}"


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


class Report:
    """Results of one verification run (built once the loop has stopped)."""

    def __init__(self, settings: VerifySettings, recorder: Recorder, *, interrupted: bool = False) -> None:
        self.settings = settings
        self.recorder = recorder
        self.interrupted = interrupted
        self.elapsed = recorder.elapsed()
        self.started_wall = recorder.started_wall
        self.counts: Counter[str] = Counter()
        for stats in recorder.urls.values():
            self.counts.update(stats.counts)
        self.total = sum(self.counts.values())
        self.failures = self.total - self.counts.get(OK, 0)
        # no completed request proves nothing: that is not a pass
        self.ok = self.total > 0 and self.failures <= settings.max_failures
        self.latency = latency_summary(itertools.chain.from_iterable(
            s.latencies for s in recorder.urls.values()))

    # -- derived data ------------------------------------------------------

    @property
    def exit_code(self) -> int:
        """0 when ``ok``, else 1 (for a CLI / task to return)."""
        return 0 if self.ok else 1

    @property
    def cancelled_in_flight(self) -> int:
        return self.recorder.cancelled_in_flight

    @property
    def failure_list(self) -> list[Failure]:
        return self.recorder.failures

    def failure_counts(self) -> list[tuple[str, int]]:
        """Failure classes with counts, most frequent first."""
        items = [(k, n) for k, n in self.counts.items() if k != OK and n]
        return sorted(items, key=lambda kn: (-kn[1], kn[0]))

    def failure_classes(self) -> list[str]:
        return [k for k, _ in self.failure_counts()]

    def timeline(self, collapse: bool = False) -> list[TimelineRow]:
        rows = timeline_from_buckets(
            self.recorder.requests_per_second, self.recorder.failures_per_second, self.elapsed)
        return collapse_timeline(rows) if collapse else rows

    def versions(self) -> dict[str, VersionSeen]:
        """Versions over all URLs, ordered by first seen."""
        merged: dict[str, VersionSeen] = {}
        for stats in self.recorder.urls.values():
            for name, seen in stats.versions.items():
                cur = merged.get(name)
                if cur is None:
                    merged[name] = VersionSeen(seen.count, seen.first, seen.last)
                else:
                    cur.count += seen.count
                    cur.first = min(cur.first, seen.first)
                    cur.last = max(cur.last, seen.last)
        return _by_first_seen(merged)

    def switches(self) -> dict[str, dict[str, VersionSeen]]:
        """Per URL that served two or more versions: each version's first/last seen."""
        return {url: _by_first_seen(stats.versions)
                for url, stats in self.recorder.urls.items() if len(stats.versions) >= 2}

    # -- verdict -----------------------------------------------------------

    def verdict(self) -> str:
        """E.g. ``7 of 4,312 requests failed (status 502: 5, connect error: 2), p99 38 ms; ...``."""
        p99 = self.latency["p99"]
        p99_text = "n/a" if p99 is None else f"{int(p99 + 0.5)} ms"
        head = f"{self.failures:,} of {self.total:,} requests failed"
        if not self.failures:
            stale = len(self.recorder.stale_retries)
            retried = f" ({stale:,} retried once after an idle keep-alive close)" if stale else ""
            return f"{head}, p99 {p99_text}{retried}"
        classes = ", ".join(f"{k}: {n:,}" for k, n in self.failure_counts())
        per_url = Counter(f.url for f in self.recorder.failures)
        urls = ", ".join(f"{u} ({n:,})" for u, n in per_url.most_common())
        seconds = _second_ranges(int(f.t) for f in self.recorder.failures)
        return f"{head} ({classes}), p99 {p99_text}; failing URLs: {urls}; failing seconds: {seconds}"

    # -- serialisation -----------------------------------------------------

    def _version_dicts(self, versions: Mapping[str, VersionSeen]) -> list[dict[str, Any]]:
        return [{
            "version": name,
            "count": seen.count,
            "first_s": _round(seen.first),
            "last_s": _round(seen.last),
            "first_at": _iso(self.started_wall + seen.first),
            "last_at": _iso(self.started_wall + seen.last),
        } for name, seen in versions.items()]

    def _url_dict(self, stats: UrlStats) -> dict[str, Any]:
        return {
            "url": stats.url,
            "requests": stats.total,
            "ok": stats.counts.get(OK, 0),
            "failures": stats.total - stats.counts.get(OK, 0),
            "counts": dict(stats.counts),
            "latency_ms": {k: _round(v) for k, v in latency_summary(stats.latencies).items()},
            "versions": self._version_dicts(_by_first_seen(stats.versions)),
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-serialisable, including every failure."""
        return {
            "verdict": self.verdict(),
            "ok": self.ok,
            "total": self.total,
            "failures": self.failures,
            "max_failures": self.settings.max_failures,
            "started_at": _iso(self.started_wall),
            "elapsed_s": _round(self.elapsed),
            "rate_achieved": _round(self.total / self.elapsed if self.elapsed else 0.0, 1),
            "interrupted": self.interrupted,
            "cancelled_in_flight": self.cancelled_in_flight,
            "stale_retries": [{"t": _round(t), "url": u} for t, u in self.recorder.stale_retries],
            "settings": self.settings.to_dict(),
            "counts": dict(self.counts),
            "latency_ms": {k: _round(v) for k, v in self.latency.items()},
            "urls": [self._url_dict(s) for s in self.recorder.urls.values()],
            "versions": self._version_dicts(self.versions()),
            "switches": {u: self._version_dicts(v) for u, v in self.switches().items()},
            "timeline": [{"second": r.start, "requests": r.requests, "failures": r.failures}
                         for r in self.timeline()],
            "failure_list": [{
                "t": _round(f.t),
                "time": _iso(self.started_wall + f.t),
                "url": f.url,
                "kind": f.kind,
                "reason": f.reason,
                "latency_ms": _round(f.latency_ms),
            } for f in self.recorder.failures],
        }

    def write_json(self, path: str | Path) -> Path:
        """Write ``to_dict()`` as indented JSON; returns the path."""
        target = Path(path)
        target.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return target

    # -- text --------------------------------------------------------------

    def render(self, max_failures_listed: int = 20) -> str:
        """Human-readable report: timeline, per-URL table, switches, failures, verdict."""
        lines = ["Timeline (second since start, by send time):"]
        lines += render_timeline(self.timeline(collapse=True)) or ["  (no requests)"]
        lines += ["", *self._render_table()]
        switches = self.switches()
        if switches:
            lines += ["", "Version switches (first/last seen, s since start):"]
            for url, versions in switches.items():
                parts = [f"{name} first {seen.first:.1f} s, last {seen.last:.1f} s ({seen.count:,})"
                         for name, seen in versions.items()]
                lines.append(f"  {url}: " + "; ".join(parts))
        if self.recorder.failures:
            shown = self.recorder.failures[:max_failures_listed]
            lines += ["", f"Failures (first {len(shown)} of {len(self.recorder.failures):,}):"]
            lines += [f"  {f.t:8.3f}s  {_iso(self.started_wall + f.t)}  {f.url}  {f.reason}" for f in shown]
        notes = [f"elapsed {self.elapsed:.1f} s", f"{self.total / self.elapsed if self.elapsed else 0:,.0f} req/s"]
        if self.cancelled_in_flight:
            notes.append(f"{self.cancelled_in_flight} in-flight request(s) cancelled at stop, not counted")
        if self.recorder.stale_retries:
            notes.append(f"{len(self.recorder.stale_retries)} GET(s) retried once after the server closed an idle "
                         "keep-alive connection, as browsers do (retry_stale)")
        if self.interrupted:
            notes.append("interrupted")
        lines += ["", "(" + ", ".join(notes) + ")"]
        status = "PASS" if self.ok else (f"FAIL (max allowed {self.settings.max_failures:,})" if self.total
                                         else "FAIL (no request completed)")
        lines.append(f"{status}: {self.verdict()}")
        return "\n".join(lines)

    def _render_table(self) -> list[str]:
        classes = self.failure_classes()
        header = ["url", "requests", "ok", *classes, "p50", "p95", "p99", "max", "versions"]
        rows = [self._table_row(s.url, s.counts, latency_summary(s.latencies), s.versions, classes)
                for s in self.recorder.urls.values()]
        rows.append(self._table_row("TOTAL", self.counts, self.latency, self.versions(), classes))
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        fmt = lambda r: "  ".join(  # noqa: E731
            c.ljust(w) if i in (0, len(r) - 1) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
        ).rstrip()
        sep = "-" * len(fmt(header))
        return [fmt(header), sep, *map(fmt, rows[:-1]), sep, fmt(rows[-1]), "(latencies in ms, 2xx only)"]

    @staticmethod
    def _table_row(name: str, counts: Mapping[str, int], lat: Mapping[str, Any],
                   versions: Mapping[str, VersionSeen], classes: list[str]) -> list[str]:
        total = sum(counts.values())
        version_text = ", ".join(f"{v} ({s.count:,})" for v, s in _by_first_seen(versions).items()) or "-"
        return [name, f"{total:,}", f"{counts.get(OK, 0):,}", *(f"{counts.get(c, 0):,}" for c in classes),
                _fmt_ms(lat["p50"]), _fmt_ms(lat["p95"]), _fmt_ms(lat["p99"]), _fmt_ms(lat["max"]),
                version_text]


def _by_first_seen(versions: Mapping[str, VersionSeen]) -> dict[str, VersionSeen]:
    return dict(sorted(versions.items(), key=lambda kv: (kv[1].first, kv[0])))


# --------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------

class TokenSchedule:
    """Shared absolute pacing: token k is due at ``start + k / rate``.

    Workers reserve the next due time and sleep until it, so the total rate is
    exact regardless of how many workers there are or how long each request
    takes (no per-worker drift). If all workers were blocked (e.g. a stalled
    server) and the schedule fell more than ``max_lag`` seconds behind, it is
    re-anchored so at most ``max_lag * rate`` overdue requests are fired as a
    catch-up burst.
    """

    def __init__(self, rate: float, start: float, max_lag: float = MAX_SCHEDULE_LAG) -> None:
        self.interval = 1.0 / rate
        self.next_due = start
        self.max_lag = max_lag

    def reserve(self, now: float) -> float:
        """Claim the next token; returns the (monotonic) time it is due."""
        due = max(self.next_due, now - self.max_lag)
        self.next_due = due + self.interval
        return due


class _Context:
    """State shared by the workers of one run."""

    def __init__(self, settings: VerifySettings, recorder: Recorder) -> None:
        self.settings = settings
        self.recorder = recorder
        self.urls = list(settings.urls)
        self.counter = itertools.count()
        self.start = recorder.started_mono
        self.deadline = self.start + settings.duration if settings.duration else None
        self.schedule = TokenSchedule(settings.rate, self.start) if settings.rate else None
        self.pattern = _compile(settings.version_regex) if settings.version_regex else None
        self.need_body = settings.version_header is None and self.pattern is not None
        self.in_flight = 0
        self.stopping = False  # set when stopping: workers send nothing new


def _make_clients(settings: VerifySettings, transport: httpx.AsyncBaseTransport | None) -> list[httpx.AsyncClient]:
    """One keep-alive client per worker: no redirects, no proxies from the environment.

    Each worker has its own small pool (one connection per origin it talks
    to), so ``concurrency`` workers hold at most ``concurrency`` connections
    per origin. Why not one shared pool of ``concurrency`` connections:
    httpcore's pool re-scans all its connections (quadratically) on every
    request, which measured 230 req/s at 32 connections against a local Caddy,
    versus ~850 req/s with per-worker pools. The TLS context is built once and
    shared (building one costs ~25 ms).
    """
    origins = len({(u.scheme, u.host, u.port) for u in map(httpx.URL, settings.urls)})
    limits = httpx.Limits(max_connections=origins, max_keepalive_connections=origins)
    verify = httpx.create_ssl_context() if transport is None else True
    headers = {"User-Agent": USER_AGENT, **settings.headers}
    return [
        httpx.AsyncClient(transport=transport, limits=limits, verify=verify,
                          timeout=httpx.Timeout(settings.timeout), follow_redirects=False,
                          trust_env=False, headers=headers)
        for _ in range(settings.concurrency)
    ]


async def _read_head(response: httpx.Response, limit: int = BODY_LIMIT) -> bytes:
    """Read at most ``limit`` bytes of the (decoded) body.

    Small bodies with a Content-Length are read whole, which keeps the
    connection reusable; longer bodies are cut off and their connection closed.
    """
    length = response.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) <= limit:
        return await response.aread()
    chunks: list[bytes] = []
    size = 0
    stream = response.aiter_bytes()
    try:
        async for chunk in stream:
            chunks.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
    finally:
        await stream.aclose()
    return b"".join(chunks)[:limit]


def _is_stale_connection(exc: BaseException) -> bool:
    """The server closed a kept-alive connection before sending any of the response."""
    return isinstance(exc, httpx.RemoteProtocolError) and "without sending a response" in str(exc)


async def _fetch(ctx: _Context, client: httpx.AsyncClient, url: str,
                 reused: bool = False, t: float = 0.0) -> tuple[str, str, str | None]:
    """One GET; returns (class, reason, version). Cancellation propagates.

    ``reused``: the worker's client holds a kept-alive connection from an earlier request,
    so an immediate close without a response is the idle-connection race and the GET is
    retried once on a new connection (when ``retry_stale``).
    """
    settings = ctx.settings
    attempts = 2 if (reused and settings.retry_stale) else 1
    for attempt in range(attempts):
        try:
            async with asyncio.timeout(settings.timeout):
                async with client.stream("GET", url) as response:
                    body = await _read_head(response)
            break
        except TimeoutError:
            return TIMEOUT, f"{TIMEOUT}: no complete response within {settings.timeout:g} s", None
        except Exception as exc:  # every transport problem is a measured outcome
            if attempt + 1 < attempts and _is_stale_connection(exc):
                ctx.recorder.stale_retries.append((t, url))
                continue
            kind = classify_exception(exc)
            return kind, f"{kind}: {describe_exception(exc)}", None
    kind = classify_status(response.status_code)
    if kind != OK:
        return kind, f"{kind}: {response.reason_phrase or 'no reason'}".rstrip(), None
    if settings.version_header is not None:
        version = response.headers.get(settings.version_header)
        return OK, "", version.strip() if version else None
    if ctx.need_body:
        return OK, "", extract_version(ctx.pattern, body.decode("utf-8", "replace"))
    return OK, "", None


async def _next_slot(ctx: _Context) -> bool:
    """Wait for this worker's next turn; False when the run's duration is used up."""
    if ctx.stopping:
        return False
    now = time.monotonic()
    if ctx.schedule is not None:
        due = ctx.schedule.reserve(now)
        if ctx.deadline is not None and due >= ctx.deadline:
            return False
        if due > now:
            await asyncio.sleep(due - now)
        return not ctx.stopping
    return ctx.deadline is None or now < ctx.deadline


async def _worker(ctx: _Context, client: httpx.AsyncClient) -> None:
    """Send requests round-robin over the URLs until told to stop."""
    urls, n = ctx.urls, len(ctx.urls)
    reused = False  # does this worker's client hold a kept-alive connection?
    while await _next_slot(ctx):
        url = urls[next(ctx.counter) % n]
        sent = time.monotonic()
        ctx.in_flight += 1
        try:
            kind, reason, version = await _fetch(ctx, client, url, reused, sent - ctx.start)
        finally:
            ctx.in_flight -= 1
        done = time.monotonic()
        reused = kind not in (CONNECT_ERROR, READ_ERROR, TIMEOUT)
        ctx.recorder.record(url, sent - ctx.start, done - sent, kind, reason, version)


async def _wait_for_stop(ctx: _Context, workers: list[asyncio.Task[None]],
                         stop_event: threading.Event | None) -> None:
    """Return when the stop event is set, the duration is over, all workers
    finished, or one of them crashed."""
    while True:
        if stop_event is not None and stop_event.is_set():
            return
        if all(w.done() for w in workers):
            return
        if any(w.done() and not w.cancelled() and w.exception() is not None for w in workers):
            return
        now = time.monotonic()
        if ctx.deadline is not None and now >= ctx.deadline:
            return
        wait = POLL_INTERVAL if ctx.deadline is None else min(POLL_INTERVAL, ctx.deadline - now)
        await asyncio.sleep(max(wait, 0.001))


async def _run_async(settings: VerifySettings, recorder: Recorder,
                     stop_event: threading.Event | None,
                     transport: httpx.AsyncBaseTransport | None,
                     finish_in_flight: bool = False) -> None:
    """Run the workers until stopped. In-flight requests are then cancelled and not
    counted; with ``finish_in_flight`` they first get up to ``timeout`` s to finish."""
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(c) for c in _make_clients(settings, transport)]
        recorder.restart_clock()
        ctx = _Context(settings, recorder)
        workers = [asyncio.create_task(_worker(ctx, c)) for c in clients]
        try:
            await _wait_for_stop(ctx, workers, stop_event)
            if finish_in_flight:
                ctx.stopping = True
                limit = time.monotonic() + settings.timeout
                while ctx.in_flight and time.monotonic() < limit and not all(w.done() for w in workers):
                    await asyncio.sleep(0.02)
        finally:
            recorder.stopped_mono = time.monotonic()
            recorder.cancelled_in_flight = ctx.in_flight
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        for task in workers:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # a bug in the loop itself, not a measured failure


def run(settings: VerifySettings, stop_event: threading.Event | None = None, *,
        transport: httpx.AsyncBaseTransport | None = None, finish_in_flight: bool = False) -> Report:
    """Run the loop in the foreground until ``settings.duration`` or ``stop_event``.

    Ctrl-C (KeyboardInterrupt) stops the loop and still returns the report of
    what was measured, marked ``interrupted``. ``transport`` is for tests
    (e.g. ``httpx.MockTransport``).
    """
    recorder = Recorder(settings.urls)
    interrupted = False
    try:
        asyncio.run(_run_async(settings, recorder, stop_event, transport, finish_in_flight))
    except KeyboardInterrupt:
        interrupted = True
    if recorder.stopped_mono is None:
        recorder.stopped_mono = time.monotonic()
    return Report(settings, recorder, interrupted=interrupted)


class BackgroundLoop:
    """The loop in a daemon thread with its own event loop, e.g. during a deploy.

    >>> loop = BackgroundLoop(settings).start()
    >>> ...deploy...
    >>> report = loop.stop()
    """

    def __init__(self, settings: VerifySettings, *, transport: httpx.AsyncBaseTransport | None = None,
                 finish_in_flight: bool = False) -> None:
        """``finish_in_flight``: at stop, send nothing new and let requests in flight finish
        (up to ``timeout``), so every request sent during a deploy gets its verdict."""
        self.settings = settings
        self._transport = transport
        self._finish = finish_in_flight
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._report: Report | None = None
        self._error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "BackgroundLoop":
        """Start the loop thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("BackgroundLoop already started")
        self._thread = threading.Thread(target=self._main, name="zdd-verify", daemon=True)
        self._thread.start()
        return self

    def _main(self) -> None:
        try:
            self._report = run(self.settings, self._stop, transport=self._transport, finish_in_flight=self._finish)
        except BaseException as exc:  # re-raised in stop()
            self._error = exc

    def stop(self, timeout: float | None = None) -> Report:
        """Stop (cancelling in-flight requests, which are not counted) and return the report."""
        if self._thread is None:
            raise RuntimeError("BackgroundLoop was never started")
        self._stop.set()
        limit = timeout if timeout is not None else self.settings.timeout * (2 if self._finish else 1) + 5.0
        self._thread.join(limit)
        if self._thread.is_alive():
            raise RuntimeError(f"verification loop did not stop within {limit:g} s")
        if self._error is not None:
            raise self._error
        assert self._report is not None
        return self._report

    def __enter__(self) -> "BackgroundLoop":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is not None and self._report is None and self._error is None:
            self.stop()


def settings_for_host(vc: Any, **overrides: Any) -> VerifySettings:
    """VerifySettings from a host's ``verify`` table (config.VerifyConfig); overrides that
    are None are ignored, so CLI flags win only when given."""
    values: dict[str, Any] = {
        "urls": list(vc.urls),
        "concurrency": vc.concurrency,
        "rate": vc.rate or None,
        "timeout": vc.timeout,
        "version_regex": vc.version_regex or None,
        "version_header": vc.version_header or None,
        "max_failures": vc.max_failures,
        "retry_stale": vc.retry_stale,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return VerifySettings(**values)


def run_and_print(settings: VerifySettings, json_path: str | None = None) -> Report:
    """Run in the foreground (Ctrl-C ends it), print the report, write JSON if asked."""
    report = run(settings)
    print(report.render())
    if json_path:
        report.write_json(json_path)
    return report
