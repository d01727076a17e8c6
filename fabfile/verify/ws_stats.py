"""What the websocket probes record: connections opened and lost, gaps, versions.

Words used in the report (times are seconds since the loop started):

* a connection is *working* once a message sent on it got a reply;
* a *disconnect* is a connection that was open (handshake done) and then closed or
  failed while the loop ran, with the close code received (1006: it dropped without
  one; None: it stopped answering within the timeout);
* a *gap* is one probe's time without a working connection: from the moment its
  working connection broke until a new connection answered a message. A gap still
  open when the loop stopped ends at the stop and is marked not recovered;
* a *connect failure* is a failed attempt to open a connection (the first included).

The versions seen are read from replies and dated by when the message was sent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from .versions import VersionSeen, note_version


@dataclass(slots=True)
class Disconnect:
    """A connection that was open and broke; ``t`` is when that was noticed."""

    t: float
    probe: int
    code: int | None
    reason: str


@dataclass(slots=True)
class Gap:
    """One probe's stretch without a working connection."""

    probe: int
    start: float
    end: float
    recovered: bool = True

    @property
    def seconds(self) -> float:
        return self.end - self.start


class WsUrlStats:
    """Everything recorded for one websocket URL (``connections`` probes share it)."""

    def __init__(self, url: str, connections: int) -> None:
        self.url = url
        self.connections = connections
        self.opened = 0
        self.messages = 0  # round trips: a message sent and a reply received
        self.connect_failures: Counter[str] = Counter()  # reason -> failed attempts
        self.disconnects: list[Disconnect] = []
        self.gaps: list[Gap] = []
        self.versions: dict[str, VersionSeen] = {}
        self._broken_since: dict[int, float] = {}  # probe -> when its working connection broke

    @property
    def reconnect_failures(self) -> int:
        return sum(self.connect_failures.values())

    @property
    def longest_gap(self) -> float:
        return max((g.seconds for g in self.gaps), default=0.0)

    def close_codes(self) -> Counter[int | None]:
        return Counter(d.code for d in self.disconnects)

    # -- events (written by the probes) -----------------------------------

    def connected(self) -> None:
        self.opened += 1

    def connect_failed(self, reason: str) -> None:
        self.connect_failures[reason] += 1

    def answered(self, probe: int, sent: float, now: float, version: str | None) -> None:
        """A reply to a message sent at ``sent`` arrived at ``now``: the probe works."""
        self.messages += 1
        if version is not None:
            note_version(self.versions, version, sent)
        start = self._broken_since.pop(probe, None)
        if start is not None:
            self.gaps.append(Gap(probe, start, now))

    def broke(self, probe: int, t: float, code: int | None, reason: str, was_working: bool) -> None:
        """An open connection closed or failed at ``t``; a gap starts if it was working."""
        self.disconnects.append(Disconnect(t, probe, code, reason))
        if was_working:
            self._broken_since.setdefault(probe, t)

    def finish(self, stop: float) -> None:
        """End the gaps still open at ``stop`` (not recovered)."""
        for probe, start in sorted(self._broken_since.items()):
            self.gaps.append(Gap(probe, start, max(start, stop), recovered=False))
        self._broken_since.clear()


class WsRecorder:
    """The websocket side of one run: one :class:`WsUrlStats` per URL."""

    def __init__(self, urls: Iterable[str], connections: int) -> None:
        self.urls: dict[str, WsUrlStats] = {u: WsUrlStats(u, connections) for u in urls}

    @property
    def held(self) -> int:
        """Connections held at once (probes) over all URLs."""
        return sum(s.connections for s in self.urls.values())

    @property
    def disconnects(self) -> int:
        return sum(len(s.disconnects) for s in self.urls.values())

    @property
    def longest_gap(self) -> float:
        return max((s.longest_gap for s in self.urls.values()), default=0.0)

    def close_codes(self) -> Counter[int | None]:
        total: Counter[int | None] = Counter()
        for stats in self.urls.values():
            total.update(stats.close_codes())
        return total

    def silent(self) -> list[str]:
        """URLs on which no message ever round-tripped (nothing proven there)."""
        return [u for u, s in self.urls.items() if not s.messages]

    def ok(self, max_gap: float | None) -> bool:
        """Every URL answered, and no gap was longer than ``max_gap`` (when set)."""
        return not self.silent() and (max_gap is None or self.longest_gap <= max_gap)

    def finish(self, stop: float) -> None:
        for stats in self.urls.values():
            stats.finish(stop)
