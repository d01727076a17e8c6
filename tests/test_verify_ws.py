"""Unit tests for the websocket probes, against a real websockets server on 127.0.0.1.

The server runs in its own thread and event loop; it answers each message with
``"<message> <version>"``. Tests wait on what the server has seen (replies sent
per live connection), never on fixed sleeps, and keep timing bounds generous.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.server import Server, ServerConnection, serve

from fabfile.verify import BackgroundLoop, VerifySettings, WsRecorder, WsUrlStats, run

FAST = {"ws_interval": 0.1, "timeout": 2.0}


class EchoServer:
    """``<message> <version>`` echo on 127.0.0.1; ``silent`` makes it read and never answer,
    ``mute_first_after`` stops answering on the first connection after that many replies."""

    def __init__(self, version: str = "v1", silent: bool = False, mute_first_after: int | None = None) -> None:
        self.version = version
        self.silent = silent
        self.mute_first_after = mute_first_after
        self.port = 0
        self.replies: list[int] = []  # replies sent, per connection in accept order
        self.live: dict[ServerConnection, int] = {}  # open connection -> its index in replies
        self._server: Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def accepted(self) -> int:
        return len(self.replies)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/echo"

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(5)

    def start(self) -> EchoServer:
        self._thread.start()
        self.listen()
        return self

    def listen(self) -> None:
        """Listen (again, on the same port once one was chosen)."""

        async def go() -> None:
            self._server = await serve(self._handler, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]

        self.call(go())

    def stop_listening(self) -> None:
        """Close the listening socket and every connection (close code 1001)."""

        async def go() -> None:
            assert self._server is not None
            self._server.close()
            await self._server.wait_closed()

        self.call(go())

    def close_all(self, code: int = 1001) -> int:
        """Close every live connection from the server's side; returns how many."""

        async def go() -> int:
            live = list(self.live)
            await asyncio.gather(*(ws.close(code, "going away") for ws in live))
            return len(live)

        return self.call(go())

    def shutdown(self) -> None:
        if self._server is not None:
            self.stop_listening()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _handler(self, ws: ServerConnection) -> None:
        index = self.live[ws] = len(self.replies)
        self.replies.append(0)
        limit = self.mute_first_after if index == 0 else None
        try:
            async for message in ws:
                if not self.silent and (limit is None or self.replies[index] < limit):
                    await ws.send(f"{message} {self.version}")
                    self.replies[index] += 1
        finally:
            del self.live[ws]

    def live_answering(self, at_least: int = 2) -> int:
        """Live connections that got ``at_least`` replies (the client read all but the last)."""
        return sum(self.replies[i] >= at_least for i in list(self.live.values()))


def wait_until(predicate: Callable[[], bool], timeout: float = 4.0) -> None:
    limit = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > limit:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@pytest.fixture
def server():
    srv = EchoServer().start()
    yield srv
    srv.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- through a real server -----------------------------------------------------------


def test_server_side_closes_are_counted_exactly_and_both_versions_seen(server):
    loop = BackgroundLoop(VerifySettings(ws_urls=[server.url], ws_connections=3, **FAST)).start()
    try:
        wait_until(lambda: server.live_answering() == 3)
        assert server.close_all(1001) == 3  # round 1, still v1
        wait_until(lambda: server.accepted == 6 and min(server.replies[3:]) >= 2)
        server.version = "v2"
        assert server.close_all(1001) == 3  # round 2: reconnects get v2
        wait_until(lambda: server.accepted == 9 and min(server.replies[6:]) >= 2)
    finally:
        report = loop.stop()
    stats = report.ws.urls[server.url]
    assert len(stats.disconnects) == 6  # our own close at stop is not one
    assert stats.close_codes() == {1001: 6}
    assert (stats.opened, stats.reconnect_failures, stats.connections) == (9, 0, 3)
    assert len(stats.gaps) == 6 and all(g.recovered for g in stats.gaps)
    assert 0 < stats.longest_gap < 1.0
    assert list(stats.versions) == ["v1", "v2"]
    v1, v2 = stats.versions["v1"], stats.versions["v2"]
    assert v1.first < v2.first and v1.count >= 6 and v2.count >= 3
    assert report.ok and report.ws_ok and report.exit_code == 0
    assert report.verdict().startswith("websockets: 3 held, 6 disconnects (close 1001: 6), longest gap 0.")
    entry = report.to_dict()["websockets"][0]
    assert (entry["disconnects"], entry["close_codes"], entry["opened"]) == (6, {"1001": 6}, 9)
    assert [v["version"] for v in entry["versions"]] == ["v1", "v2"]
    assert all(d["code"] == 1001 and "going away" in d["reason"] for d in entry["disconnect_list"])
    text = report.render()
    assert server.url in text and "close 1001: 6; disconnects at" in text
    assert f"{server.url}: v1 first" in text  # the version switch is listed
    assert text.splitlines()[-1].startswith("PASS: websockets: 3 held, 6 disconnects")


def test_a_refusing_server_shows_as_a_gap_of_that_length(server):
    settings = VerifySettings(ws_urls=[server.url], ws_connections=2, max_ws_gap=0.4, **FAST)
    loop = BackgroundLoop(settings).start()
    try:
        wait_until(lambda: server.live_answering() == 2)
        began = time.monotonic()
        server.stop_listening()  # closes both with 1001, then refuses
        time.sleep(1.0)
        server.listen()
        outage = time.monotonic() - began
        wait_until(lambda: server.live_answering() == 2)
    finally:
        report = loop.stop()
    stats = report.ws.urls[server.url]
    assert len(stats.disconnects) == 2 and stats.close_codes() == {1001: 2}
    assert len(stats.gaps) == 2 and all(g.recovered for g in stats.gaps)
    assert outage - 0.3 <= stats.longest_gap <= outage + 1.0, (outage, stats.longest_gap)
    assert stats.reconnect_failures >= 4  # retried every 0.1 s while refused
    assert any("Refused" in reason for reason in stats.connect_failures), stats.connect_failures
    assert not report.ws_ok and not report.ok  # max_ws_gap 0.4 s exceeded
    assert "(max allowed 0.4 s)" in report.verdict()
    assert report.to_dict()["websockets"][0]["longest_gap_s"] == round(stats.longest_gap, 3)


def test_a_connection_never_closed_reports_no_disconnect(server):
    report = run(VerifySettings(ws_urls=[server.url], ws_connections=2, duration=0.6, **FAST))
    stats = report.ws.urls[server.url]
    assert (len(stats.disconnects), stats.opened, stats.reconnect_failures) == (0, 2, 0)
    assert stats.gaps == [] and stats.longest_gap == 0.0
    assert stats.messages >= 6 and list(stats.versions) == ["v1"]
    assert report.ok and report.total == 0  # no HTTP urls: nothing to fail there
    assert report.verdict() == "websockets: 2 held, 0 disconnects, longest gap 0.00 s"
    assert "Timeline" not in report.render()


def test_a_server_that_never_answers_is_not_a_pass():
    silent = EchoServer(silent=True).start()
    try:
        report = run(VerifySettings(ws_urls=[silent.url], ws_connections=1, ws_interval=0.1, timeout=0.2, duration=0.8))
    finally:
        silent.shutdown()
    stats = report.ws.urls[silent.url]
    assert stats.messages == 0 and len(stats.disconnects) >= 2
    assert all(d.code is None and d.reason == "no reply within 0.2 s" for d in stats.disconnects)
    assert stats.gaps == []  # it never worked, so no gap
    assert not report.ws_ok and not report.ok
    assert report.verdict().endswith(f"; never answered: {silent.url}")
    assert report.render().splitlines()[-1].startswith("FAIL (websockets): ")


def test_a_working_connection_that_stops_answering_breaks_and_is_replaced():
    muted = EchoServer(mute_first_after=3).start()
    try:
        loop = BackgroundLoop(
            VerifySettings(ws_urls=[muted.url], ws_connections=1, ws_interval=0.1, timeout=0.3)
        ).start()
        try:
            wait_until(lambda: muted.accepted == 2 and muted.replies[1] >= 2)
        finally:
            report = loop.stop()
    finally:
        muted.shutdown()
    stats = report.ws.urls[muted.url]
    assert [(d.code, d.reason) for d in stats.disconnects] == [(None, "no reply within 0.3 s")]
    [gap] = stats.gaps
    assert gap.recovered and gap.start == pytest.approx(stats.disconnects[0].t)
    assert 0.25 <= gap.seconds <= 2.0, gap  # dated from the unanswered message
    assert stats.opened == 2 and report.ws_ok


def test_nothing_listening_counts_connect_failures():
    url = f"ws://127.0.0.1:{free_port()}/"
    report = run(VerifySettings(ws_urls=[url], ws_connections=2, duration=0.5, **FAST))
    stats = report.ws.urls[url]
    assert stats.opened == 0 and stats.reconnect_failures >= 4 and not stats.disconnects
    assert not report.ok and report.to_dict()["websockets"][0]["reconnect_failures"] == stats.reconnect_failures


def test_http_and_websockets_in_one_run(server):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="app v7")

    report = run(
        VerifySettings(
            urls=["http://svc.test/"], ws_urls=[server.url], ws_connections=1, rate=50, duration=0.5, **FAST
        ),
        transport=httpx.MockTransport(handler),
    )
    assert report.total >= 10 and report.failures == 0 and report.ws.urls[server.url].messages >= 3
    verdict = report.verdict()
    assert verdict.startswith(f"0 of {report.total:,} requests failed, 0 if never retried, p99 ")
    assert "; websockets: 1 held, 0 disconnects, longest gap" in verdict
    data = report.to_dict()
    assert data["ok"] and data["http_ok"] and data["ws_ok"]
    assert data["settings"]["ws_urls"] == [server.url] and data["websockets"][0]["messages"] >= 3
    assert "Timeline" in report.render() and "websocket" in report.render()


# -- the recording rules, without a server ------------------------------------------------


def test_gap_runs_from_a_working_connection_breaking_until_an_answer():
    stats = WsUrlStats("ws://x/", connections=2)
    stats.broke(0, 0.5, 1001, "closed before it ever answered", was_working=False)
    stats.answered(0, sent=1.0, now=1.01, version="v1")
    stats.broke(0, 2.0, 1001, "going away", was_working=True)
    stats.broke(0, 2.3, 1006, "dropped again before answering", was_working=False)
    stats.answered(0, sent=3.4, now=3.5, version="v2")
    stats.broke(1, 4.0, None, "no reply", was_working=True)
    stats.finish(5.0)
    assert [(g.probe, g.start, g.end, g.recovered) for g in stats.gaps] == [(0, 2.0, 3.5, True), (1, 4.0, 5.0, False)]
    assert stats.longest_gap == pytest.approx(1.5)
    assert stats.close_codes() == {1001: 2, 1006: 1, None: 1}
    assert list(stats.versions) == ["v1", "v2"] and stats.messages == 2


def test_recorder_totals_and_ok():
    rec = WsRecorder(["ws://a/", "ws://b/"], connections=3)
    rec.urls["ws://a/"].answered(0, 0.1, 0.2, None)
    assert rec.held == 6 and rec.silent() == ["ws://b/"] and not rec.ok(None)
    rec.urls["ws://b/"].answered(0, 0.1, 0.2, None)
    rec.urls["ws://b/"].broke(0, 1.0, 1001, "", was_working=True)
    rec.urls["ws://b/"].answered(0, 1.5, 1.6, None)
    assert rec.ok(None) and rec.ok(0.7) and not rec.ok(0.5)
    assert rec.disconnects == 1 and rec.longest_gap == pytest.approx(0.6)
