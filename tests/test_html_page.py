"""The HTML page (deploy --report, inv verify --report): self-contained, one chart per URL with
version bands and switch marks, the steps and the verdict; read back with html.parser, and
once in a real headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from invoke import Config, Context

import tasks as inv_tasks
from fabfile import html_page, outcome
from fabfile.progress import StepRecord
from tests.fakes import (
    SWITCH_AT,
    WS,
    A,
    B,
    deploy,
    deploy_host,
    deploy_report,
    deploy_result,
    fake_session,
    tier_timeline,
)


class Page(HTMLParser):
    """Every start tag with its attributes, in order, and the text."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str, **match: str) -> list[dict[str, str]]:
        return [
            a
            for t, a in self.tags
            if t == tag
            and all(
                match[k] in a.get(k.replace("_", "-"), "").split() if k == "class" else a.get(k.replace("_", "-")) == v
                for k, v in match.items()
            )
        ]


@pytest.fixture(scope="module")
def page_html() -> str:
    report = deploy_report()
    doc = outcome.document("deploy", [deploy_result(report), outcome.not_run("reminet-prod", "deploy")])
    return html_page.render(doc)


def test_the_page_is_self_contained(page_html):
    page = Page(page_html)
    assert page_html.startswith("<!DOCTYPE html>")
    assert not page.all("script") and not page.all("link") and not page.all("img") and not page.all("iframe")
    assert all("src" not in a and "href" not in a for _, a in page.tags)
    assert "url(" not in page_html and "@import" not in page_html
    assert len(page.all("style")) == 1


def test_one_chart_per_url_with_a_bar_per_second(page_html):
    page = Page(page_html)
    assert [f["data-url"] for f in page.all("figure")] == [A, B, WS]
    svgs = page_html.split("<svg")[1:]
    assert len(svgs) == 3
    a_chart = Page("<svg" + svgs[0])
    assert len(a_chart.all("rect", **{"class": "req"})) == 12  # one bar per second, 12 s
    fails = a_chart.all("rect", **{"class": "fail"})
    assert len(fails) == 1 and float(fails[0]["height"]) >= 3  # second 5, never too thin to see
    assert not Page("<svg" + svgs[1]).all("rect", **{"class": "fail"})
    ws_chart = Page("<svg" + svgs[2])
    assert (
        len(ws_chart.all("line", **{"class": "disconnect"})) == 1 and len(ws_chart.all("rect", **{"class": "gap"})) == 1
    )


def test_version_bands_one_colour_per_version(page_html):
    page = Page(page_html)
    bands = page.all("rect", **{"class": "band"})
    assert [b["data-version"] for b in bands] == ["v1", "v2"] * 3  # per chart, in order of first sighting
    colours = {b["data-version"]: b["fill"] for b in bands}
    assert len(set(colours.values())) == 2
    assert all(b["fill"] == colours[b["data-version"]] for b in bands)  # the same colour on every chart
    v1, v2 = bands[0], bands[1]
    assert float(v1["x"]) < float(v2["x"]) < float(v1["x"]) + float(v1["width"]) + 20  # v2 starts where v1 ends


def test_switch_marked_at_its_time_on_every_chart(page_html):
    page = Page(page_html)
    switches = page.all("line", **{"class": "switch"})
    assert [s["data-service"] for s in switches] == ["server, property"] * 3  # the failed tier never switched
    x = float(switches[0]["x1"])
    left, plot = html_page.LEFT, html_page.PLOT
    assert x == pytest.approx(left + SWITCH_AT / 12.0 * plot, abs=1.0)


def test_switch_times_are_read_from_a_real_rollouts_steps(monkeypatch):
    monkeypatch.setenv("ZDD_SANDBOX_REGISTRY_PASSWORD", "t0ken")
    s, _ = fake_session(deploy_host(version=2))  # the replace sequence against a simulated tier.sh
    deploy(s)
    result = outcome.HostResult("sandbox", "deploy", steps=s.report.steps)
    tiers = [r for r in s.report.steps if r.name.startswith("rollout ")]
    assert [name for name, _ in result.switches()] == ["server", "property", "identity", "profile-server"]
    assert [at for _, at in result.switches()] == [tiers[0].ended_at] * 2 + [tiers[1].ended_at, tiers[2].ended_at]


def test_steps_verdict_error_and_hosts(page_html):
    page = Page(page_html)
    text = " ".join(page.text)
    steps = page.all("tr", **{"class": "step"})
    assert len(steps) == 4
    assert page.all("p", **{"class": "verdict"})[0]["class"] == "verdict fail"
    assert "3 of 480 requests failed (status 502: 3)" in text
    assert "deploy failed: identity: not healthy" in text and "cost: 9 remote commands, 3 proxy loads" in text
    assert [(s["data-host"], s["data-result"]) for s in page.all("section")] == [
        ("reminet-staging", "failed"),
        ("reminet-prod", "not run"),
    ]
    assert '<table class="hosts">' in page_html  # several hosts: one table across them


def test_text_is_escaped():
    r = outcome.HostResult(
        "h",
        "deploy",
        started_at=1.0,
        ended_at=2.0,
        steps=[StepRecord("pull", "failed", "<script>alert(1)</script>", 0.1, 1.0)],
    )
    page = html_page.render(outcome.document("deploy", [r]))
    assert "<script>" not in page and "&lt;script&gt;" in page


IDENTITY_MARKS = "mark 1764461244.5 begin\nmark 1764461244.6 pinned\nmark 1764461244.75 up\n"  # 10.5 s later


def timeline_page(services: tuple[str, ...] = ("server", "property")) -> str:
    """The deploy's page with two tiers' timelines: server and property, then identity (failed)."""
    result = deploy_result(deploy_report())
    result.timeline = [tier_timeline(1, services), tier_timeline(2, ["identity"], IDENTITY_MARKS)]
    return html_page.render(outcome.document("deploy", [result]))


def test_a_bar_per_service_of_each_tier_with_a_rect_per_phase():
    html = timeline_page()
    page = Page(html)
    (figure,) = page.all("figure", **{"class": "timeline"})
    svg = html[html.index('<figure class="timeline">') :]
    svg = svg[: svg.index("</svg>")]
    groups = svg.split('<g class="bar"')[1:]
    bars = [Page('<g class="bar"' + g) for g in groups]
    assert [(b.all("g")[0]["data-tier"], b.all("g")[0]["data-service"]) for b in bars] == [
        ("1", "server"),
        ("1", "property"),
        ("2", "identity"),
    ]
    phases = [[r["data-phase"] for r in b.all("rect", **{"class": "phase"})] for b in bars]
    assert phases == [["pin", "start", "boot", "wait", "switch", "drain", "stop"]] * 2 + [["pin"]]
    assert "tier 1 · property" in bars[1].text and "tier 2 · identity" in bars[2].text
    assert "tier 1 · property: boot 2.40 s (1.25–3.65 s)" in bars[1].text  # the rect's tooltip
    fills = {r["data-phase"]: r["fill"] for b in bars for r in b.all("rect")}
    assert len(set(fills.values())) == 7  # a colour per phase
    # x: seconds from tier 1's begin, tier 2 at 10.5 s (after tier 1's 7 s), to 10.75 s
    x = {(b.all("g")[0]["data-service"], r["data-phase"]): float(r["x"]) for b in bars for r in b.all("rect")}
    scale = (html_page.WIDTH - html_page.LABELS - html_page.RIGHT) / 10.75
    assert x["server", "pin"] == pytest.approx(html_page.LABELS, abs=0.1)
    assert x["identity", "pin"] == pytest.approx(html_page.LABELS + 10.5 * scale, abs=0.1)
    assert x["property", "boot"] == pytest.approx(html_page.LABELS + 1.25 * scale, abs=0.1)
    legend = " ".join(Page(html[html.index('<p class="legend">', html.index('<figure class="timeline">')) :]).text)
    assert legend.startswith("pin start boot wait switch drain stop")  # no canary, no canary in the legend


def test_no_timeline_without_marks_and_its_text_is_escaped():
    result = deploy_result(deploy_report())
    result.timeline = [tier_timeline(1, ["server"], "")]
    assert '<figure class="timeline">' not in html_page.render(outcome.document("deploy", [result]))
    html = timeline_page(("server", "<script>alert(1)</script>"))
    assert "<script>" not in html and 'data-service="&lt;script&gt;alert(1)&lt;/script&gt;"' in html


def test_inv_verify_report_writes_the_page(tmp_path, monkeypatch):
    report = deploy_report()
    monkeypatch.setattr(inv_tasks.vloop, "run_and_print", lambda settings, json: report)
    path = tmp_path / "verify.html"
    with pytest.raises(Exception) as failed:  # the report has failures: exit 1, page written all the same
        inv_tasks.verify(Context(Config()), url=[A], report=str(path))
    assert getattr(failed.value, "code", None) == 1
    page = Page(path.read_text())
    assert [f["data-url"] for f in page.all("figure")] == [A, B, WS]
    assert not page.all("table", **{"class": "steps"})


# --- in a real browser -----------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def png_pixels(data: bytes) -> bytes:
    """The decompressed image data of a PNG (filter bytes included): enough to tell a blank
    page from a drawn one."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return zlib.decompress(idat)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_chromium_renders_the_page(tmp_path):
    """The whole page, the tiers' timeline included, drawn by a real browser."""
    page, shot = tmp_path / "deploy.html", tmp_path / "deploy.png"
    html = timeline_page()
    assert '<figure class="timeline">' in html
    page.write_text(html, encoding="utf-8")
    res = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,900",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.exists(), res.stderr[-2000:]
    data = shot.read_bytes()
    assert len(data) > 20_000  # a blank 1200x900 page is a few KB
    assert len(set(png_pixels(data))) > 50  # text, bars and colours, not one flat colour
    keep = Path("/tmp/zdd-report-screenshot.png")  # to look at by hand
    shutil.copyfile(shot, keep)
