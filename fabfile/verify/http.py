"""The HTTP side of the loop: workers that send GETs and classify every outcome.

``concurrency`` asyncio workers, each with its own keep-alive
``httpx.AsyncClient`` (no redirects followed, no proxies from the
environment; see :func:`make_clients` for why not one shared pool), hit the
configured URLs round-robin, optionally paced by a shared
:class:`TokenSchedule`. Every request is classified:

* ``ok``            -- a 2xx response
* ``status NNN``    -- any other HTTP status (each status separately)
* ``connect error`` -- ``httpx.ConnectError`` / ``httpx.ConnectTimeout``
* ``timeout``       -- ``ReadTimeout``, ``WriteTimeout``, ``PoolTimeout`` or no
  complete response within ``VerifySettings.timeout``
* ``read error``    -- every other transport error (``ReadError``,
  ``RemoteProtocolError``, ``WriteError``, ...)

Latencies are measured from send until the body (at most ``BODY_LIMIT``
bytes) was read.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import httpx

from .recorder import OK, Recorder
from .settings import USER_AGENT, VerifySettings, compile_regex
from .versions import extract_version

CONNECT_ERROR = "connect error"
READ_ERROR = "read error"
TIMEOUT = "timeout"

BODY_LIMIT = 64 * 1024  # bytes of each body that are read and searched
MAX_SCHEDULE_LAG = 1.0  # seconds of backlog the rate schedule may catch up


def classify_status(status: int) -> str:
    """``ok`` for 2xx, else ``status NNN``."""
    return OK if 200 <= status < 300 else f"status {status}"


def classify_exception(exc: BaseException) -> str:
    """Map an exception raised while requesting to a failure class."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return CONNECT_ERROR
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return TIMEOUT
    return READ_ERROR


def describe_exception(exc: BaseException, limit: int = 160) -> str:
    """Short one-line text for an exception: ``Type: first line of message``."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class TokenSchedule:
    """Shared absolute pacing: token k is due at ``start + k / rate``.

    Workers reserve the next due time and sleep until it, so the total rate is
    exact regardless of how many workers there are or how long each request
    takes (no per-worker drift). If all workers were blocked (e.g. a stalled
    server) and the schedule fell more than ``max_lag`` seconds behind, it is
    re-anchored so at most ``max_lag * rate`` overdue requests are fired as a
    catch-up burst.
    """

    def __init__(self, rate: float, start: float, max_lag: float = MAX_SCHEDULE_LAG) -> None:
        self.interval = 1.0 / rate
        self.next_due = start
        self.max_lag = max_lag

    def reserve(self, now: float) -> float:
        """Claim the next token; returns the (monotonic) time it is due."""
        due = max(self.next_due, now - self.max_lag)
        self.next_due = due + self.interval
        return due


class HttpContext:
    """State shared by the workers of one run."""

    def __init__(self, settings: VerifySettings, recorder: Recorder) -> None:
        self.settings = settings
        self.recorder = recorder
        self.urls = list(settings.urls)
        self.counter = itertools.count()
        self.start = recorder.started_mono
        self.deadline = self.start + settings.duration if settings.duration else None
        self.schedule = TokenSchedule(settings.rate, self.start) if settings.rate else None
        self.pattern = compile_regex(settings.version_regex) if settings.version_regex else None
        self.need_body = settings.version_header is None and self.pattern is not None
        self.in_flight = 0
        self.stopping = False  # set when stopping: workers send nothing new


def make_clients(settings: VerifySettings, transport: httpx.AsyncBaseTransport | None) -> list[httpx.AsyncClient]:
    """One keep-alive client per worker: no redirects, no proxies from the environment.

    Each worker has its own small pool (one connection per origin it talks
    to), so ``concurrency`` workers hold at most ``concurrency`` connections
    per origin. Why not one shared pool of ``concurrency`` connections:
    httpcore's pool re-scans all its connections (quadratically) on every
    request, which measured 230 req/s at 32 connections against a local Caddy,
    versus ~850 req/s with per-worker pools. The TLS context is built once and
    shared (building one costs ~25 ms).
    """
    origins = len({(u.scheme, u.host, u.port) for u in map(httpx.URL, settings.urls)})
    limits = httpx.Limits(max_connections=origins, max_keepalive_connections=origins)
    verify = httpx.create_ssl_context() if transport is None else True
    headers = {"User-Agent": USER_AGENT, **settings.headers}
    return [
        httpx.AsyncClient(
            transport=transport,
            limits=limits,
            verify=verify,
            timeout=httpx.Timeout(settings.timeout),
            follow_redirects=False,
            trust_env=False,
            headers=headers,
        )
        for _ in range(settings.concurrency)
    ]


async def _read_head(response: httpx.Response, limit: int = BODY_LIMIT) -> bytes:
    """Read at most ``limit`` bytes of the (decoded) body.

    Small bodies with a Content-Length are read whole, which keeps the
    connection reusable; longer bodies are cut off and their connection closed.
    """
    length = response.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) <= limit:
        return await response.aread()
    chunks: list[bytes] = []
    size = 0
    stream = response.aiter_bytes()
    try:
        async for chunk in stream:
            chunks.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
    finally:
        await stream.aclose()
    return b"".join(chunks)[:limit]


def _is_stale_connection(exc: BaseException) -> bool:
    """The server closed a kept-alive connection before sending any of the response."""
    return isinstance(exc, httpx.RemoteProtocolError) and "without sending a response" in str(exc)


async def _fetch(
    ctx: HttpContext, client: httpx.AsyncClient, url: str, reused: bool = False, t: float = 0.0
) -> tuple[str, str, str | None]:
    """One GET; returns (class, reason, version). Cancellation propagates.

    ``reused``: the worker's client holds a kept-alive connection from an earlier request,
    so an immediate close without a response is the idle-connection race and the GET is
    retried once on a new connection (when ``retry_stale``).
    """
    settings = ctx.settings
    attempts = 2 if (reused and settings.retry_stale) else 1
    for attempt in range(attempts):
        try:
            async with asyncio.timeout(settings.timeout):
                async with client.stream("GET", url) as response:
                    body = await _read_head(response)
            break
        except TimeoutError:
            return TIMEOUT, f"{TIMEOUT}: no complete response within {settings.timeout:g} s", None
        except Exception as exc:  # every transport problem is a measured outcome
            if attempt + 1 < attempts and _is_stale_connection(exc):
                ctx.recorder.stale_retries.append((t, url))
                continue
            kind = classify_exception(exc)
            return kind, f"{kind}: {describe_exception(exc)}", None
    kind = classify_status(response.status_code)
    if kind != OK:
        return kind, f"{kind}: {response.reason_phrase or 'no reason'}".rstrip(), None
    if settings.version_header is not None:
        version = response.headers.get(settings.version_header)
        return OK, "", version.strip() if version else None
    if ctx.need_body:
        return OK, "", extract_version(ctx.pattern, body.decode("utf-8", "replace"))
    return OK, "", None


async def _next_slot(ctx: HttpContext) -> bool:
    """Wait for this worker's next turn; False when the run's duration is used up."""
    if ctx.stopping:
        return False
    now = time.monotonic()
    if ctx.schedule is not None:
        due = ctx.schedule.reserve(now)
        if ctx.deadline is not None and due >= ctx.deadline:
            return False
        if due > now:
            await asyncio.sleep(due - now)
        return not ctx.stopping
    return ctx.deadline is None or now < ctx.deadline


async def worker(ctx: HttpContext, client: httpx.AsyncClient) -> None:
    """Send requests round-robin over the URLs until told to stop."""
    urls, n = ctx.urls, len(ctx.urls)
    reused = False  # does this worker's client hold a kept-alive connection?
    while await _next_slot(ctx):
        url = urls[next(ctx.counter) % n]
        sent = time.monotonic()
        ctx.in_flight += 1
        try:
            kind, reason, version = await _fetch(ctx, client, url, reused, sent - ctx.start)
        finally:
            ctx.in_flight -= 1
        done = time.monotonic()
        reused = kind not in (CONNECT_ERROR, READ_ERROR, TIMEOUT)
        ctx.recorder.record(url, sent - ctx.start, done - sent, kind, reason, version)


async def let_in_flight_finish(ctx: HttpContext, workers: list[asyncio.Task[None]]) -> None:
    """Send nothing new and wait (up to ``timeout``) for the requests in flight."""
    ctx.stopping = True
    limit = time.monotonic() + ctx.settings.timeout
    while ctx.in_flight and time.monotonic() < limit and not all(w.done() for w in workers):
        await asyncio.sleep(0.02)
