"""Running the loop: in the foreground (``run``) or in a thread during a deploy (``BackgroundLoop``).

One event loop runs the HTTP workers and the websocket probes side by side, on
one clock (the recorder's start).

Requests still in flight when the loop is stopped are cancelled and not
counted (their number is reported as ``cancelled_in_flight``), unless the run
was asked to let them finish first.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import httpx

from . import http, ws
from .recorder import Recorder
from .report import Report
from .settings import VerifySettings
from .ws_stats import WsRecorder

POLL_INTERVAL = 0.05  # how often the loop checks its stop conditions


async def _wait_for_stop(
    deadline: float | None, tasks: list[asyncio.Task[None]], stop_event: threading.Event | None
) -> None:
    """Return when the stop event is set, the duration is over, all tasks
    finished, or one of them crashed."""
    while True:
        if stop_event is not None and stop_event.is_set():
            return
        if all(t.done() for t in tasks):
            return
        if any(t.done() and not t.cancelled() and t.exception() is not None for t in tasks):
            return
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return
        wait = POLL_INTERVAL if deadline is None else min(POLL_INTERVAL, deadline - now)
        await asyncio.sleep(max(wait, 0.001))


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _raise_crash(tasks: list[asyncio.Task[None]]) -> None:
    """Re-raise the first exception a task died of: a bug in the loop, not a measured failure."""
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()


async def _run_async(
    settings: VerifySettings,
    recorder: Recorder,
    ws_recorder: WsRecorder,
    stop_event: threading.Event | None,
    transport: httpx.AsyncBaseTransport | None,
    finish_in_flight: bool = False,
) -> None:
    """Run the workers and probes until stopped. In-flight requests are then cancelled and
    not counted; with ``finish_in_flight`` they first get up to ``timeout`` s to finish."""
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(c)
            for c in (http.make_clients(settings, transport) if settings.urls else [])
        ]
        recorder.restart_clock()
        ctx = http.HttpContext(settings, recorder)
        workers = [asyncio.create_task(http.worker(ctx, c)) for c in clients]
        tasks = workers + ws.start_probes(settings, ws_recorder, recorder.started_mono)
        try:
            await _wait_for_stop(ctx.deadline, tasks, stop_event)
            if finish_in_flight:
                await http.let_in_flight_finish(ctx, workers)
        finally:
            recorder.stopped_mono = time.monotonic()
            recorder.cancelled_in_flight = ctx.in_flight
            await _cancel_all(tasks)
        _raise_crash(tasks)


def run(
    settings: VerifySettings,
    stop_event: threading.Event | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    finish_in_flight: bool = False,
) -> Report:
    """Run the loop in the foreground until ``settings.duration`` or ``stop_event``.

    Ctrl-C (KeyboardInterrupt) stops the loop and still returns the report of
    what was measured, marked ``interrupted``. ``transport`` is for tests
    (e.g. ``httpx.MockTransport``).
    """
    recorder = Recorder(settings.urls)
    ws_recorder = WsRecorder(settings.ws_urls, settings.ws_connections)
    interrupted = False
    try:
        asyncio.run(_run_async(settings, recorder, ws_recorder, stop_event, transport, finish_in_flight))
    except KeyboardInterrupt:
        interrupted = True
    if recorder.stopped_mono is None:
        recorder.stopped_mono = time.monotonic()
    ws_recorder.finish(recorder.elapsed())
    return Report(settings, recorder, ws=ws_recorder, interrupted=interrupted)


class BackgroundLoop:
    """The loop in a daemon thread with its own event loop, e.g. during a deploy.

    >>> loop = BackgroundLoop(settings).start()
    >>> ...deploy...
    >>> report = loop.stop()
    """

    def __init__(
        self,
        settings: VerifySettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        finish_in_flight: bool = False,
    ) -> None:
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

    def start(self) -> BackgroundLoop:
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

    def __enter__(self) -> BackgroundLoop:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is not None and self._report is None and self._error is None:
            self.stop()


def run_and_print(settings: VerifySettings, json_path: str | None = None) -> Report:
    """Run in the foreground (Ctrl-C ends it), print the report, write JSON if asked.

    The one place in this package that prints: it is what the tasks call.
    """
    report = run(settings)
    print(report.render())
    if json_path:
        report.write_json(json_path)
    return report
