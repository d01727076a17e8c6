"""Verification loop: proves that a deploy dropped no requests and kept websockets up.

Modules, each about one thing:

* ``settings``  -- :class:`VerifySettings` (validated) and :func:`settings_for_host`
* ``http``      -- the HTTP workers and how each request's outcome is classified
* ``recorder``  -- what the HTTP workers record, per URL and per second
* ``ws``        -- the websocket probes: connections held open, a message a second
* ``ws_stats``  -- what the probes record: disconnects, gaps, versions
* ``versions``  -- reading a version from a reply; first/last seen per version
* ``figures``   -- nearest-rank percentiles and the per-second timeline
* ``report``    -- :class:`Report`: the figures, the verdict and the JSON form
* ``render``    -- the text report
* ``loop``      -- :func:`run` (foreground) and :class:`BackgroundLoop` (during a deploy)

Conventions used throughout the report:

* A request's (or websocket message's) time ``t`` is when it was *sent*, in
  seconds since the loop started; timeline buckets, failures and version
  first/last seen use it. Websocket disconnects and gaps are dated when the
  probe saw them (see ``ws_stats``).
* Latencies are measured from send until the body (at most ``BODY_LIMIT``
  bytes) was read, and only successful (2xx) requests contribute to the
  latency percentiles.
* Percentiles use the nearest-rank method, see :func:`percentile`.

This package is library code: only :func:`run_and_print` prints;
``Report.render()`` returns text for the caller to print.
"""

from .figures import (
    TimelineRow,
    build_timeline,
    collapse_timeline,
    latency_summary,
    percentile,
    render_timeline,
    timeline_from_buckets,
)
from .http import (
    BODY_LIMIT,
    CONNECT_ERROR,
    READ_ERROR,
    TIMEOUT,
    TokenSchedule,
    classify_exception,
    classify_status,
    describe_exception,
)
from .loop import BackgroundLoop, run, run_and_print
from .recorder import OK, Failure, Recorder
from .report import Report
from .settings import DEFAULT_VERSION_REGEX, VerifySettings, settings_for_host
from .versions import VersionSeen, extract_version
from .ws_stats import Disconnect, Gap, WsRecorder, WsUrlStats

__all__ = [
    "BODY_LIMIT",
    "CONNECT_ERROR",
    "DEFAULT_VERSION_REGEX",
    "OK",
    "READ_ERROR",
    "TIMEOUT",
    "BackgroundLoop",
    "Disconnect",
    "Failure",
    "Gap",
    "Recorder",
    "Report",
    "TimelineRow",
    "TokenSchedule",
    "VerifySettings",
    "VersionSeen",
    "WsRecorder",
    "WsUrlStats",
    "build_timeline",
    "classify_exception",
    "classify_status",
    "collapse_timeline",
    "describe_exception",
    "extract_version",
    "latency_summary",
    "percentile",
    "render_timeline",
    "run",
    "run_and_print",
    "settings_for_host",
    "timeline_from_buckets",
]
