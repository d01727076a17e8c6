"""One tier's conversation with the host's ``remote/tier.sh``, as zdd reads it: the lines it
waits for, the new containers the host announces, the tier's timeline, and a failure told in
one line with the host's detail (health log, last log lines) for the operator."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .. import commands as cmds
from ..runner import CommandResult, Conversation, StepFailed
from ..session import Session
from ..timeline import TierTimeline, host_line

# an address on a network the proxy shares, of a container's NET=IP words (None: no such network)
AddressOf = Callable[[Mapping[str, str]], "str | None"]


@dataclass
class TierRun:
    """One tier's conversation with the host, kept open after the switch while it drains."""

    names: list[str]
    conv: Conversation
    started: float
    pid: str = ""
    lines: list[str] = field(default_factory=list)
    new: dict[str, list[str]] = field(default_factory=dict)  # service -> new container ids
    new_ips: dict[str, list[str]] = field(default_factory=dict)
    switched: bool = False
    ended: CommandResult | None = None
    watched: list[str] = field(default_factory=list)  # its services the watch judges from its switch on
    holding: bool = False  # tier.sh said "watching": it holds the old containers for the watch
    lost: bool = False  # the conversation ended with no word of how the tier ended (a dropped connection)
    timeline: TierTimeline | None = None  # the host's marks: where the tier's time went

    def until(
        self,
        s: Session,
        words: tuple[str, ...],
        timeout: float,
        ip: AddressOf | None,
        tick: Callable[[], None] | None = None,
    ) -> str:
        """Read the host's lines until one starts with one of ``words`` (or ``failed``); ``tick``
        is called between two reads (about every second)."""
        deadline = time.monotonic() + timeout
        while True:
            if tick is not None:
                tick()
            left = deadline - time.monotonic()
            if left <= 0:
                raise StepFailed(
                    f"{', '.join(self.names)}: no answer from the host within {timeout:.0f} s (waiting for {words[0]})"
                )
            line = self.conv.readline(min(left, 1.0))
            if line is None:
                self.ended = self.conv.close()
                self.lost = True
                raise StepFailed(
                    f"{', '.join(self.names)}: the host-side rollout ended unexpectedly "
                    f"({self.ended.first_error_line()})",
                    "\n".join(self.lines),
                )
            if not line:
                continue
            word, _, rest = line.partition(" ")
            if word == "progress":
                s.report.progress(rest)
                continue
            if self.timed(line):
                continue
            self.lines.append(line)
            if word == "pid":
                self.pid = rest.strip()
            elif word == "note":
                s.r.note(rest)
            elif word == "new":
                self._new(rest, ip)
            elif word == "failed":
                self.ended = self.conv.close()
                raise StepFailed(
                    f"{', '.join(self.names)}: {rest}; new containers removed, old ones serving",
                    cmds.tier_failure_detail(self.lines),
                )
            elif word in words:
                return rest

    def timed(self, line: str) -> bool:
        """A line of the tier's timeline (``mark``, ``container``): kept, and nothing else to do."""
        marks = host_line(line)
        if marks is not None and self.timeline is not None:
            self.timeline.marks += marks
        return marks is not None

    def _new(self, rest: str, ip: AddressOf | None) -> None:
        name, cid, *nets = rest.split()
        self.new.setdefault(name, []).append(cid)
        addr = ip(dict(n.partition("=")[::2] for n in nets)) if ip else None
        if addr:
            self.new_ips.setdefault(name, []).append(addr)
