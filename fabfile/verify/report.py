"""The results of one verification run: figures, verdict, and the JSON form.

``Report.render()`` returns the text report (see render.py); nothing here prints.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

from . import render
from .figures import TimelineRow, collapse_timeline, latency_summary, second_ranges, timeline_from_buckets
from .recorder import OK, Failure, Recorder, UrlStats
from .settings import VerifySettings
from .versions import VersionSeen, by_first_seen, merge_versions


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
        return merge_versions(s.versions for s in self.recorder.urls.values())

    def switches(self) -> dict[str, dict[str, VersionSeen]]:
        """Per URL that served two or more versions: each version's first/last seen."""
        return {url: by_first_seen(stats.versions)
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
        seconds = second_ranges(int(f.t) for f in self.recorder.failures)
        return f"{head} ({classes}), p99 {p99_text}; failing URLs: {urls}; failing seconds: {seconds}"

    # -- output ------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-serialisable, including every failure."""
        return report_dict(self)

    def write_json(self, path: str | Path) -> Path:
        """Write ``to_dict()`` as indented JSON; returns the path."""
        target = Path(path)
        target.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return target

    def render(self, max_failures_listed: int = 20) -> str:
        """Human-readable report: timeline, per-URL table, switches, failures, verdict."""
        return render.render_report(self, max_failures_listed)


# -- the JSON form ------------------------------------------------------------

def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def version_dicts(started_wall: float, versions: Mapping[str, VersionSeen]) -> list[dict[str, Any]]:
    """Each version's count and first/last seen, in seconds since start and as ISO times."""
    return [{
        "version": name,
        "count": seen.count,
        "first_s": _round(seen.first),
        "last_s": _round(seen.last),
        "first_at": render.iso(started_wall + seen.first),
        "last_at": render.iso(started_wall + seen.last),
    } for name, seen in versions.items()]


def _url_dict(report: Report, stats: UrlStats) -> dict[str, Any]:
    return {
        "url": stats.url,
        "requests": stats.total,
        "ok": stats.ok,
        "failures": stats.total - stats.ok,
        "counts": dict(stats.counts),
        "latency_ms": {k: _round(v) for k, v in latency_summary(stats.latencies).items()},
        "versions": version_dicts(report.started_wall, by_first_seen(stats.versions)),
    }


def _failure_dict(report: Report, f: Failure) -> dict[str, Any]:
    return {
        "t": _round(f.t),
        "time": render.iso(report.started_wall + f.t),
        "url": f.url,
        "kind": f.kind,
        "reason": f.reason,
        "latency_ms": _round(f.latency_ms),
    }


def report_dict(report: Report) -> dict[str, Any]:
    """Everything in a report, JSON-serialisable, including every failure."""
    wall = report.started_wall
    return {
        "verdict": report.verdict(),
        "ok": report.ok,
        "total": report.total,
        "failures": report.failures,
        "max_failures": report.settings.max_failures,
        "started_at": render.iso(wall),
        "elapsed_s": _round(report.elapsed),
        "rate_achieved": _round(report.total / report.elapsed if report.elapsed else 0.0, 1),
        "interrupted": report.interrupted,
        "cancelled_in_flight": report.cancelled_in_flight,
        "stale_retries": [{"t": _round(t), "url": u} for t, u in report.recorder.stale_retries],
        "settings": report.settings.to_dict(),
        "counts": dict(report.counts),
        "latency_ms": {k: _round(v) for k, v in report.latency.items()},
        "urls": [_url_dict(report, s) for s in report.recorder.urls.values()],
        "versions": version_dicts(wall, report.versions()),
        "switches": {u: version_dicts(wall, v) for u, v in report.switches().items()},
        "timeline": [{"second": r.start, "requests": r.requests, "failures": r.failures}
                     for r in report.timeline()],
        "failure_list": [_failure_dict(report, f) for f in report.recorder.failures],
    }
