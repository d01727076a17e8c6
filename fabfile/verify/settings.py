"""What a verification run hits, how hard, for how long, and how it reads versions.

HTTP URLs (``urls``) get requests in a loop; websocket URLs (``ws_urls``) get
``ws_connections`` connections each, held open for the whole run. Either list may
be empty, not both.

:class:`VerifySettings` validates itself on construction: every problem is a
one-line ValueError that the tasks turn into an exit message.
:func:`settings_for_host` builds the settings from a host's ``verify`` table in
hosts.toml (``config.VerifyConfig``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import httpx
from websockets.exceptions import InvalidURI
from websockets.uri import parse_uri

from ..config import DEFAULT_VERSION_REGEX  # declared once, with the other defaults

USER_AGENT = "zdd-verify/0.1"


@dataclass
class VerifySettings:
    """What to hit, how hard, for how long, and how to read the version."""

    urls: list[str] = field(default_factory=list)
    concurrency: int = 8
    rate: float | None = None
    duration: float | None = None
    timeout: float = 10.0
    version_regex: str | None = DEFAULT_VERSION_REGEX
    version_header: str | None = None
    max_failures: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    # Retry a GET once, at once, when the server closed a kept-alive connection without
    # answering (RFC 9110 9.2.2; browsers and Go do the same). Counted apart as
    # ``stale_retries``; False counts each such request as a failure instead.
    retry_stale: bool = True
    ws_urls: list[str] = field(default_factory=list)
    ws_connections: int = 4  # connections held per ws URL
    ws_interval: float = 1.0  # seconds between messages on each connection
    max_ws_gap: float | None = None  # longest time a probe may go without a working connection

    def __post_init__(self) -> None:
        self.urls = _url_list("urls", self.urls, check_http_url)
        self.ws_urls = _url_list("ws_urls", self.ws_urls, check_ws_url)
        if not self.urls and not self.ws_urls:
            raise ValueError("no urls to verify (give http(s) urls, ws urls, or both)")
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ValueError(f"concurrency must be an integer >= 1, got {self.concurrency!r}")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"rate must be > 0 requests/s (or None for unlimited), got {self.rate!r}")
        if self.duration is not None and not self.duration > 0:
            raise ValueError(f"duration must be > 0 s (or None to run until stopped), got {self.duration!r}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0 s, got {self.timeout!r}")
        if not isinstance(self.max_failures, int) or self.max_failures < 0:
            raise ValueError(f"max_failures must be an integer >= 0, got {self.max_failures!r}")
        if self.version_regex is not None:
            compile_regex(self.version_regex)
        self.headers = dict(self.headers)
        self._check_ws()

    def _check_ws(self) -> None:
        if isinstance(self.ws_connections, bool) or not isinstance(self.ws_connections, int) or self.ws_connections < 1:
            raise ValueError(f"ws_connections must be an integer >= 1, got {self.ws_connections!r}")
        if not self.ws_interval > 0:
            raise ValueError(f"ws_interval must be > 0 s, got {self.ws_interval!r}")
        if self.max_ws_gap is not None and not self.max_ws_gap > 0:
            raise ValueError(f"max_ws_gap must be > 0 s (or None for no limit), got {self.max_ws_gap!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy of the settings."""
        return {
            "urls": list(self.urls),
            "concurrency": self.concurrency,
            "rate": self.rate,
            "duration": self.duration,
            "timeout": self.timeout,
            "version_regex": self.version_regex,
            "version_header": self.version_header,
            "max_failures": self.max_failures,
            "headers": dict(self.headers),
            "retry_stale": self.retry_stale,
            "ws_urls": list(self.ws_urls),
            "ws_connections": self.ws_connections,
            "ws_interval": self.ws_interval,
            "max_ws_gap": self.max_ws_gap,
        }


def _url_list(name: str, urls: Any, check: Callable[[str], None]) -> list[str]:
    """A list of checked URLs (a lone string is a mistake, not a list of characters)."""
    if isinstance(urls, str):
        raise ValueError(f"{name} must be a list of URLs, not a single string")
    out = list(urls)
    for url in out:
        check(url)
    return out


def check_http_url(url: str) -> None:
    """Raise ValueError unless ``url`` is an absolute http(s) URL."""
    try:
        parsed = httpx.URL(url)
    except Exception as exc:  # httpx.InvalidURL, TypeError
        raise ValueError(f"invalid url {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"invalid url {url!r}: need an absolute http:// or https:// URL")


def check_ws_url(url: str) -> None:
    """Raise ValueError unless ``url`` is a ws:// or wss:// URL."""
    try:
        parse_uri(url)
    except InvalidURI:
        raise ValueError(f"invalid ws url {url!r}: need a ws:// or wss:// URL") from None


@lru_cache(maxsize=32)
def compile_regex(pattern: str) -> re.Pattern[str]:
    """Compile a version regex, turning ``re.error`` into a one-line ValueError."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid version_regex {pattern!r}: {exc}") from None


def settings_for_host(vc: Any, **overrides: Any) -> VerifySettings:
    """VerifySettings from a host's ``verify`` table (config.VerifyConfig); overrides that
    are None are ignored, so CLI flags win only when given."""
    values: dict[str, Any] = {
        "urls": list(vc.urls),
        "concurrency": vc.concurrency,
        "rate": vc.rate or None,
        "timeout": vc.timeout,
        "version_regex": vc.version_regex or None,
        "version_header": vc.version_header or None,
        "max_failures": vc.max_failures,
        "retry_stale": vc.retry_stale,
        "ws_urls": list(vc.ws_urls),
        "ws_connections": vc.ws_connections,
        "max_ws_gap": vc.max_ws_gap or None,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return VerifySettings(**values)
