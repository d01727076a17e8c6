"""The watch after the switch (``[watch]``, ``deploy --watch SECONDS``): the new containers
carry all the traffic, the old ones wait out of rotation (each tier's tier.sh holds them from
its switch on, and drains them once the watch is over), and zdd keeps judging the new
containers' answers as the proxy logs them (fabfile/canary.py): the tiers switched so far
while a later tier starts (:meth:`Watch.tick`), then every tier for ``seconds`` after the
last switch (:meth:`Watch.watch`). A clean
watch lets each tier retire its old containers, as without a watch. A breach switches the
traffic straight back to the old containers: one tier loads one config routing every watched
service to its old addresses (the new ones held, so their drain is observable), then every
tier waits until nothing is in flight to its new containers and removes them. The journal
says ``returned`` for each tier, so a run that dies half way is finished by the next one as a
tier that never switched.
"""

from __future__ import annotations

import time
from typing import Any

from ..canary import Counts, judge, total
from ..config_limits import DRAIN_MARGIN, SWITCH_WAIT
from ..config_model import CanaryConfig, WatchConfig
from ..journal import breach_line
from ..proxy import Routing
from ..runner import Conversation, StepFailed
from ..session import Session
from .compose_canary import POLL, read_stats


class WatchBreach(StepFailed):
    """The watch switched the traffic back to the previous containers."""

    zdd_result = "rolled-back"


class Watch:
    """``runs``: the watched tiers (``.watched`` services, ``.conv``, ``.new_ips``);
    ``old``: each watched service's old addresses; ``drain``: how long a tier may take to drain
    (its old containers after the switch, its new ones after a switch back)."""

    def __init__(
        self,
        s: Session,
        runs: list[Any],
        routing: Routing,
        config: WatchConfig,
        old: dict[str, list[str]],
        run_id: str,
        drain: int,
    ):
        self.s, self.runs, self.routing, self.config, self.run_id = s, runs, routing, config, run_id
        self.ips = {n: (old[n], list(r.new_ips[n])) for r in runs for n in r.watched}
        self.drain = drain
        self.new_addrs = {n: routing.addrs(n, new) for n, (_, new) in self.ips.items()}
        self.judged = CanaryConfig(min_requests=config.min_requests, max_error_rate=config.max_error_rate)
        self.last: dict[str, Counts] = {}

    @property
    def label(self) -> str:
        return ", ".join(self.ips)

    def hold(self) -> None:
        """Each tier holds its old containers, out of rotation, from its switch on: "watching"."""
        for run in self.runs:
            if not run.holding:
                expect(run.conv, "watching", SWITCH_WAIT, self.label)
                run.holding = True

    def tick(self) -> None:
        """One judgement of the tiers switched so far, while a later tier starts (its new
        containers not yet routed to). Raises WatchBreach after switching back."""
        self.hold()
        stats = read_stats(self.s, self.runs[-1].conv, self.label)
        for n in self.ips:
            self.last[n] = total(stats, self.new_addrs[n])
            breach = judge(n, self.last[n], Counts(), self.judged)
            if breach:
                self.s.r.note(f"watch, while a later tier started: {self.figures()}")
                self.switch_back(n, breach)

    def watch(self) -> None:
        """Judge every second for ``seconds``; then let the tiers retire their old containers.
        Raises WatchBreach after switching back."""
        self.hold()
        conv = self.runs[-1].conv
        with self.s.report.step(f"watch {self.label}") as rec:
            end = time.monotonic() + self.config.seconds
            while True:
                stats = read_stats(self.s, conv, self.label)
                for n in self.ips:
                    self.last[n] = total(stats, self.new_addrs[n])
                    breach = judge(n, self.last[n], Counts(), self.judged)
                    if breach:
                        rec.detail = self.figures()
                        self.switch_back(n, breach)
                left = end - time.monotonic()
                if left <= 0:
                    break
                self.s.report.progress(f"watch: {self.figures()}, {left:.0f} s left")
                time.sleep(min(POLL, left))
            rec.detail = f"{self.config.seconds} s clean: {self.figures()}"
        quiet = [n for n, c in self.last.items() if c.total < self.config.min_requests]
        if quiet:
            self.s.notes.append(
                f"watch: {', '.join(quiet)} answered fewer than {self.config.min_requests} requests in "
                f"{self.config.seconds} s: not judged (no traffic)"
            )
        for run in self.runs:
            run.conv.send("retire")

    def figures(self) -> str:
        return "; ".join(f"{n} {c.total} answers, {c.errors} 5xx" for n, c in self.last.items())

    def switch_back(self, service: str, breach: str) -> None:
        t0 = time.monotonic()
        new = self.last[service]
        line = breach_line(
            self.run_id,
            "watch-breach",
            service,
            breach,
            new={"answers": new.total, "5xx": new.errors},
            max_error_rate=self.config.max_error_rate,
        )
        first = self.runs[0]
        first.conv.send("journal " + line)
        for n, (old, _) in self.ips.items():
            self.routing.route(n, old)
        every_new = [a for addrs in self.new_addrs.values() for a in addrs]
        self.routing.logged.clear()
        first.conv.send(self.routing.load_line("return", self.routing.config(hold=every_new)))
        self.s.report.proxy_loaded()
        expect(first.conv, "returning", SWITCH_WAIT, self.label)
        took = time.monotonic() - t0
        for run in self.runs[1:]:
            run.conv.send("return")
        for run in self.runs:
            expect(run.conv, "returned", self.drain + DRAIN_MARGIN, self.label)
        raise WatchBreach(
            f"watch: {breach}; the traffic went back to the previous containers in {took:.1f} s and the new ones "
            "were removed"
        )


def expect(conv: Conversation, word: str, timeout: float, label: str) -> str:
    """Read until a line starting with ``word``; StepFailed on ``return-failed`` or the end."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = conv.readline(1.0)
        if line is None:
            raise StepFailed(f"{label}: the host-side rollout ended before it said {word}")
        if line.startswith(word):
            return line
        if line.startswith("return-failed "):
            raise StepFailed(f"{label}: {line[len('return-failed ') :]}")
    raise StepFailed(f"{label}: the host did not say {word} within {timeout:.0f} s")
