"""The text report: timeline, per-URL table, websockets, version switches, failures, verdict.

Plain ASCII apart from the URLs themselves; returned as a string, never printed. The
functions take a :class:`fabfile.verify.report.Report` (which imports this module, never the
other way round).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from .figures import latency_summary, render_timeline, second_ranges
from .recorder import OK
from .versions import VersionSeen, by_first_seen


def iso(wall: float) -> str:
    """A wall-clock time as ISO 8601 in UTC, to the millisecond."""
    return datetime.fromtimestamp(wall, tz=UTC).isoformat(timespec="milliseconds")


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f}" if value < 10 else f"{value:,.0f}"


def close_codes(codes: Mapping[int | None, int]) -> str:
    """``{1001: 4, None: 1}`` -> ``"close 1001: 4, no close code: 1"``."""
    ordered = sorted(codes.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))
    return ", ".join(f"{'no close code' if code is None else f'close {code}'}: {n:,}" for code, n in ordered)


def render_report(report: Any, max_failures_listed: int = 20) -> str:
    """Human-readable report: timeline, per-URL table, websockets, switches, failures, verdict."""
    lines: list[str] = []
    if report.settings.urls:
        lines += ["Timeline (second since start, by send time):"]
        lines += render_timeline(report.timeline(collapse=True)) or ["  (no requests)"]
        lines += ["", *_table(report)]
    if report.settings.ws_urls:
        lines += ["", *_ws_table(report)] if lines else _ws_table(report)
    lines += _switches(report)
    lines += _failures(report, max_failures_listed)
    lines += ["", "(" + ", ".join(_notes(report)) + ")"]
    lines.append(f"{_status(report)}: {report.verdict()}")
    return "\n".join(lines)


def _switches(report: Any) -> list[str]:
    switches = report.switches()
    if not switches:
        return []
    lines = ["", "Version switches (first/last seen, s since start):"]
    for url, versions in switches.items():
        parts = [
            f"{name} first {seen.first:.1f} s, last {seen.last:.1f} s ({seen.count:,})"
            for name, seen in versions.items()
        ]
        lines.append(f"  {url}: " + "; ".join(parts))
    return lines


def _failures(report: Any, limit: int) -> list[str]:
    failures = report.recorder.failures
    if not failures:
        return []
    shown = failures[:limit]
    lines = ["", f"Failures (first {len(shown)} of {len(failures):,}):"]
    lines += [f"  {f.t:8.3f}s  {iso(report.started_wall + f.t)}  {f.url}  {f.reason}" for f in shown]
    return lines


def _notes(report: Any) -> list[str]:
    notes = [f"elapsed {report.elapsed:.1f} s"]
    if report.settings.urls:
        notes.append(f"{report.total / report.elapsed if report.elapsed else 0:,.0f} req/s")
    if report.cancelled_in_flight:
        notes.append(f"{report.cancelled_in_flight} in-flight request(s) cancelled at stop, not counted")
    if report.recorder.stale_retries:
        notes.append(
            f"{len(report.recorder.stale_retries)} GET(s) retried once after the server closed an idle "
            "keep-alive connection, as browsers do (retry_stale)"
        )
    if report.interrupted:
        notes.append("interrupted")
    return notes


def _status(report: Any) -> str:
    if report.ok:
        return "PASS"
    if report.http_ok:
        return "FAIL (websockets)"
    if report.total:
        return f"FAIL (max allowed {report.settings.max_failures:,})"
    return "FAIL (no request completed)"


def columns(header: list[str], rows: list[list[str]], align: str = "") -> list[str]:
    """Aligned columns; ``align`` has an ``l`` or ``r`` per column (default: the first and
    last left-aligned, the others right-aligned)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    align = align or "l" + "r" * (len(header) - 2) + "l"

    def fmt(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align)).rstrip()

    return [fmt(header), "-" * len(fmt(header)), *map(fmt, rows)]


def _table(report: Any) -> list[str]:
    classes = report.failure_classes()
    header = ["url", "requests", "ok", *classes, "p50", "p95", "p99", "max", "versions"]
    rows = [
        _table_row(s.url, s.counts, latency_summary(s.latencies), s.versions, classes)
        for s in report.recorder.urls.values()
    ]
    total = _table_row("TOTAL", report.counts, report.latency, report.versions(), classes)
    lines = columns(header, [*rows, total])
    return [*lines[:-1], lines[1], lines[-1], "(latencies in ms, 2xx only)"]


def _ws_table(report: Any) -> list[str]:
    """One row per websocket URL, then a line per URL that lost connections."""
    header = ["websocket", "held", "opened", "messages", "disconnects", "reconnect failures", "longest gap", "versions"]
    rows = [
        [
            s.url,
            f"{s.connections:,}",
            f"{s.opened:,}",
            f"{s.messages:,}",
            f"{len(s.disconnects):,}",
            f"{s.reconnect_failures:,}",
            f"{s.longest_gap:.2f} s",
            _versions_text(s.versions),
        ]
        for s in report.ws.urls.values()
    ]
    lines = columns(header, rows)
    for s in report.ws.urls.values():
        if s.disconnects:
            seconds = second_ranges(int(d.t) for d in s.disconnects)
            lines.append(f"  {s.url}: {close_codes(s.close_codes())}; disconnects at {seconds}")
        open_gaps = sum(not g.recovered for g in s.gaps)
        if open_gaps:
            lines.append(f"  {s.url}: {open_gaps} connection(s) still broken at stop")
    interval = report.settings.ws_interval
    lines.append(
        f"(a message every {interval:g} s per connection; gap: from a working connection "
        "breaking until a new one answered)"
    )
    return lines


def _table_row(
    name: str,
    counts: Mapping[str, int],
    lat: Mapping[str, Any],
    versions: Mapping[str, VersionSeen],
    classes: list[str],
) -> list[str]:
    total = sum(counts.values())
    return [
        name,
        f"{total:,}",
        f"{counts.get(OK, 0):,}",
        *(f"{counts.get(c, 0):,}" for c in classes),
        fmt_ms(lat["p50"]),
        fmt_ms(lat["p95"]),
        fmt_ms(lat["p99"]),
        fmt_ms(lat["max"]),
        _versions_text(versions),
    ]


def _versions_text(versions: Mapping[str, VersionSeen]) -> str:
    return ", ".join(f"{v} ({s.count:,})" for v, s in by_first_seen(versions).items()) or "-"
