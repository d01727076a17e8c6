"""A tier's canary steps, between its *health* and its *switch* (compose_rollout.py), in the
same conversation with the host's tier.sh.

For each step the proxy loads weights that send the step's share of each rolling service's
requests to its new containers (one proxy load a step), with an access log naming the
upstream of every request; every second tier.sh counts that log per upstream address, and
zdd judges the new containers' answers (fabfile/canary.py). A step ends once it lasted
``step_seconds`` and the new containers answered ``min_requests`` in it (or, a quiet service,
after 3 × ``step_seconds``, with a note). A breach ends the tier at once: the journal gets it
with its figures, tier.sh sends the traffic back to the old containers (one proxy load),
waits until nothing is in flight to the new ones and removes them; the run fails, later tiers
untouched.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..canary import Counts, Steps, judge, parse_stats, total
from ..config_limits import SWITCH_WAIT
from ..config_model import CanaryConfig
from ..journal import breach_line
from ..proxy import UPSTREAM_FIELD, Routing
from ..runner import Conversation, StepFailed
from ..session import Session

STATS_WAIT = 45  # tier.sh answers "stats" within this (its reads of the proxy are bounded to 30 s)
POLL = 1.0  # seconds between two judgements


class CanaryBreach(StepFailed):
    """The new containers breached the canary's thresholds: the tier went back to the old ones."""

    zdd_result = "aborted"


class CanaryRun:
    """One tier's canary steps for ``services`` (routed by the proxy, with old containers to
    compare with), in the tier's conversation ``conv``; ``until(words, timeout)`` reads the
    tier's lines until one of ``words``."""

    def __init__(
        self,
        s: Session,
        conv: Conversation,
        until: Callable[[tuple[str, ...], float], str],
        run_id: str,
        routing: Routing,
        config: CanaryConfig,
        ips: dict[str, tuple[list[str], list[str]]],  # service -> (old addresses, new addresses)
    ):
        self.s, self.conv, self.until, self.run_id, self.routing, self.config = s, conv, until, run_id, routing, config
        self.services = list(ips)
        self.new_ips = {n: new for n, (_, new) in ips.items()}
        self.new_addrs = {n: routing.addrs(n, new) for n, (_, new) in ips.items()}
        self.old_addrs = {n: routing.addrs(n, old) for n, (old, _) in ips.items()}
        self.weighted = False
        self.last: dict[str, Counts] = {}

    @property
    def label(self) -> str:
        return ", ".join(self.services)

    def steps(self) -> None:
        """Every step, judged every second; raises CanaryBreach (the tier is undone by the caller)."""
        s, conv = self.s, self.conv
        log = self.routing.log
        every_new = [a for n in self.services for a in self.new_addrs[n]]
        conv.send(f"canary {log} {UPSTREAM_FIELD} {','.join(every_new)}")
        conv.send(self.routing.load_line("back", self.routing.config(hold=every_new)))
        clock = Steps(self.config)
        for percent in self.config.steps:
            with s.report.step(f"canary {self.label} {percent} %") as rec:
                weights = {n: (self.new_ips[n], percent) for n in self.services}
                s.report.proxy_loaded()
                self.weighted = True
                conv.send(self.routing.load_line(f"weigh {percent}", self.routing.config(weights)))
                self.until(("weighted",), SWITCH_WAIT)
                started = self._judge()
                clock.begin(time.monotonic(), started)
                while True:
                    time.sleep(POLL)
                    totals = self._judge()
                    over, quiet = clock.over(time.monotonic(), totals)
                    if over:
                        break
                    s.report.progress(f"canary {percent} %: {self._figures()}")
                rec.detail = self._figures()
                if quiet:
                    s.r.note(
                        f"canary {percent} %: {', '.join(quiet)} answered fewer than {self.config.min_requests} "
                        f"requests in {clock.elapsed(time.monotonic()):.0f} s: the step passed unjudged for them"
                    )

    def _judge(self) -> dict[str, int]:
        """Read the counts, judge each service; the new containers' answers by service."""
        stats = read_stats(self.s, self.conv, self.label)
        for n in self.services:
            new, old = total(stats, self.new_addrs[n]), total(stats, self.old_addrs[n])
            self.last[n] = new
            breach = judge(n, new, old, self.config)
            if breach:
                self._breach(n, breach, new, old)
        return {n: self.last[n].total for n in self.services}

    def _figures(self) -> str:
        return "; ".join(f"{n} new {c.total} answers, {c.errors} 5xx" for n, c in self.last.items())

    def _breach(self, service: str, breach: str, new: Counts, old: Counts) -> None:
        line = breach_line(
            self.run_id,
            "canary-breach",
            service,
            breach,
            new={"answers": new.total, "5xx": new.errors, "p95_ms": new.p95_ms()},
            old={"answers": old.total, "5xx": old.errors, "p95_ms": old.p95_ms()},
            max_error_rate=self.config.max_error_rate,
        )
        self.conv.send("journal " + line)
        self.s.report.proxy_loaded()  # the way back
        raise CanaryBreach(
            f"canary: {breach}; its traffic went back to the old containers and the new ones were removed"
        )


def read_stats(s: Session, conv: Conversation, label: str) -> dict[str, Counts]:
    """Ask tier.sh for the counts of the proxy's access log, per upstream address."""
    conv.send("stats")
    lines: list[str] = []
    deadline = time.monotonic() + STATS_WAIT
    while time.monotonic() < deadline:
        line = conv.readline(1.0)
        if line is None:
            raise StepFailed(f"{label}: the host-side rollout ended while zdd judged its new containers")
        if line == "stats-end":
            return parse_stats(lines)
        if line.startswith("stats "):
            lines.append(line)
        elif line.startswith("note "):
            s.r.note(line[len("note ") :])
    raise StepFailed(f"{label}: no counts of the proxy's log from the host within {STATS_WAIT} s")
