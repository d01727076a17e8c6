"""Pure arithmetic over recorded figures: nearest-rank percentiles and the per-second timeline.

Times are seconds since the loop started; a request belongs to the second in
which it was *sent*.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

TIMELINE_MAX_ROWS = 60  # longer timelines get failure-free runs collapsed


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


def second_ranges(seconds: Iterable[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5s, 9s"``."""
    ordered = sorted(set(seconds))
    parts = []
    for _, group in itertools.groupby(enumerate(ordered), key=lambda pair: pair[1] - pair[0]):
        block = [s for _, s in group]
        parts.append(f"{block[0]}s" if len(block) == 1 else f"{block[0]}-{block[-1]}s")
    return ", ".join(parts)
