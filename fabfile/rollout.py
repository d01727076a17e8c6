"""The replace sequence: what a tier does, written once for every Compose engine.

For one tier of app services that roll (``fabfile/remote/tier.sh`` does the host side in
one SSH round trip):

1. *pin* (first tier only): one proxy load routes every service that will roll, in every
   tier, to its old containers' addresses, so new containers get no traffic while they boot;
2. *start*: the engine starts the tier's new containers, all services together;
3. *health*: the host waits until all are healthy, failing fast when Docker says one is
   unhealthy, exits or restarts (``health_timeout`` is only the ceiling);
4. *switch*: one proxy load routes the tier's services to their new containers only;
5. *drain + retire*: the host waits until the old addresses have nothing in flight, then
   stops the old containers in the background, while the next tier already starts;
6. *restore* (after the last tier): once every old container is gone, one reload of the
   proxy's config file routes by service name again (``restore.sh``, on the host, which
   also releases the lock; the deploy need not wait for it).

Unwinding follows the one rule of every rollout engine: before the switch, undo by
removing the new containers (they never had traffic); after it, the new containers carry
the traffic and are never removed: the host finishes the drain and retire on its own even
if zdd dies. A deploy costs (tiers that roll) + 2 proxy loads.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from . import commands as cmds
from .plan import HOOK_LABEL, HostState, ServicePlan
from .proxy import STREAM_CLOSE_DELAY_SINCE, Routing, caddy_version
from .runner import Conversation, Outcome, StepFailed
from .session import Session


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: undo what carries no traffic yet, exit 130."""


@dataclass
class TierRun:
    """One tier's conversation with the host, kept open after the switch while it drains."""

    names: list[str]
    conv: Conversation
    started: float
    pid: str = ""
    lines: list[str] = field(default_factory=list)
    new: dict[str, list[str]] = field(default_factory=dict)       # service -> new container ids
    new_ips: dict[str, list[str]] = field(default_factory=dict)
    switched: bool = False
    ended: Outcome | None = None


class Rollout:
    """One deploy's replacement of app services, tier after tier, on one host."""

    def __init__(self, s: Session, state: HostState, engine: str, plans: list[ServicePlan], run: str = "run",
                 journal: list[str] | None = None):
        self.s, self.r, self.host, self.state, self.engine = s, s.r, s.host, state, engine
        self.run = run
        self.journal = journal if journal is not None else []  # lines for the host's journal, sent once
        self.plans = {p.name: p for p in plans}
        rolling = [p for p in plans if p.roll]
        self.routing: Routing | None = None
        if state.proxy and state.proxy_config is not None and self.host.proxy.drain:
            keeps_streams = caddy_version(state.proxy_version) >= STREAM_CLOSE_DELAY_SINCE
            delay = self.host.proxy.stream_close_delay if keeps_streams else ""
            self.routing = Routing(state.proxy_config, state.proxy_networks, delay)
        self.pinned = False
        self.open: list[TierRun] = []        # tiers past their switch, still draining
        self.retiring: list[str] = []        # old container ids being stopped
        self.held: dict[str, list[str]] = {}
        for p in rolling:
            self.held[p.name] = self._held(p)
        self.failed = False

    # --- the proxy side ------------------------------------------------------------------
    def _drains(self, name: str) -> bool:
        return (self.routing is not None and self.host.service(name).drain and bool(self.routing.ports(name)))

    def _held(self, p: ServicePlan) -> list[str]:
        if not self._drains(p.name) or not p.old:
            return []
        ips = [self.routing.ip(c.networks) for c in p.old]
        if None in ips:
            raise StepFailed(f"{p.name}: an old container shares no network with {self.host.proxy.service}")
        return self.routing.held_for(p.name, ips)

    def _pin_line(self) -> str:
        """The first tier pins every service that will roll (in any tier) to its old containers."""
        if self.pinned or self.routing is None:
            return "nopin"
        self.pinned = True
        any_pin = False
        for p in self.plans.values():
            if p.roll and p.old and self._drains(p.name):
                self.routing.route(p.name, [self.routing.ip(c.networks) for c in p.old], self.held[p.name])
                any_pin = True
        return self._load_line("pin") if any_pin else "nopin"

    def _switch_line(self, run: TierRun) -> str:
        routed = [n for n in run.names if self._drains(n)]
        if not routed:
            return "go"
        for name in routed:
            ips = run.new_ips.get(name) or []
            if not ips:
                raise StepFailed(f"{name}: its new containers share no network with {self.host.proxy.service}")
            self.routing.route(name, ips, self.held[name])
        return self._load_line("switch")

    def _load_line(self, word: str) -> str:
        """The current routing as a line for tier.sh to load: one more proxy load."""
        self.s.report.proxy_loads += 1
        return self.routing.load_line(word)

    # --- one tier ------------------------------------------------------------------------
    def _spec(self, p: ServicePlan) -> cmds.TierService:
        svc = self.host.service(p.name)
        hook = svc.pre_stop_hook
        target = p.target
        if self.engine == "docker-rollout" and p.old:
            hook = hook or p.old[0].labels.get(HOOK_LABEL, "")
            target = len(p.old)  # docker-rollout doubles the running count
        return cmds.TierService(p.name, target, svc.health_timeout, svc.stop_timeout,
                                tuple(c.id for c in p.old), tuple(self.held.get(p.name, [])), hook)

    def tier(self, names: list[str]) -> None:
        """Replace the containers of these services (one tier) with zero downtime."""
        plans = [self.plans[n] for n in names if self.plans[n].roll]
        if not plans:
            return
        specs = [self._spec(p) for p in plans]
        cmd = cmds.tier(self.host, self.engine == "docker-rollout", self.state.proxy or "", specs,
                        self.state.proxy_networks, self.state.key, self.run)
        run = TierRun([p.name for p in plans], None, time.monotonic())  # type: ignore[arg-type]
        with self.s.report.step(f"rollout {', '.join(run.names)}") as rec:
            pin = self._pin_line()
            run.conv = self.r.converse(cmd, {"pin": "the proxy config pinning every service that rolls to its "
                                                    "old containers", "switch": "the proxy config routing "
                                                    f"{', '.join(run.names)} to the new containers",
                                             "nopin": "nothing to pin", "go": "go on (no proxy routing)",
                                             "journal": "the plan, for the host's journal"})
            try:
                while self.journal:  # the plan, written on the host before the first change
                    run.conv.send("journal " + self.journal.pop(0))
                run.conv.send(pin)
                self._until(run, ("pinned",), 30)
                ceiling = max(s.health_timeout for s in specs) + 120
                self._until(run, ("healthy",), ceiling)
                run.conv.send(self._switch_line(run))
                self._until(run, ("switched",), 60)
                run.switched = True
            except BaseException as e:
                self._undo(run, e)
                raise
            self.open.append(run)
            for p in plans:
                self.retiring += [c.id for c in p.old]
            counts = ", ".join(f"{p.name} {len(p.old)} → {len(run.new.get(p.name, []))}" for p in plans)
            rec.detail = f"{counts}; healthy and switched"

    def _until(self, run: TierRun, words: tuple[str, ...], timeout: float) -> str:
        """Read the host's lines until one starts with one of ``words`` (or ``failed``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StepFailed(f"{', '.join(run.names)}: no answer from the host within {timeout:.0f} s "
                                 f"(waiting for {words[0]})")
            line = run.conv.readline(min(left, 1.0))
            if line is None:
                run.ended = run.conv.close()
                raise StepFailed(f"{', '.join(run.names)}: the host-side rollout ended unexpectedly "
                                 f"({run.ended.first_error_line()})", "\n".join(run.lines))
            if not line:
                continue
            word, _, rest = line.partition(" ")
            if word == "progress":
                self.s.report.progress(rest)
                continue
            run.lines.append(line)
            if word == "pid":
                run.pid = rest.strip()
            elif word == "note":
                self.r.note(rest)
            elif word == "new":
                self._new(run, rest)
            elif word == "failed":
                run.ended = run.conv.close()
                raise StepFailed(f"{', '.join(run.names)}: {rest}; new containers removed, old ones serving",
                                 failure_detail(run.lines))
            elif word in words:
                return rest

    def _new(self, run: TierRun, rest: str) -> None:
        name, cid, *nets = rest.split()
        run.new.setdefault(name, []).append(cid)
        if self.routing is not None:
            ip = self.routing.ip(dict(n.partition("=")[::2] for n in nets))
            if ip:
                run.new_ips.setdefault(name, []).append(ip)

    def _undo(self, run: TierRun, error: BaseException) -> None:
        """Before the switch: make sure the host removes the new containers, then let the
        conversation end (the host's tier.sh undoes on SIGTERM, on `abort` and on EOF)."""
        self.failed = True
        if run.ended is not None or run.conv is None:
            return
        try:
            if isinstance(error, KeyboardInterrupt) and run.pid and not self.r.dry_run:
                self.r.change(cmds.signal_process(run.pid), check=False)
            else:
                run.conv.send("abort")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                line = run.conv.readline(1.0)
                if line is None:
                    break
                if line.startswith("failed") or line.startswith("aborted"):
                    self.r.note(f"{', '.join(run.names)}: {line.partition(' ')[2]}")
            run.ended = run.conv.close()
        except Exception as e:  # the first failure is what the operator needs
            self.r.note(f"{', '.join(run.names)}: could not confirm the new containers were removed: {e}")

    # --- the end -------------------------------------------------------------------------
    def drain_reports(self, wait: bool = True) -> None:
        """One line per tier past its switch: its drain, waited for (``wait``), or only what the
        host already said; without waiting, tier.sh finishes the drain and retire on its own
        (it outlives the connection; the restore job waits for the old containers)."""
        for run in self.open:
            t0 = time.monotonic()
            drained = self._drained(run, wait)
            if wait:
                run.ended = run.conv.close()
                self.s.report.record(f"drain {', '.join(run.names)}", "ok" if drained else "failed",
                                     drained or "no answer (the host finishes it on its own)", time.monotonic() - t0)
            else:
                run.conv.close_early()
                self.s.report.record(f"drain {', '.join(run.names)}", "ok", drained or "left to the host (it stops "
                                     "the old containers once nothing is in flight to them)")
        self.open = []

    def _drained(self, run: TierRun, wait: bool) -> str:
        """The host's ``drained`` line for a tier (up to its ``retired``), or "" if not (yet) sent."""
        drained, deadline = "", time.monotonic() + self.host.proxy.drain_timeout + 30
        while time.monotonic() < deadline:
            line = run.conv.readline(1.0 if wait else 0.05)
            if line is None or line.startswith("retired") or (not line and not wait):
                break
            if line.startswith("progress "):
                self.s.report.progress(f"{', '.join(run.names)} {line[len('progress '):]}")
            elif line.startswith("drained "):
                drained = line[len("drained "):]
        return drained

    def needs_restore(self) -> bool:
        return self.routing is not None and (self.routing.loads > 0 or self.state.proxy_pinned)

    def restore(self, detach: bool) -> bool:
        """Reload the proxy's file once the old containers are gone; True when a job on the
        host took the lock over to do it later."""
        with self.s.report.step(f"reload-{self.host.proxy.service}") as rec:
            grace = max((self.host.service(n).stop_timeout or 10) for n in self.plans) + 30
            cmd = cmds.restore(self.host, self.state.key, self.state.proxy or "", self.retiring, detach, grace)
            res = self.r.change(cmd, check=False)
            rec.detail = (res.stdout.strip().splitlines() or [res.first_error_line()])[-1]
            if res.ok:
                self.s.report.proxy_loads += 1
            else:
                rec.status = "failed"
                self.s.notes.append(f"the proxy still routes by container address: "
                                    f"fab -H {self.s.name} reload-caddy once the old containers are gone")
            return detach and res.ok


def failure_detail(lines: list[str]) -> str:
    """The health log and last log lines the host sent for a failed tier, readable."""
    out: list[str] = []
    for line in lines:
        word, _, rest = line.partition(" ")
        if word == "detail-health":
            name, _, health = rest.partition(" ")
            out.append(f"--- {name.lstrip('/')}")
            try:
                h = json.loads(health) if health and health != "null" else None
            except json.JSONDecodeError:
                h = None
            if h:
                out.append(f"health: {h.get('Status')}, failing streak {h.get('FailingStreak')}")
                for entry in (h.get("Log") or [])[-3:]:
                    text = (entry.get("Output") or "").strip().replace("\n", " ")[:200]
                    out.append(f"  check exit {entry.get('ExitCode')}: {text}")
            out.append("last log lines:")
        elif word == "detail-log":
            out.append(f"  {rest.partition(' ')[2]}")
        elif word == "detail-rollout":
            out.append(f"  docker-rollout {rest}")
    return "\n".join(out[-80:])
