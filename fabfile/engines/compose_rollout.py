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

import time
from collections.abc import Callable

from .. import commands as cmds
from .. import steps
from ..config import DRAIN_MARGIN, HEALTH_MARGIN, PIN_WAIT, RESTORE_MARGIN, STOP_GRACE, SWITCH_WAIT, UNDO_WAIT
from ..config_model import CanaryConfig, WatchConfig
from ..locking import Held
from ..plan import HostState, ServicePlan
from ..proxy import STREAM_CLOSE_DELAY_SINCE, UPSTREAM_FIELD, Routing, caddy_version
from ..runner import CommandResult, StepFailed
from ..session import Session
from ..timeline import TierTimeline
from .compose_canary import POLL, CanaryRun
from .compose_tier import TierRun
from .compose_watch import Watch, WatchBreach

NO_CANARY = CanaryConfig()  # switch at once
NO_WATCH = WatchConfig()  # retire the old containers once drained


class ComposeRollout:
    """One run's replacement of app services, tier after tier, on one host (the engines'
    :class:`~fabfile.engines.base.Tiers`); ``plugin``: start them with docker-rollout."""

    def __init__(
        self,
        s: Session,
        state: HostState,
        plans: list[ServicePlan],
        held: Held,
        plugin: bool = False,
        canary: CanaryConfig = NO_CANARY,
        watch: WatchConfig = NO_WATCH,
        wait: bool = False,
    ):
        self.s, self.r, self.host, self.state, self.plugin = s, s.r, s.host, state, plugin
        self.wait = wait  # done(): the drains waited for, the proxy restored before it returns
        self.canary, self.watch = canary, watch
        self.lock = held  # the run's lock: its id, its pending journal lines (the plan)
        held.prune = any(p.roll for p in plans)
        self.plans = {p.name: p for p in plans}
        rolling = [p for p in plans if p.roll]
        self.routing: Routing | None = None
        if state.proxy and state.proxy_config is not None and self.host.proxy.drain:
            keeps_streams = caddy_version(state.proxy_version) >= STREAM_CLOSE_DELAY_SINCE
            delay = self.host.proxy.stream_close_delay if keeps_streams else ""
            log = f"/tmp/zdd-{held.run}.log" if canary.steps or watch.seconds else ""  # in the proxy container
            self.routing = Routing(state.proxy_config, state.proxy_networks, delay, log)
        self.pinned = False
        self.loaded = False  # a config of ours went into the proxy: restore its file at the end
        self.open: list[TierRun] = []  # tiers past their switch, still draining
        self.lost: list[TierRun] = []  # tiers whose end the host never told (their connection dropped)
        self.judged_at = 0.0  # the last judgement of the switched tiers while a later one started
        self.retiring: list[str] = []  # old container ids being stopped
        self.drain_addrs: dict[str, list[str]] = {}  # service -> upstream addresses whose drain is watched
        for p in rolling:
            self.drain_addrs[p.name] = self._drain_addrs(p)

    # --- the proxy side ------------------------------------------------------------------
    def _drains(self, name: str) -> bool:
        return self.routing is not None and self.host.service(name).drain and bool(self.routing.ports(name))

    def _old_ips(self, name: str) -> list[str]:
        """Each old container's address on a network it shares with the proxy ("" for none)."""
        return [self.routing.ip(c.networks) or "" for c in self.plans[name].old]

    def _drain_addrs(self, p: ServicePlan) -> list[str]:
        if not self._drains(p.name) or not p.old:
            return []
        ips = self._old_ips(p.name)
        if "" in ips:
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
                self.routing.route(p.name, self._old_ips(p.name), self.drain_addrs[p.name])
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
            self.routing.route(name, ips, self.drain_addrs[name])
        return self._load_line("switch")

    def _load_line(self, word: str) -> str:
        """The current routing as a line for tier.sh to load: one more proxy load."""
        self.s.report.proxy_loaded()
        self.loaded = True
        return self.routing.load_line(word)

    # --- one tier ------------------------------------------------------------------------
    def tier(self, names: list[str]) -> None:
        """Replace the containers of these services (one tier) with zero downtime."""
        plans = [self.plans[n] for n in names if self.plans[n].roll]
        if not plans:
            return
        specs = [cmds.TierService.of(self.host, p, self.drain_addrs.get(p.name, []), self.plugin) for p in plans]
        cmd = cmds.tier(
            self.host,
            self.plugin,
            self.state.proxy or "",
            specs,
            self.state.proxy_networks,
            self.state.key,
            self.lock.run,
        )
        run = TierRun([p.name for p in plans], None, time.monotonic())  # type: ignore[arg-type]
        run.timeline = TierTimeline(len(self.s.report.timeline) + 1, list(run.names))
        self.s.report.timeline.append(run.timeline)
        canary: CanaryRun | None = None
        with self.s.report.step(f"rollout {', '.join(run.names)}") as rec:
            pin = self._pin_line()
            run.conv = self.r.converse(
                cmd,
                {
                    "pin": "the proxy config pinning every service that rolls to its old containers",
                    "switch": f"the proxy config routing {', '.join(run.names)} to the new containers",
                    "nopin": "nothing to pin",
                    "go": "go on (no proxy routing)",
                    "journal": "the plan, for the host's journal",
                },
            )
            try:
                for line in self.lock.take_lines():  # the plan, written on the host before the first change
                    run.conv.send("journal " + line)
                run.conv.send(pin)
                # the tiers switched so far stay judged while this one starts (with a watch)
                self._until(run, ("pinned",), PIN_WAIT, self._judge_switched)
                ceiling = max(s.health_timeout for s in specs) + HEALTH_MARGIN
                self._until(run, ("healthy",), ceiling, self._judge_switched)
                canary = self._canary(run)
                if canary is not None:
                    canary.steps()
                self._watch_line(run)
                run.conv.send(self._switch_line(run))
                self._until(run, ("switched",), SWITCH_WAIT)
                run.switched = True
            except BaseException as e:
                self._undo(run, e, self.host.proxy.drain_timeout if canary and canary.weighted else 0)
                if run.lost:
                    self.lost.append(run)
                raise
            self.open.append(run)
            for p in plans:
                self.retiring += [c.id for c in p.old]
            counts = ", ".join(f"{p.name} {len(p.old)} → {len(run.new.get(p.name, []))}" for p in plans)
            rec.detail = f"{counts}; healthy and switched"

    def _canary(self, run: TierRun) -> CanaryRun | None:
        """The tier's canary steps, for its services routed by the proxy that have old containers."""
        names = self._guarded(run)
        if not self.canary.steps or not names or self.routing is None:
            return None
        if self.r.dry_run:
            self.r.note(
                f"canary steps {', '.join(f'{p} %' for p in self.canary.steps)} here, judged on the proxy's log"
            )
            return None
        ips = {n: (self._old_ips(n), run.new_ips[n]) for n in names}
        return CanaryRun(
            self.s, run.conv, lambda words, t: self._until(run, words, t), self.lock.run, self.routing, self.canary, ips
        )

    def _guarded(self, run: TierRun) -> list[str]:
        """The tier's services a canary or the watch can judge: routed by the proxy, with old containers."""
        return [n for n in run.names if self._drains(n) and self.plans[n].old and run.new_ips.get(n)]

    def _watch_line(self, run: TierRun) -> None:
        """With a watch: tier.sh holds the old containers from its switch on, and the switch logs."""
        run.watched = self._guarded(run) if self.watch.seconds and self.routing and not self.r.dry_run else []
        if run.watched:
            addrs = [a for n in run.watched for a in self.routing.addrs(n, run.new_ips[n])]
            run.conv.send(f"canary {self.routing.log} {UPSTREAM_FIELD} {','.join(addrs)}")
            run.conv.send("watch")
            self.routing.logged += run.watched

    def _until(
        self, run: TierRun, words: tuple[str, ...], timeout: float, tick: Callable[[], None] | None = None
    ) -> str:
        return run.until(self.s, words, timeout, self.routing.ip if self.routing is not None else None, tick)

    def _judge_switched(self) -> None:
        """With a watch, while a later tier starts: the tiers already switched are judged as the
        watch judges them, about every second (a release that starts failing while later tiers
        roll goes back at once, not at the last switch). Raises WatchBreach after switching back."""
        runs = [r for r in self.open if r.watched]
        if not runs or time.monotonic() - self.judged_at < POLL:
            return
        self.judged_at = time.monotonic()
        try:
            self._watcher(runs).tick()
        except WatchBreach:
            self._went_back(runs)
            raise

    def _undo(self, run: TierRun, error: BaseException, drain: int = 0) -> None:
        """Before the switch: make sure the host removes the new containers, then let the
        conversation end (the host's tier.sh undoes on SIGTERM, on `abort` and on EOF; after
        a canary step it first sends the traffic back and waits up to ``drain`` s for it)."""
        if run.ended is not None or run.conv is None:
            return
        run.lost = True  # until the host says how the tier ended
        try:
            if isinstance(error, KeyboardInterrupt) and run.pid and not self.r.dry_run:
                self.r.change(cmds.signal_process(run.pid), check=False)
            else:
                run.conv.send("abort")
            deadline = time.monotonic() + UNDO_WAIT + drain
            while time.monotonic() < deadline:
                line = run.conv.readline(1.0)
                if line is None:
                    break
                if line.startswith("failed") or line.startswith("aborted"):
                    self.r.note(f"{', '.join(run.names)}: {line.partition(' ')[2]}")
                    run.lost = False
                    break
                if line == "switched":  # the signal came as the switch was loaded: it stands
                    run.switched, run.lost = True, False
                    self.r.note(
                        f"{', '.join(run.names)}: switched as the interruption came: the new containers "
                        "carry the traffic; the host drains and retires the old ones"
                    )
                    break
            if run.switched:
                self.retiring += [c.id for n in run.names for c in self.plans[n].old]
                run.conv.close_early()  # tier.sh drains and retires on its own
                run.ended = CommandResult(ok=True)
            else:
                run.ended = run.conv.close()
                # its undo said so after our wait: the end is known all the same
                if any(ln.startswith(("failed", "aborted")) for ln in run.ended.stdout.splitlines()):
                    run.lost = False
        except Exception as e:  # the first failure is what the operator needs
            self.r.note(f"{', '.join(run.names)}: could not confirm the new containers were removed: {e}")

    # --- the end -------------------------------------------------------------------------
    def unwind(self, error: BaseException) -> None:
        """After a failure (or an interruption): report the drains of the tiers that switched,
        and queue the proxy's restore on the host once their old containers are gone."""
        interrupted = isinstance(error, KeyboardInterrupt)
        if not interrupted:
            self.drain_reports()
        if self.lost and self.needs_restore():
            self._leave_proxy()
            return
        if self.needs_restore() or self.retiring:
            self.lock.handed_over = self.restore(detach=interrupted)

    def _leave_proxy(self) -> None:
        """A tier's end unknown (its tier.sh may still switch, drain and retire on its own, or
        undo): the proxy's file would route by service name to whichever old or new containers
        that tier.sh is about to stop, so the proxy is left on the addresses it has. The next
        run's recovery waits for that tier.sh, and the proxy is restored after."""
        names = ", ".join(n for run in self.lost for n in run.names)
        self.s.report.skip(
            steps.proxy_step(self.s),
            f"left on container addresses: the host never said how the tier {names} ended",
        )
        self.s.notes.append(
            f"the proxy still routes by container address: the next deploy (or fab -H {self.s.name} recover) "
            "restores it once the host has finished that tier"
        )

    def done(self) -> None:
        """After the last tier: the drain reports and the proxy's restore (a job on the host,
        unless ``wait``); the proxy recreated when hosts.toml asks for it (an outage)."""
        if not self.open and not self.retiring and not self.needs_restore():
            self.s.report.skip(steps.proxy_step(self.s), "nothing rolled; the proxy runs its config file")
            return
        watched = [run for run in self.open if run.watched]
        if watched:
            self._watch(watched)
        self.drain_reports(self.wait)
        if self.needs_restore():
            self.lock.handed_over = self.restore(detach=not self.wait)
        if self.host.proxy.mode == "recreate" and any(p.roll for p in self.plans.values()):
            steps.recreate_proxy(self.s)  # the plan's `--force-recreate caddy`, on request: an outage

    def drain_reports(self, wait: bool = True) -> None:
        """One line per tier past its switch: its drain, waited for (``wait``), or only what the
        host already said; without waiting, tier.sh finishes the drain and retire on its own
        (it outlives the connection; the restore job waits for the old containers)."""
        for run in self.open:
            t0 = time.monotonic()
            drained = self._drained(run, wait)
            if wait:
                run.ended = run.conv.close()
                self.s.report.record(
                    f"drain {', '.join(run.names)}",
                    "ok" if drained else "failed",
                    drained or "no answer (the host finishes it on its own)",
                    time.monotonic() - t0,
                )
            else:
                run.conv.close_early()
                self.s.report.record(
                    f"drain {', '.join(run.names)}",
                    "ok",
                    drained or "left to the host (it stops the old containers once nothing is in flight to them)",
                )
        self.open = []

    def _watch(self, runs: list[TierRun]) -> None:
        """The watch after the last switch."""
        try:
            self._watcher(runs).watch()
        except WatchBreach:
            self._went_back(runs)
            raise

    def _watcher(self, runs: list[TierRun]) -> Watch:
        old = {n: self._old_ips(n) for r in runs for n in r.watched}
        return Watch(self.s, runs, self.routing, self.watch, old, self.lock.run, self.host.proxy.drain_timeout)

    def _went_back(self, runs: list[TierRun]) -> None:
        """After a switch back the restore waits for the new containers, not the old."""
        back = {c.id for r in runs for n in r.watched for c in self.plans[n].old}
        self.retiring = [i for i in self.retiring if i not in back] + [
            i for r in runs for n in r.watched for i in r.new[n]
        ]

    def _drained(self, run: TierRun, wait: bool) -> str:
        """The host's ``drained`` line for a tier (up to its ``retired``), or "" if not (yet) sent."""
        drained, deadline = "", time.monotonic() + self.host.proxy.drain_timeout + DRAIN_MARGIN
        while time.monotonic() < deadline:
            line = run.conv.readline(1.0 if wait else 0.05)
            if line is None or line.startswith("retired") or (not line and not wait):
                break
            if line.startswith("progress "):
                self.s.report.progress(f"{', '.join(run.names)} {line[len('progress ') :]}")
            elif run.timed(line):
                continue
            elif line.startswith("drained "):
                drained = line[len("drained ") :]
        return drained

    def needs_restore(self) -> bool:
        return self.routing is not None and (self.loaded or self.state.proxy_pinned)

    def restore(self, detach: bool) -> bool:
        """Reload the proxy's file once the old containers are gone; True when a job on the
        host took the lock over to do it later."""
        with self.s.report.step(steps.proxy_step(self.s)) as rec:
            # the old containers go once drained (up to drain_timeout), then stopped (their stop grace)
            grace = max((self.host.service(n).stop_timeout or STOP_GRACE for n in self.plans), default=STOP_GRACE)
            grace += self.host.proxy.drain_timeout + RESTORE_MARGIN
            log = self.routing.log if self.routing else ""
            cmd = cmds.restore(self.host, self.state.key, self.state.proxy or "", self.retiring, detach, grace, log)
            res = self.r.change(cmd, check=False)
            rec.detail = (res.stdout.strip().splitlines() or [res.first_error_line()])[-1]
            if res.ok:
                self.s.report.proxy_loaded()
            else:
                rec.status = "failed"
                self.s.notes.append(
                    f"the proxy still routes by container address: "
                    f"fab -H {self.s.name} reload-caddy once the old containers are gone"
                )
            return detach and res.ok
