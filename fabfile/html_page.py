"""The HTML page of a run: ``deploy --report FILE.html`` and ``inv verify --report FILE.html``.

Pure: a document (see outcome.py) in, one self-contained page out: inline CSS and inline
SVG, no script, nothing fetched. Per host: the result and verify verdict; per URL a chart of
requests and failures per second (by send time) with a band per version (first to last
seen, one colour per version) and a dashed line where the proxy was switched to a service's
new containers; websocket URLs with their disconnects and gaps; each tier's timeline (a bar per
service, a colour per phase, by the host's clock); then the steps and notes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

from .summary import HOSTS_HEADER, host_rows
from .timeline import PHASES

# one colour per version, in order of first sighting (then round again)
PALETTE = ("#2b6cb0", "#2f855a", "#b7791f", "#6b46c1", "#c05621", "#2c7a7b", "#b83280", "#4a5568")

WIDTH, LEFT, RIGHT, TOP = 960, 56, 16, 30
BARS, LANE, AXIS = 120, 16, 22
PLOT = WIDTH - LEFT - RIGHT
# a tier's timeline: one colour per phase, a row per service under labels this wide
PHASE_COLOURS = dict(
    zip(PHASES, ("#a0aec0", "#90cdf4", "#2b6cb0", "#f6e05e", "#6b46c1", "#c05621", "#2f855a", "#cbd5e0"), strict=True)
)
LABELS, ROW = 190, 20

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1000px;color:#1a202c}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 6px;border-top:1px solid #e2e8f0;padding-top:14px}
h3{font-size:14px;margin:14px 0 4px;font-weight:600;word-break:break-all}
.ok,.pass{color:#276749}.failed,.fail,.interrupted{color:#c53030}.warned{color:#b7791f}.skipped,.notrun,.muted{color:#718096}
.verdict{padding:8px 12px;border-radius:6px;background:#f0fff4;border:1px solid #9ae6b4}
.verdict.fail{background:#fff5f5;border-color:#feb2b2}.error{font-weight:600}
table{border-collapse:collapse;width:100%;margin:8px 0}
th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #edf2f7;vertical-align:top}
td.num{text-align:right;white-space:nowrap}figure{margin:10px 0 18px}figcaption{font-size:13px;color:#4a5568}
svg{display:block;background:#fff;border:1px solid #e2e8f0;border-radius:4px}
svg text{font:11px system-ui,sans-serif;fill:#4a5568}.legend span{display:inline-block;margin-right:14px}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-1px;margin-right:4px}
"""


def write(path: str | Path, doc: dict[str, Any]) -> None:
    Path(path).write_text(render(doc), encoding="utf-8")


def render(doc: dict[str, Any]) -> str:
    """The whole page for a run's document."""
    names = ", ".join(h["host"] for h in doc["hosts"] if h["host"])
    title = f"zdd {doc['title']}: {doc['result']}" + (f" ({names})" if names else "")
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="muted">{escape(_when(doc.get("started_at")))}{_duration(doc.get("duration_s"))}</p>',
    ]
    if len(doc["hosts"]) > 1:
        body.append(_hosts_table(doc["hosts"]))
    body += [_host(h, several=len(doc["hosts"]) > 1) for h in doc["hosts"]]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


# --- pieces of the page ----------------------------------------------------------------------


def _when(iso: str | None) -> str:
    return f"started {iso.replace('T', ' ')[:19]} UTC" if iso else ""


def _duration(seconds: float | None) -> str:
    return "" if seconds is None else f", {seconds:.1f} s"


def _result_class(result: str) -> str:
    return result.replace(" ", "")


def _hosts_table(hosts: list[dict[str, Any]]) -> str:
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td{cls}>{escape(text)}</td>"
            for cls, text in zip(("", f' class="{_result_class(row[1])}"', ' class="num"', ' class="num"', ""), row)
        )
        + "</tr>"
        for row in host_rows({"hosts": hosts})
    )
    return f'<table class="hosts"><tr>{"".join(f"<th>{h}</th>" for h in HOSTS_HEADER)}</tr>{rows}</table>'


def _host(h: dict[str, Any], several: bool) -> str:
    heading = (
        f'{escape(h["host"] or h["title"])}: <span class="{_result_class(h["result"])}">{escape(h["result"])}</span>'
    )
    out = [
        f'<section class="host" data-host="{escape(h["host"])}" data-result="{escape(h["result"])}">',
        f"<h2>{heading}</h2>" if several or h["host"] else "",
    ]
    if h["result"] == "not run":
        out.append('<p class="muted">not run: an earlier host failed</p></section>')
        return "\n".join(out)
    if h.get("dry_run"):
        out.append('<p class="muted">dry run: nothing was changed on the host</p>')
    if h.get("error"):
        out.append(f'<p class="error failed">{escape(h["error"])}</p>')
    report = h.get("verify")
    if report:
        status = "pass" if report["ok"] else "fail"
        out.append(f'<p class="verdict {status}"><strong>{status.upper()}</strong> {escape(report["verdict"])}</p>')
        out += _charts(report, _switch_times(h, report))
    elif h["title"] != "verify":
        out.append('<p class="muted">no verify loop ran (no verify URLs, --no-verify, or a dry run)</p>')
    if h.get("timeline"):
        out.append(_timeline(h["timeline"]))
    if h.get("steps"):
        out.append(_steps_table(h["steps"]))
    if h.get("notes") or h.get("cost"):
        notes = list(h.get("notes") or [])
        if h.get("cost"):
            notes.append(
                f"cost: {h['cost']['remote_commands']} remote commands, {h['cost']['proxy_loads']} proxy loads"
            )
        out.append('<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>")
    out.append("</section>")
    return "\n".join(x for x in out if x)


def _steps_table(steps: list[dict[str, Any]]) -> str:
    rows = "".join(
        f'<tr class="step"><td>{escape(s["name"])}</td><td class="{escape(s["status"])}">{escape(s["status"])}</td>'
        f'<td class="num">{s["seconds"]:.1f} s</td><td>{escape(s["detail"])}</td></tr>'
        for s in steps
    )
    return f'<table class="steps"><tr><th>step</th><th>result</th><th>time</th><th>detail</th></tr>{rows}</table>'


# --- charts ----------------------------------------------------------------------------------


def _seconds_between(start_iso: str, iso: str) -> float:
    return (datetime.fromisoformat(iso) - datetime.fromisoformat(start_iso)).total_seconds()


def _switch_times(h: dict[str, Any], report: dict[str, Any]) -> list[tuple[float, str]]:
    """(seconds since the loop started, "server, property") of each switch, services switched
    together on one line."""
    by_time: dict[float, list[str]] = {}
    for s in h.get("switches") or []:
        t = round(_seconds_between(report["started_at"], s["at"]), 2)
        by_time.setdefault(t, []).append(s["service"])
    return sorted((t, ", ".join(names)) for t, names in by_time.items())


def _colours(report: dict[str, Any]) -> dict[str, str]:
    names = [v["version"] for v in report.get("versions") or []]
    for ws in report.get("websockets") or []:
        names += [v["version"] for v in ws["versions"] if v["version"] not in names]
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def _charts(report: dict[str, Any], switches: list[tuple[float, str]]) -> list[str]:
    colours = _colours(report)
    span = max(float(report.get("elapsed_s") or 0), len(report.get("timeline") or []), 1.0)
    out = []
    if colours:
        out.append(
            '<p class="legend">'
            + "".join(
                f'<span><i class="swatch" style="background:{c}"></i>{escape(v)}</span>' for v, c in colours.items()
            )
            + "</p>"
        )
    for url in report.get("urls") or []:
        failed = f", {url['failures']:,} failed" if url["failures"] else ", none failed"
        out.append(
            _figure(url["url"], f"{url['requests']:,} requests{failed}", _http_chart(url, span, colours, switches))
        )
    for ws in report.get("websockets") or []:
        n = ws["disconnects"]
        caption = (
            f"websocket: {ws['connections']} held, {n:,} disconnect{'' if n == 1 else 's'}, longest gap "
            f"{ws['longest_gap_s'] or 0:.2f} s"
        )
        out.append(_figure(ws["url"], caption, _ws_chart(ws, span, colours, switches)))
    return out


def _figure(url: str, caption: str, svg: str) -> str:
    return (
        f'<figure class="chart" data-url="{escape(url)}"><h3>{escape(url)}</h3>{svg}'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


class _Plot:
    """x from seconds since the loop started; lanes of version bands under the bars."""

    def __init__(self, span: float, versions: list[dict[str, Any]], bars: int):
        self.span, self.versions, self.bars = span, versions, bars
        self.lanes_top = TOP + bars + 6
        self.height = self.lanes_top + LANE * max(len(versions), 1) + AXIS

    def x(self, t: float) -> float:
        return LEFT + max(0.0, min(t, self.span)) / self.span * PLOT

    def open(self, label: str) -> list[str]:
        return [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{self.height}" '
            f'viewBox="0 0 {WIDTH} {self.height}" role="img" aria-label="{escape(label)}">'
        ]

    def bands(self, colours: dict[str, str]) -> list[str]:
        out = []
        for i, v in enumerate(self.versions):
            y = self.lanes_top + i * LANE
            x0, x1 = self.x(v["first_s"]), self.x(v["last_s"])
            tip = f"{v['version']}: {v['count']:,} seen, first {v['first_s']:.1f} s, last {v['last_s']:.1f} s"
            out.append(
                f'<rect class="band" data-version="{escape(v["version"])}" x="{x0:.1f}" y="{y}" '
                f'width="{max(x1 - x0, 2):.1f}" height="{LANE - 3}" rx="2" '
                f'fill="{colours.get(v["version"], PALETTE[-1])}"><title>{escape(tip)}</title></rect>'
            )
            out.append(f'<text x="{LEFT - 4}" y="{y + LANE - 6}" text-anchor="end">{escape(v["version"][:9])}</text>')
        return out

    def axis(self) -> list[str]:
        return _axis(self.x, self.span, self.height - AXIS + 4, LEFT)

    def switches(self, switches: list[tuple[float, str]]) -> list[str]:
        out = []
        for i, (t, names) in enumerate(switches):
            x = self.x(t)
            out.append(
                f'<line class="switch" data-service="{escape(names)}" x1="{x:.1f}" x2="{x:.1f}" '
                f'y1="{TOP - 4}" y2="{self.height - AXIS + 4}" stroke="#1a202c" stroke-dasharray="4 3">'
                f"<title>{escape(names)} switched at {t:.1f} s</title></line>"
            )
            out.append(f'<text x="{x + 3:.1f}" y="{10 + 11 * (i % 2)}">{escape(names)}</text>')
        return out


def _http_chart(url: dict[str, Any], span: float, colours: dict[str, str], switches: list[tuple[float, str]]) -> str:
    rows = url.get("timeline") or []
    top = max((r["requests"] for r in rows), default=0) or 1
    plot = _Plot(span, url.get("versions") or [], BARS)
    width = max(PLOT / span - 1, 1)
    out = plot.open(f"requests and failures per second for {url['url']}")
    out += [
        f'<text x="{LEFT - 4}" y="{TOP + 8}" text-anchor="end">{top:,}/s</text>',
        f'<text x="{LEFT - 4}" y="{TOP + BARS}" text-anchor="end">0</text>',
    ]
    for r in rows:
        x, tip = plot.x(r["second"]), f"second {r['second']}: {r['requests']:,} requests, {r['failures']:,} failed"
        if r["requests"]:
            h = r["requests"] / top * BARS
            out.append(
                f'<rect class="req" x="{x:.1f}" y="{TOP + BARS - h:.1f}" width="{width:.1f}" '
                f'height="{h:.1f}" fill="#a3bffa"><title>{tip}</title></rect>'
            )
        if r["failures"]:
            h = max(r["failures"] / top * BARS, 3)  # a failing second is never too thin to see
            out.append(
                f'<rect class="fail" x="{x:.1f}" y="{TOP + BARS - h:.1f}" width="{width:.1f}" '
                f'height="{h:.1f}" fill="#e53e3e"><title>{tip}</title></rect>'
            )
    out += plot.bands(colours) + plot.axis() + plot.switches(switches)
    return "".join(out) + "</svg>"


def _ws_chart(ws: dict[str, Any], span: float, colours: dict[str, str], switches: list[tuple[float, str]]) -> str:
    plot = _Plot(span, ws.get("versions") or [], 30)
    out = plot.open(f"disconnects and gaps for {ws['url']}")
    for g in ws.get("gaps") or []:
        x0, x1 = plot.x(g["start_s"]), plot.x(g["end_s"])
        out.append(
            f'<rect class="gap" x="{x0:.1f}" y="{TOP}" width="{max(x1 - x0, 2):.1f}" height="30" '
            f'fill="#feb2b2"><title>gap of {g["seconds"]:.2f} s (probe {g["probe"]})</title></rect>'
        )
    for d in ws.get("disconnect_list") or []:
        x = plot.x(d["t"])
        code = "no close code" if d["code"] is None else f"close {d['code']}"
        out.append(
            f'<line class="disconnect" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + 30}" '
            f'stroke="#e53e3e" stroke-width="2"><title>{d["t"]:.1f} s: {code}</title></line>'
        )
    out += plot.bands(colours) + plot.axis() + plot.switches(switches)
    return "".join(out) + "</svg>"


def _axis(x: Callable[[float], float], span: float, y: float, left: float) -> list[str]:
    """A line from ``left`` to the right edge at height ``y``, ticks in whole seconds."""
    step = next((s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600) if span / s <= 12), 1200)
    out = [f'<line x1="{left}" x2="{WIDTH - RIGHT}" y1="{y}" y2="{y}" stroke="#a0aec0"/>']
    for t in range(0, int(span) + 1, step):
        out.append(f'<text x="{x(t):.1f}" y="{y + 14}" text-anchor="middle">{t}s</text>')
    return out


# --- a host's tier timeline ------------------------------------------------------------------


def _timeline(tiers: list[dict[str, Any]]) -> str:
    """Each tier's phases (outcome.py's TIER), a bar per service, tiers one after the other:
    x in seconds from the first tier's start, by the host's clock. "" when no tier has a mark."""
    dated = [t for t in tiers if t.get("begin_at")]
    if not dated:
        return ""
    first = min((t["begin_at"] for t in dated), key=datetime.fromisoformat)
    rows = [
        (t, name, _seconds_between(first, t["begin_at"]), [p for p in t["phases"] if p["service"] == name])
        for t in dated
        for name in t["services"]
    ]
    span = max(max(offset + (t["seconds"] or 0) for t, _, offset, _ in rows), 1.0)
    height = 8 + ROW * len(rows) + AXIS

    def x(s: float) -> float:
        return LABELS + max(0.0, min(s, span)) / span * (WIDTH - LABELS - RIGHT)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="tier timeline">'
    ]
    for i, (t, name, offset, phases) in enumerate(rows):
        y, label = 8 + i * ROW, f"tier {t['tier']} · {name}"
        out.append(
            f'<g class="bar" data-tier="{t["tier"]}" data-service="{escape(name)}">'
            f'<text x="{LABELS - 6}" y="{y + ROW - 7}" text-anchor="end">{escape(_short(label, 30))}'
            f"<title>{escape(label)}</title></text>"
        )
        for p in phases:
            start, end = offset + p["start"], offset + p["end"]
            tip = f"{label}: {p['phase']} {max(end - start, 0):.2f} s ({start:.2f}–{end:.2f} s)"
            out.append(
                f'<rect class="phase" data-phase="{escape(p["phase"])}" x="{x(start):.1f}" y="{y + 2}" '
                f'width="{max(x(end) - x(start), 1):.1f}" height="{ROW - 5}" rx="2" '
                f'fill="{PHASE_COLOURS.get(p["phase"], PALETTE[-1])}"><title>{escape(tip)}</title></rect>'
            )
        out.append("</g>")
    out += _axis(x, span, height - AXIS + 4, LABELS)
    seen = {p["phase"] for t in dated for p in t["phases"]}
    legend = "".join(
        f'<span><i class="swatch" style="background:{PHASE_COLOURS.get(p, PALETTE[-1])}"></i>{escape(p)}</span>'
        for p in [*PHASES, *sorted(seen - set(PHASES))]
        if p in seen
    )
    return (
        f'<figure class="timeline"><h3>tier timeline</h3><p class="legend">{legend}</p>{"".join(out)}</svg>'
        "<figcaption>each tier's phases by the host's clock, in seconds from the first tier's start "
        "(hover a bar for its phase and time)</figcaption></figure>"
    )


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
