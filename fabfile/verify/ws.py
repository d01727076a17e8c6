"""Websocket probes: long-lived connections that must survive a deploy.

Each probe holds one connection to its URL (``ws_connections`` probes per URL)
and sends ``ping N`` every ``ws_interval`` seconds; any reply within
``timeout`` counts as the answer, and the version is read from it with
``version_regex``. Other messages that arrive in between are read and
ignored. When the connection closes, fails or stops answering, the probe
reconnects: at once when the connection had been working, then every
``RECONNECT_DELAY`` seconds until it gets a connection again, for as long as
the loop runs (a server that accepts and drops connections at once gets no
faster retries than that). What it sees is recorded in a
:class:`~fabfile.verify.ws_stats.WsUrlStats` (see there for the words used).

Connections do not use proxies from the environment, send no keepalive pings
of their own (the messages are the test) and close with a short close
timeout, so that stopping the loop is quick.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from .http import describe_exception
from .settings import USER_AGENT, VerifySettings, compile_regex
from .versions import extract_version
from .ws_stats import WsRecorder, WsUrlStats

RECONNECT_DELAY = 0.1  # seconds between failed connection attempts
CLOSE_TIMEOUT = 1.0  # seconds to wait for the server's close frame


class _Probe:
    """One held connection to one URL, reopened whenever it breaks."""

    def __init__(self, settings: VerifySettings, stats: WsUrlStats, index: int, start: float) -> None:
        self.settings = settings
        self.stats = stats
        self.index = index
        self.start = start
        self.pattern: re.Pattern[str] | None = compile_regex(settings.version_regex) if settings.version_regex else None
        self.counter = itertools.count()
        self.working = False  # the current connection has answered a message
        self.unanswered_since = 0.0  # when the message awaiting a reply was sent (s since start)

    def _now(self) -> float:
        return time.monotonic() - self.start

    async def run(self) -> None:
        """Hold a connection until cancelled."""
        while True:
            if not await self._hold_one():
                await asyncio.sleep(RECONNECT_DELAY)

    async def _hold_one(self) -> bool:
        """Open a connection and converse on it until it breaks; record what happened.

        Returns whether the connection had worked (then the probe reconnects at once)."""
        try:
            ws = await connect(
                self.stats.url,
                open_timeout=self.settings.timeout,
                close_timeout=CLOSE_TIMEOUT,
                ping_interval=None,
                proxy=None,
                user_agent_header=USER_AGENT,
            )
        except Exception as exc:  # refused, handshake rejected, timed out: all measured
            self.stats.connect_failed(describe_exception(exc))
            return False
        self.stats.connected()
        self.working = False
        try:
            await self._converse(ws)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else int(CloseCode.ABNORMAL_CLOSURE)
            self._broke(self._now(), code, str(exc))
        except TimeoutError:
            self._broke(self.unanswered_since, None, f"no reply within {self.settings.timeout:g} s")
        except Exception as exc:  # e.g. OSError from the transport
            self._broke(self._now(), None, describe_exception(exc))
        finally:
            await ws.close()
        return self.working

    def _broke(self, t: float, code: int | None, reason: str) -> None:
        self.stats.broke(self.index, t, code, reason, self.working)

    async def _converse(self, ws: ClientConnection) -> None:
        """Send a message every interval and wait for each reply; raises when the connection breaks."""
        while True:
            sent = time.monotonic()
            self.unanswered_since = sent - self.start
            await ws.send(f"ping {next(self.counter)}")
            async with asyncio.timeout(self.settings.timeout):
                reply = await ws.recv()
            text = reply if isinstance(reply, str) else reply.decode("utf-8", "replace")
            self.stats.answered(self.index, sent - self.start, self._now(), extract_version(self.pattern, text))
            self.working = True
            await _idle(ws, sent + self.settings.ws_interval)


async def _idle(ws: ClientConnection, until: float) -> None:
    """Wait until ``until`` (monotonic), reading and dropping any message; a close raises at once."""
    while (left := until - time.monotonic()) > 0:
        try:
            async with asyncio.timeout(left):
                await ws.recv()
        except TimeoutError:
            return


def start_probes(settings: VerifySettings, recorder: WsRecorder, start: float) -> list[asyncio.Task[None]]:
    """Start ``ws_connections`` probes per ws URL; they run until cancelled."""
    return [
        asyncio.create_task(_Probe(settings, stats, i, start).run(), name=f"ws-probe {stats.url} #{i}")
        for stats in recorder.urls.values()
        for i in range(stats.connections)
    ]
