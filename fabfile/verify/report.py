"""The results of one verification run: figures, verdict, and the JSON form.

``Report.render()`` returns the text report (see render.py); nothing here prints.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import render
from .figures import TimelineRow, collapse_timeline, latency_summary, second_ranges, timeline_from_buckets
from .recorder import OK, Failure, Recorder, UrlStats
from .settings import VerifySettings
from .versions import VersionSeen, by_first_seen, merge_versions
from .ws_stats import WsRecorder, WsUrlStats


class Report:
    """Results of one verification run (built once the loop has stopped)."""

    def __init__(
        self, settings: VerifySettings, recorder: Recorder, *, ws: WsRecorder | None = None, interrupted: bool = False
    ) -> None:
        self.settings = settings
        self.recorder = recorder
        self.ws = ws if ws is not None else WsRecorder(settings.ws_urls, settings.ws_connections)
        self.interrupted = interrupted
        self.elapsed = recorder.elapsed()
        self.started_wall = recorder.started_wall
        self.counts: Counter[str] = Counter()
        for stats in recorder.urls.values():
            self.counts.update(stats.counts)
        self.total = sum(self.counts.values())
        self.failures = self.total - self.counts.get(OK, 0)
        # what a client that never retries would have seen: the retried GETs failed too
        self.failures_without_retry = self.failures + len(recorder.stale_retries)
        # no completed request proves nothing: that is not a pass (nor is a silent websocket)
        self.http_ok = not settings.urls or (self.total > 0 and self.failures <= settings.max_failures)
        self.ws_ok = self.ws.ok(settings.max_ws_gap)
        self.ok = self.http_ok and self.ws_ok
        self.latency = latency_summary(itertools.chain.from_iterable(s.latencies for s in recorder.urls.values()))

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
        rows = timeline_from_buckets(self.recorder.requests_per_second, self.recorder.failures_per_second, self.elapsed)
        return collapse_timeline(rows) if collapse else rows

    def versions(self) -> dict[str, VersionSeen]:
        """Versions over all URLs, ordered by first seen."""
        return merge_versions(s.versions for s in self.recorder.urls.values())

    def switches(self) -> dict[str, dict[str, VersionSeen]]:
        """Per URL (HTTP or websocket) that served two or more versions: each one's first/last seen."""
        tables = [*self.recorder.urls.values(), *self.ws.urls.values()]
        return {stats.url: by_first_seen(stats.versions) for stats in tables if len(stats.versions) >= 2}

    # -- verdict -----------------------------------------------------------

    def verdict(self) -> str:
        """The HTTP verdict, then the websocket one; either is left out when it has no URLs."""
        parts = [self.http_verdict()] if self.settings.urls else []
        if self.settings.ws_urls:
            parts.append(self.ws_verdict())
        return "; ".join(parts)

    def http_verdict(self) -> str:
        """E.g. ``7 of 4,312 requests failed (status 502: 5, connect error: 2), 9 if never retried,
        p99 38 ms; failing URLs: ...; failing seconds: ...``."""
        p99 = self.latency["p99"]
        p99_text = "n/a" if p99 is None else f"{int(p99 + 0.5)} ms"
        head = f"{self.failures:,} of {self.total:,} requests failed"
        if self.failures:
            head += " (" + ", ".join(f"{k}: {n:,}" for k, n in self.failure_counts()) + ")"
        retry = (
            f"{self.failures_without_retry:,} if never retried" if self.settings.retry_stale else "client never retries"
        )
        text = f"{head}, {retry}, p99 {p99_text}"
        if not self.failures:
            return text
        per_url = Counter(f.url for f in self.recorder.failures)
        urls = ", ".join(f"{u} ({n:,})" for u, n in per_url.most_common())
        seconds = second_ranges(int(f.t) for f in self.recorder.failures)
        return f"{text}; failing URLs: {urls}; failing seconds: {seconds}"

    def ws_verdict(self) -> str:
        """E.g. ``websockets: 8 held, 4 disconnects (close 1001: 4), longest gap 0.21 s``."""
        ws = self.ws
        text = f"websockets: {ws.held:,} held, {ws.disconnects:,} disconnect{'' if ws.disconnects == 1 else 's'}"
        if ws.disconnects:
            text += f" ({render.close_codes(ws.close_codes())})"
        text += f", longest gap {ws.longest_gap:.2f} s"
        if self.settings.max_ws_gap is not None and ws.longest_gap > self.settings.max_ws_gap:
            text += f" (max allowed {self.settings.max_ws_gap:g} s)"
        silent = ws.silent()
        return text + (f"; never answered: {', '.join(silent)}" if silent else "")

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
    return [
        {
            "version": name,
            "count": seen.count,
            "first_s": _round(seen.first),
            "last_s": _round(seen.last),
            "first_at": render.iso(started_wall + seen.first),
            "last_at": render.iso(started_wall + seen.last),
        }
        for name, seen in versions.items()
    ]


def _url_dict(report: Report, stats: UrlStats) -> dict[str, Any]:
    return {
        "url": stats.url,
        "requests": stats.total,
        "ok": stats.ok,
        "failures": stats.total - stats.ok,
        "counts": dict(stats.counts),
        "latency_ms": {k: _round(v) for k, v in latency_summary(stats.latencies).items()},
        "versions": version_dicts(report.started_wall, by_first_seen(stats.versions)),
        "timeline": _timeline_dicts(
            timeline_from_buckets(stats.requests_per_second, stats.failures_per_second, report.elapsed)
        ),
    }


def _timeline_dicts(rows: list[TimelineRow]) -> list[dict[str, int]]:
    return [{"second": r.start, "requests": r.requests, "failures": r.failures} for r in rows]


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
        "http_ok": report.http_ok,
        "ws_ok": report.ws_ok,
        "total": report.total,
        "failures": report.failures,
        "failures_without_retry": report.failures_without_retry,
        "stale_retries": len(report.recorder.stale_retries),
        "max_failures": report.settings.max_failures,
        "started_at": render.iso(wall),
        "elapsed_s": _round(report.elapsed),
        "rate_achieved": _round(report.total / report.elapsed if report.elapsed else 0.0, 1),
        "interrupted": report.interrupted,
        "cancelled_in_flight": report.cancelled_in_flight,
        "stale_retry_list": [{"t": _round(t), "url": u} for t, u in report.recorder.stale_retries],
        "settings": report.settings.to_dict(),
        "counts": dict(report.counts),
        "latency_ms": {k: _round(v) for k, v in report.latency.items()},
        "urls": [_url_dict(report, s) for s in report.recorder.urls.values()],
        "versions": version_dicts(wall, report.versions()),
        "switches": {u: version_dicts(wall, v) for u, v in report.switches().items()},
        "timeline": _timeline_dicts(report.timeline()),
        "failure_list": [_failure_dict(report, f) for f in report.recorder.failures],
        "websockets": [_ws_dict(report, s) for s in report.ws.urls.values()],
    }


def _ws_dict(report: Report, stats: WsUrlStats) -> dict[str, Any]:
    wall = report.started_wall
    return {
        "url": stats.url,
        "connections": stats.connections,
        "opened": stats.opened,
        "messages": stats.messages,
        "disconnects": len(stats.disconnects),
        "close_codes": {"none" if code is None else str(code): n for code, n in stats.close_codes().items()},
        "reconnect_failures": stats.reconnect_failures,
        "reconnect_failure_reasons": dict(stats.connect_failures),
        "longest_gap_s": _round(stats.longest_gap),
        "gaps": [
            {
                "probe": g.probe,
                "start_s": _round(g.start),
                "end_s": _round(g.end),
                "seconds": _round(g.seconds),
                "recovered": g.recovered,
            }
            for g in stats.gaps
        ],
        "disconnect_list": [
            {"t": _round(d.t), "time": render.iso(wall + d.t), "probe": d.probe, "code": d.code, "reason": d.reason}
            for d in stats.disconnects
        ],
        "versions": version_dicts(wall, by_first_seen(stats.versions)),
    }
