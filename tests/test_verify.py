"""Unit tests for fabfile.verify (no network: httpx.MockTransport only)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import threading
import time
import tomllib
import types
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from invoke import Config, Context
from invoke.exceptions import Exit

import tasks as inv_tasks
from fabfile.verify import (
    CONNECT_ERROR,
    OK,
    READ_ERROR,
    TIMEOUT,
    BackgroundLoop,
    Recorder,
    Report,
    TimelineRow,
    TokenSchedule,
    VerifySettings,
    build_timeline,
    classify_exception,
    classify_status,
    collapse_timeline,
    latency_summary,
    percentile,
    render_timeline,
    run,
)

BASE = "http://svc.test"


def settings(urls=None, **kw) -> VerifySettings:
    kw.setdefault("concurrency", 4)
    return VerifySettings(urls=urls or [f"{BASE}/"], **kw)


def finished_report(recorder: Recorder, elapsed: float, **kw) -> Report:
    """Report over a hand-filled recorder that 'ran' for ``elapsed`` seconds."""
    recorder.stopped_mono = recorder.started_mono + elapsed
    return Report(settings(list(recorder.urls), **kw), recorder)


# -- settings ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"urls": []}, "no urls"),
        ({"urls": "http://x/"}, "not a single string"),
        ({"urls": ["ftp://x/"]}, "invalid url"),
        ({"urls": ["/relative"]}, "invalid url"),
        ({"concurrency": 0}, "concurrency"),
        ({"rate": 0}, "rate"),
        ({"rate": -5.0}, "rate"),
        ({"duration": 0}, "duration"),
        ({"timeout": 0}, "timeout"),
        ({"max_failures": -1}, "max_failures"),
        ({"version_regex": "v(\\d+"}, "invalid version_regex"),
        ({"urls": [], "ws_urls": []}, "no urls"),
        ({"ws_urls": "ws://x/"}, "not a single string"),
        ({"ws_urls": ["http://x/"]}, "invalid ws url"),
        ({"ws_urls": ["ws://"]}, "invalid ws url"),
        ({"ws_connections": 0}, "ws_connections"),
        ({"ws_connections": True}, "ws_connections"),
        ({"ws_interval": 0}, "ws_interval"),
        ({"max_ws_gap": 0}, "max_ws_gap"),
    ],
)
def test_settings_validation(kwargs, message):
    kwargs = {"urls": [f"{BASE}/"], **kwargs}
    with pytest.raises(ValueError) as info:
        VerifySettings(**kwargs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_websocket_urls_alone_are_enough():
    s = VerifySettings(ws_urls=["ws://svc.test/ws", "wss://svc.test/live"])
    assert s.urls == [] and s.ws_connections == 4 and s.ws_interval == 1.0 and s.max_ws_gap is None
    assert s.to_dict()["ws_urls"] == ["ws://svc.test/ws", "wss://svc.test/live"]


def test_settings_defaults_are_valid():
    s = VerifySettings(urls=[f"{BASE}/a", f"{BASE}/b"])
    assert (s.concurrency, s.rate, s.duration, s.timeout, s.max_failures) == (8, None, None, 10.0, 0)
    assert s.headers == {} and s.to_dict()["urls"] == [f"{BASE}/a", f"{BASE}/b"]


# -- classification ----------------------------------------------------------


def test_classify_pure():
    assert classify_status(200) == OK and classify_status(204) == OK
    assert classify_status(301) == "status 301" and classify_status(502) == "status 502"
    assert classify_exception(httpx.ConnectError("x")) == CONNECT_ERROR
    assert classify_exception(httpx.ConnectTimeout("x")) == CONNECT_ERROR
    for exc in (httpx.ReadTimeout("x"), httpx.PoolTimeout("x"), httpx.WriteTimeout("x"), TimeoutError()):
        assert classify_exception(exc) == TIMEOUT
    for exc in (httpx.ReadError("x"), httpx.RemoteProtocolError("x"), httpx.WriteError("x")):
        assert classify_exception(exc) == READ_ERROR


def behaviour_handler(request: httpx.Request) -> httpx.Response:
    """Each path fails in its own way."""
    path = request.url.path
    if path == "/ok":
        return httpx.Response(200, text="hello v1.2.3")
    if path == "/bad":
        return httpx.Response(502, text="bad gateway")
    if path == "/redirect":
        return httpx.Response(302, headers={"location": f"{BASE}/ok"})
    if path == "/refused":
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
    if path == "/reset":
        raise httpx.ReadError("connection reset by peer", request=request)
    if path == "/slow":
        raise httpx.ReadTimeout("timed out", request=request)
    raise AssertionError(path)


def test_counts_by_class_through_the_loop():
    paths = ["ok", "bad", "redirect", "refused", "reset", "slow"]
    urls = [f"{BASE}/{p}" for p in paths]
    report = run(settings(urls, rate=400, duration=0.25), transport=httpx.MockTransport(behaviour_handler))
    per_url = {u["url"]: u for u in report.to_dict()["urls"]}
    expected = {
        "ok": OK,
        "bad": "status 502",
        "redirect": "status 302",
        "refused": CONNECT_ERROR,
        "reset": READ_ERROR,
        "slow": TIMEOUT,
    }
    for path, kind in expected.items():
        entry = per_url[f"{BASE}/{path}"]
        assert entry["requests"] >= 10, entry  # round-robin: every URL got traffic
        assert entry["counts"] == {kind: entry["requests"]}
    assert report.counts[OK] == per_url[f"{BASE}/ok"]["requests"]
    assert report.failures == report.total - report.counts[OK] == len(report.failure_list)
    reasons = {f.kind: f.reason for f in report.failure_list}
    assert reasons[CONNECT_ERROR].startswith("connect error: ConnectError: [Errno 111]")
    assert reasons["status 502"] == "status 502: Bad Gateway"
    assert reasons[READ_ERROR] == "read error: ReadError: connection reset by peer"
    assert not report.ok and report.exit_code == 1


def test_round_robin_spreads_evenly():
    urls = [f"{BASE}/ok?n={i}" for i in range(3)]
    report = run(
        settings(urls, concurrency=3, rate=300, duration=0.3), transport=httpx.MockTransport(behaviour_handler)
    )
    counts = [s.total for s in report.recorder.urls.values()]
    assert min(counts) > 0 and max(counts) - min(counts) <= 3, counts


def test_overall_timeout_counts_as_timeout():
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200)

    report = run(settings(concurrency=2, timeout=0.15, duration=0.5), transport=httpx.MockTransport(hang))
    assert report.counts.get(TIMEOUT, 0) >= 4 and report.counts.get(OK, 0) == 0
    assert "no complete response within 0.15 s" in report.failure_list[0].reason


def test_reads_only_the_first_64_kib():
    def big(request: httpx.Request) -> httpx.Response:
        filler = b"x" * (200 * 1024)
        body = b"v7 " + filler if request.url.path == "/early" else filler + b" v9"
        return httpx.Response(200, content=body)

    report = run(
        settings([f"{BASE}/early", f"{BASE}/late"], rate=100, duration=0.2), transport=httpx.MockTransport(big)
    )
    assert list(report.recorder.urls[f"{BASE}/early"].versions) == ["v7"]
    assert report.recorder.urls[f"{BASE}/late"].versions == {}
    assert report.failures == 0


# -- percentiles ---------------------------------------------------------------


def test_percentile_nearest_rank():
    values = list(range(1, 101))
    assert [percentile(values, p) for p in (0, 1, 50, 95, 99, 100)] == [1, 1, 50, 95, 99, 100]
    # Textbook example for nearest rank: 15, 20, 35, 40, 50
    small = [15, 20, 35, 40, 50]
    assert [percentile(small, p) for p in (5, 30, 40, 50, 100)] == [15, 20, 20, 35, 50]
    assert percentile([7.5], 99) == 7.5
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_latency_summary_sorts_and_reports():
    summary = latency_summary([30.0, 10.0, 1000.0] + [20.0] * 97)
    assert summary == {"count": 100, "p50": 20.0, "p95": 20.0, "p99": 30.0, "max": 1000.0}
    assert latency_summary([])["p99"] is None


# -- timeline ------------------------------------------------------------------


def test_timeline_buckets_by_second():
    rows = build_timeline([0.1, 0.9, 1.0, 1.5, 3.99], failure_times=[1.5, 3.99], elapsed=5.2)
    assert [(r.start, r.requests, r.failures) for r in rows] == [(0, 2, 0), (1, 2, 1), (2, 0, 0), (3, 1, 1), (4, 0, 0)]
    lines = render_timeline(rows)
    assert lines[0].split() == ["0s", "req", "2", "fail", "0"]
    assert [("<-- FAIL" in line) for line in lines] == [False, True, False, True, False]


def test_timeline_collapse_keeps_every_failure_second():
    rows = [TimelineRow(s, s, 100, 3 if s in (50, 51, 140) else 0) for s in range(200)]
    out = collapse_timeline(rows, max_rows=60, context=2)
    assert len(out) < 30
    assert sum(r.requests for r in out) == 200 * 100
    assert [r.start for r in out if r.failures] == [50, 51, 140]
    assert all(not r.collapsed for r in out if r.failures)
    assert out[0].start == 0 and out[-1].end == 199
    starts = [r.start for r in out]
    assert {48, 49, 52, 53, 138, 139, 141, 142} <= set(starts)  # context rows kept
    text = "\n".join(render_timeline(out))
    assert "1s-47s" in text and "(47 s without failures)" in text
    assert collapse_timeline(rows[:60]) == rows[:60]  # short: unchanged


# -- versions --------------------------------------------------------------------


def test_versions_first_and_last_seen():
    rec = Recorder([f"{BASE}/a", f"{BASE}/b"])
    for t in (0.0, 5.0, 12.4):
        rec.record(f"{BASE}/a", t, 0.01, OK, version="v1")
    for t in (11.9, 13.0, 30.0):
        rec.record(f"{BASE}/a", t, 0.01, OK, version="v2")
    rec.record(f"{BASE}/a", 20.0, 0.01, "status 502", version="v3")  # non-2xx: ignored
    rec.record(f"{BASE}/b", 1.0, 0.01, OK, version="v2")
    report = finished_report(rec, 31.0, max_failures=1)
    switches = report.switches()
    assert list(switches) == [f"{BASE}/a"]
    v1, v2 = switches[f"{BASE}/a"]["v1"], switches[f"{BASE}/a"]["v2"]
    assert (v1.count, v1.first, v1.last) == (3, 0.0, 12.4)
    assert (v2.count, v2.first, v2.last) == (3, 11.9, 30.0)
    overall = report.versions()
    assert list(overall) == ["v1", "v2"] and overall["v2"].count == 4 and overall["v2"].first == 1.0
    assert f"{BASE}/a: v1 first 0.0 s, last 12.4 s (3); v2 first 11.9 s, last 30.0 s (3)" in report.render()
    assert report.ok  # one failure allowed


def test_version_from_regex_group_and_header():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="build=2024.1 v1", headers={"x-app-version": " v42 "})

    grouped = run(
        settings(version_regex=r"build=(\S+)", rate=100, duration=0.1), transport=httpx.MockTransport(handler)
    )
    assert list(grouped.versions()) == ["2024.1"]
    header = run(
        settings(version_header="X-App-Version", rate=100, duration=0.1), transport=httpx.MockTransport(handler)
    )
    assert list(header.versions()) == ["v42"]


def test_version_switch_seen_through_the_loop():
    counter = itertools.count()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="app v1" if next(counter) < 20 else "app v2")

    report = run(settings(rate=100, duration=0.4), transport=httpx.MockTransport(handler))
    v = report.versions()
    assert list(v) == ["v1", "v2"] and v["v1"].count == 20
    assert v["v1"].first < v["v2"].first and v["v1"].last <= v["v2"].first + 0.05


# -- verdict, ok, JSON -------------------------------------------------------------


def test_verdict_without_failures():
    rec = Recorder([f"{BASE}/"])
    for i in range(4312):
        rec.record(f"{BASE}/", i / 1000, 0.0375, OK, version="v1")
    report = finished_report(rec, 4.4)
    assert report.verdict() == "0 of 4,312 requests failed, 0 if never retried, p99 38 ms"
    assert report.ok and report.exit_code == 0 and report.total == 4312


def test_verdict_with_failures_and_max_failures():
    a, b = f"{BASE}/a", f"{BASE}/b"
    rec = Recorder([a, b])
    for i in range(4305):
        rec.record(a if i % 2 else b, i / 1000, 0.038, OK)
    for t in (12.1, 12.5, 12.9, 13.2, 13.8):
        rec.record(a, t, 0.002, "status 502", "status 502: Bad Gateway")
    for t in (13.1, 15.0):
        rec.record(b, t, 0.001, CONNECT_ERROR, "connect error: ConnectError: refused")
    strict = finished_report(rec, 20.0)
    assert strict.verdict() == (
        "7 of 4,312 requests failed (status 502: 5, connect error: 2), 7 if never retried, p99 38 ms; "
        f"failing URLs: {a} (5), {b} (2); failing seconds: 12-13s, 15s"
    )
    assert (strict.ok, strict.exit_code, strict.failures) == (False, 1, 7)
    failing_rows = {r.start: r.failures for r in strict.timeline() if r.failures}
    assert failing_rows == {12: 3, 13: 3, 15: 1}
    assert len(strict.timeline()) == 20
    assert strict.render().splitlines()[-1].startswith("FAIL (max allowed 0): 7 of 4,312")
    assert finished_report(rec, 20.0, max_failures=7).ok
    assert not finished_report(rec, 20.0, max_failures=6).ok


def test_json_contains_everything(tmp_path):
    report = run(
        settings([f"{BASE}/ok", f"{BASE}/refused"], rate=200, duration=0.3),
        transport=httpx.MockTransport(behaviour_handler),
    )
    path = report.write_json(tmp_path / "verify.json")
    data = json.loads(path.read_text())
    assert data["total"] == report.total > 0
    assert data["failures"] == len(data["failure_list"]) == report.failures > 0
    assert data["ok"] is False and data["verdict"] == report.verdict()
    failure = data["failure_list"][0]
    assert failure["url"] == f"{BASE}/refused" and failure["kind"] == CONNECT_ERROR
    assert datetime.fromisoformat(failure["time"]).tzinfo is not None
    assert 0 <= failure["t"] < 0.5
    assert sum(row["requests"] for row in data["timeline"]) == data["total"]
    assert data["versions"][0]["version"] == "v1.2.3"
    assert data["versions"][0]["count"] == data["counts"]["ok"]
    assert data["settings"]["rate"] == 200 and data["urls"][0]["latency_ms"]["p99"] is not None
    for url in data["urls"]:  # per URL, the same per-second figures (the HTML report charts them)
        assert sum(row["requests"] for row in url["timeline"]) == url["requests"]
        assert sum(row["failures"] for row in url["timeline"]) == url["failures"]
    assert [row["second"] for row in data["urls"][0]["timeline"]] == [row["second"] for row in data["timeline"]]


# -- rate limiting, stopping -----------------------------------------------------------


def test_token_schedule_has_no_drift_and_caps_catch_up():
    sched = TokenSchedule(rate=10, start=100.0, max_lag=1.0)
    dues = [sched.reserve(now=100.0) for _ in range(5)]
    assert dues == pytest.approx([100.0, 100.1, 100.2, 100.3, 100.4])
    # 10 s behind: only max_lag (1 s) worth of tokens is overdue, then pacing resumes
    late = [sched.reserve(now=110.0) for _ in range(12)]
    assert late[0] == pytest.approx(109.0)
    assert sum(d <= 110.0 for d in late) == 11 and late[-1] == pytest.approx(110.1)


def test_rate_is_honoured():
    report = run(settings(concurrency=8, rate=50, duration=1.0), transport=httpx.MockTransport(behaviour_handler))
    assert 40 <= report.total <= 60, report.total


def test_background_loop_stops_promptly_and_drops_in_flight():
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200)

    loop = BackgroundLoop(settings(concurrency=4, timeout=20), transport=httpx.MockTransport(hang)).start()
    time.sleep(0.2)
    began = time.monotonic()
    report = loop.stop()
    assert time.monotonic() - began < 1.0
    assert not loop.running
    assert report.total == 0 and report.failures == 0
    assert not report.ok  # nothing completed proves nothing
    assert "no request completed" in report.render()
    assert report.cancelled_in_flight == 4


def test_background_loop_measures_while_running():
    loop = BackgroundLoop(settings([f"{BASE}/ok"], rate=200), transport=httpx.MockTransport(behaviour_handler))
    with loop:
        time.sleep(0.3)
        report = loop.stop()
    assert 30 <= report.total <= 80 and report.failures == 0
    assert report.verdict().startswith(f"0 of {report.total:,} requests failed, 0 if never retried, p99 ")


def test_stop_event_ends_foreground_run():
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    began = time.monotonic()
    report = run(settings([f"{BASE}/ok"], rate=100), stop, transport=httpx.MockTransport(behaviour_handler))
    assert time.monotonic() - began < 1.0 and 10 <= report.total <= 30


def test_keyboard_interrupt_keeps_the_report():
    counter = itertools.count()

    def handler(request: httpx.Request) -> httpx.Response:
        if next(counter) == 20:
            raise KeyboardInterrupt
        return httpx.Response(200, text="v1")

    report = run(settings(concurrency=1, rate=500, duration=5), transport=httpx.MockTransport(handler))
    assert report.interrupted and report.total == 20 and report.failures == 0


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="needs main thread")
def test_ctrl_c_keeps_the_report():
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    report = run(settings([f"{BASE}/ok"], rate=100, duration=5), transport=httpx.MockTransport(behaviour_handler))
    timer.join()
    assert report.interrupted and 15 <= report.total <= 45 and report.failures == 0
    assert report.elapsed < 1.0


def test_background_loop_can_let_in_flight_requests_finish():
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.5)
        return httpx.Response(200, text="app v2")

    loop = BackgroundLoop(
        settings(concurrency=4, timeout=5), transport=httpx.MockTransport(slow), finish_in_flight=True
    ).start()
    time.sleep(0.2)
    began = time.monotonic()
    report = loop.stop()
    waited = time.monotonic() - began
    assert 0.2 <= waited < 2.0  # the 4 requests in flight were waited for, nothing new was sent
    assert report.total == 4 and report.cancelled_in_flight == 0 and report.ok


def _stale_once_handler():
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 2:  # the server closed the kept-alive connection as this request went out
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return httpx.Response(200, text="app v1")

    return handler


def test_stale_keep_alive_close_is_retried_once_and_reported():
    report = run(
        settings([f"{BASE}/ok"], concurrency=1, duration=0.3, rate=20),
        transport=httpx.MockTransport(_stale_once_handler()),
    )
    assert report.failures == 0 and report.ok
    assert len(report.recorder.stale_retries) == 1
    data = report.to_dict()
    assert data["stale_retry_list"][0]["url"] == f"{BASE}/ok"
    assert (data["failures"], data["failures_without_retry"], data["stale_retries"]) == (0, 1, 1)
    assert report.verdict().startswith(f"0 of {report.total:,} requests failed, 1 if never retried, p99 ")
    assert "1 GET(s) retried once" in report.render()


def test_stale_keep_alive_close_counts_as_failure_without_retry():
    report = run(
        settings([f"{BASE}/ok"], concurrency=1, duration=0.3, rate=20, retry_stale=False),
        transport=httpx.MockTransport(_stale_once_handler()),
    )
    assert report.failures == 1 and not report.ok
    assert report.recorder.failures[0].kind == "read error"
    assert report.recorder.stale_retries == []
    assert report.failures_without_retry == 1 and report.to_dict()["failures_without_retry"] == 1
    assert f"1 of {report.total:,} requests failed (read error: 1), client never retries, p99" in report.verdict()


def test_first_request_on_a_new_connection_is_not_retried():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    report = run(settings([f"{BASE}/ok"], concurrency=1, duration=0.2, rate=20), transport=httpx.MockTransport(handler))
    assert report.failures == report.total > 0 and report.recorder.stale_retries == []


# -- packaging ---------------------------------------------------------------------------


def test_pyproject_lists_every_fabfile_package_and_ships_the_host_scripts():
    root = Path(__file__).resolve().parent.parent
    setup = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(root).parts) for p in (root / "fabfile").rglob("__init__.py")}
    assert set(setup["packages"]) == on_disk
    assert "remote/*.sh" in setup["package-data"]["fabfile"]


# -- inv verify: flags to settings ----------------------------------------------------------


@pytest.fixture
def captured(monkeypatch):
    """Run ``inv verify`` without a loop: returns the settings it would have run."""
    seen: list[VerifySettings] = []

    def fake_run_and_print(settings: VerifySettings, json_path=None):
        seen.append(settings)
        return types.SimpleNamespace(ok=True)

    monkeypatch.setattr(inv_tasks.vloop, "run_and_print", fake_run_and_print)
    return seen


def inv_verify(hosts_file: Path | None = None, **flags) -> None:
    config = Config(overrides={"hosts_file": str(hosts_file)} if hosts_file else {})
    inv_tasks.verify(Context(config=config), **flags)


def test_inv_verify_ws_alone_and_no_retry(captured):
    inv_verify(ws=["ws://127.0.0.1:9/ws"], ws_connections="2", retry=False)
    s = captured[-1]
    assert (s.urls, s.ws_urls, s.ws_connections, s.retry_stale) == ([], ["ws://127.0.0.1:9/ws"], 2, False)
    inv_verify(url=[f"{BASE}/a"], ws=["wss://svc.test/live"], max_ws_gap="1.5")
    s = captured[-1]
    assert (s.urls, s.ws_urls, s.retry_stale, s.max_ws_gap) == ([f"{BASE}/a"], ["wss://svc.test/live"], True, 1.5)


def test_inv_verify_host_brings_its_ws_urls_and_flags_replace_a_list(captured, tmp_path):
    hosts = tmp_path / "hosts.toml"
    hosts.write_text(
        '[hosts.h.verify]\nurls = ["http://svc.test/"]\nws_urls = ["ws://svc.test/ws"]\nws_connections = 3\n'
    )
    inv_verify(hosts, host="h")
    assert (captured[-1].urls, captured[-1].ws_urls, captured[-1].ws_connections) == (
        ["http://svc.test/"],
        ["ws://svc.test/ws"],
        3,
    )
    inv_verify(hosts, host="h", ws=["ws://other.test/"], ws_connections="1")
    assert (captured[-1].urls, captured[-1].ws_urls, captured[-1].ws_connections) == (
        ["http://svc.test/"],
        ["ws://other.test/"],
        1,
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        ({}, "give --url or --ws"),
        ({"ws": ["http://svc.test/"]}, "verify: invalid ws url 'http://svc.test/'"),
        ({"ws": ["ws://svc.test/"], "ws_connections": "0"}, "verify: ws_connections must be"),
    ],
)
def test_inv_verify_mistakes_are_one_line_exits(captured, flags, message):
    with pytest.raises(Exit) as info:
        inv_verify(**flags)
    assert message in str(info.value.message) and info.value.code == 2
    assert captured == []
