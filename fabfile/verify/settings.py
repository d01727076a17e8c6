"""What a verification run hits, how hard, for how long, and how it reads versions.

:class:`VerifySettings` validates itself on construction: every problem is a
one-line ValueError that the tasks turn into an exit message.
:func:`settings_for_host` builds the settings from a host's ``verify`` table in
hosts.toml (``config.VerifyConfig``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import httpx

DEFAULT_VERSION_REGEX = r"\bv\d+[\w.-]*"
USER_AGENT = "zdd-verify/0.1"


@dataclass
class VerifySettings:
    """What to hit, how hard, for how long, and how to read the version."""

    urls: list[str]
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

    def __post_init__(self) -> None:
        if isinstance(self.urls, str):
            raise ValueError("urls must be a list of URLs, not a single string")
        self.urls = list(self.urls)
        if not self.urls:
            raise ValueError("no urls to verify")
        for url in self.urls:
            check_http_url(url)
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
        }


def check_http_url(url: str) -> None:
    """Raise ValueError unless ``url`` is an absolute http(s) URL."""
    try:
        parsed = httpx.URL(url)
    except Exception as exc:  # httpx.InvalidURL, TypeError
        raise ValueError(f"invalid url {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"invalid url {url!r}: need an absolute http:// or https:// URL")


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
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return VerifySettings(**values)
