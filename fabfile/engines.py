"""Rollout engines: how one app service is replaced without dropping traffic.

An engine has ``prepare`` (checks before anything changes) and ``rollout`` (replace the
containers of one service; raise StepFailed with the old containers still serving).

* :class:`NativeEngine` – built in, needs nothing on the host but Docker and Compose. Scales
  the service to 2N with ``--no-recreate``, waits on the host for the new containers to be
  healthy, drains the old ones at the proxy, then stops and removes them.
* :class:`DockerRolloutEngine` – the docker-rollout CLI plugin (wowu/docker-rollout), as the
  user's plan has it. It cannot drain at the proxy (it stops the old containers itself).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Protocol

from . import commands as cmds
from .config import HostConfig, ResolvedService
from .proxy import ProxyDrain
from .runner import Runner, StepFailed


class Engine(Protocol):
    name: str

    def prepare(self, r: Runner) -> None: ...

    def rollout(self, r: Runner, svc: ResolvedService) -> str: ...


def _ids(text: str) -> list[str]:
    """Container ids from ``ps --quiet``, shortened as docker prints them (a unique prefix)."""
    return [line.strip()[:12] for line in text.splitlines() if line.strip()]


def health_report(r: Runner, ids: list[str]) -> str:
    """The last health-check results and log lines of containers, for a failure message."""
    lines: list[str] = []
    for cid in ids:
        out = r.probe(cmds.inspect([cid], "{{.Name}} {{json .State.Health}}"))
        name, _, health = out.stdout.strip().partition(" ")
        lines.append(f"--- {name or cid[:12]}")
        try:
            h = json.loads(health) if health else None
        except json.JSONDecodeError:
            h = None
        if h:
            lines.append(f"health: {h.get('Status')}, failing streak {h.get('FailingStreak')}")
            for entry in (h.get("Log") or [])[-3:]:
                output = (entry.get("Output") or "").strip().replace("\n", " ")[:200]
                lines.append(f"  check exit {entry.get('ExitCode')}: {output}")
        logs = r.probe(cmds.logs(cid, 10))
        tail = (logs.stdout + logs.stderr).strip().splitlines()[-10:]
        if tail:
            lines.append("last log lines:")
            lines += [f"  {ln[:200]}" for ln in tail]
    return "\n".join(lines)


class NativeEngine:
    name = "native"

    def __init__(self, host: HostConfig):
        self.host = host
        self.compose = cmds.Compose(host)

    def prepare(self, r: Runner) -> None:
        return None

    def _running(self, r: Runner, service: str) -> list[str]:
        return _ids(r.read(self.compose.ids(service), f"listing {service} containers"))

    def _all(self, r: Runner, service: str) -> list[str]:
        """Every container of the service, whatever its state (a new one may be restarting)."""
        return _ids(r.read(self.compose.ids(service, running_only=False), f"listing {service} containers"))

    def _wait_healthy(self, r: Runner, svc: ResolvedService, ids: list[str]) -> None:
        cmd = cmds.wait_healthy(ids, svc.health_timeout, self.host.no_healthcheck_wait)
        res = r.change(cmd, check=False)
        if not res.ok:
            detail = health_report(r, ids)
            raise StepFailed(f"{svc.name}: new container(s) not healthy: {res.first_error_line()}", detail)

    def rollout(self, r: Runner, svc: ResolvedService) -> str:
        old = self._running(r, svc.name)
        if not old:
            r.change(self.compose.up([svc.name]), f"starting {svc.name}")
            new = self._running(r, svc.name) or ([f"<{svc.name} containers>"] if r.dry_run else [])
            if not new:
                raise StepFailed(f"{svc.name}: no container is running after up")
            self._wait_healthy(r, svc, new)
            return f"was not running: started {len(new)}"

        before = self._all(r, svc.name)
        drain = ProxyDrain.find(r, self.host, svc)
        failing = False
        try:
            old_ips = drain.route_to(old, "old", hold=drain.name_addresses()) if drain else []
            new = self._start_new(r, svc, len(old), before)
            drained = ""
            if drain:
                drain.route_to(new, "new", hold=drain.name_addresses() + drain.addresses(old_ips))
                drained = drain.wait_drained(old_ips, self.host.proxy.drain_timeout)
            if svc.pre_stop_hook:
                for cid in old:
                    r.change(cmds.pre_stop_hook(cid, svc.pre_stop_hook), f"pre-stop hook in {cid[:12]}",
                             check=False)
            r.change(cmds.stop_and_remove(old, svc.stop_timeout), f"stopping old {svc.name} containers")
        except BaseException:
            failing = True
            raise
        finally:
            if drain:
                self._restore(r, drain, failing)
        how = f", {drained}" if drained else ""
        return f"{len(old)} → {len(new)} container(s){how}"

    def _start_new(self, r: Runner, svc: ResolvedService, count: int, before: list[str]) -> list[str]:
        """Scale up beside the old containers and wait until the new ones are healthy; on any
        failure remove every container the scale-up created (the old ones keep serving)."""
        try:
            r.change(self.compose.scale(svc.name, 2 * count), f"scaling {svc.name} up")
            new = [i for i in self._all(r, svc.name) if i not in before]
            if r.dry_run and not new:
                new = [f"<new {svc.name} container {i + 1}>" for i in range(count)]
            if not new:
                raise StepFailed(f"{svc.name}: scaling up created no new container")
            self._wait_healthy(r, svc, new)
            return new
        except StepFailed:
            created = [i for i in self._all(r, svc.name) if i not in before]
            if created:
                r.change(cmds.stop_and_remove(created, svc.stop_timeout), f"removing new {svc.name} containers",
                         check=False)
            raise

    @staticmethod
    def _restore(r: Runner, drain: ProxyDrain, failing: bool) -> None:
        """Back to the proxy's config file; while already failing, report instead of masking."""
        try:
            drain.restore()
        except StepFailed as e:
            if not failing:
                raise
            r.note(f"also failed to restore the proxy's config: {e}")


class DockerRolloutEngine:
    """``docker rollout`` per service. Behind Caddy it is wrapped so that it drains too: the
    proxy is pinned to the old containers, docker-rollout's pre-stop hook holds the old ones
    (:func:`commands.release_hook`) while zdd waits for the new ones to be healthy, routes to
    them and waits until the old ones are idle; then it releases the hook and docker-rollout
    stops the old containers, which no longer get traffic."""

    name = "docker-rollout"

    def __init__(self, host: HostConfig):
        self.host = host
        self.compose = cmds.Compose(host)
        self.native = NativeEngine(host)  # for its listing and health helpers

    def prepare(self, r: Runner) -> None:
        res = r.probe(cmds.plugin_version_ok(self.host.plugin.version))
        if not res.ok and r.dry_run:
            r.note(f"docker-rollout {self.host.plugin.version} is not installed yet: install-plugin would install it")
        elif not res.ok:
            raise StepFailed(f"docker-rollout {self.host.plugin.version} is not installed on the host "
                             f"({res.first_error_line()}): run the install-plugin task")

    def _run(self, r: Runner, cmd: cmds.Command, svc: ResolvedService) -> None:
        res = r.change(cmd, check=False)
        if not res.ok:
            raise StepFailed(f"docker rollout {svc.name} failed: {res.first_error_line()}",
                             (res.stdout + res.stderr).strip())

    def rollout(self, r: Runner, svc: ResolvedService) -> str:
        old = self.native._running(r, svc.name)
        if not old:  # docker-rollout only starts it and does not wait: wait here
            self._run(r, self.compose.rollout(svc), svc)
            new = self.native._running(r, svc.name) or ([f"<{svc.name} containers>"] if r.dry_run else [])
            self.native._wait_healthy(r, svc, new)
            return f"was not running: started {len(new)}"
        drain = ProxyDrain.find(r, self.host, svc)
        if not drain:
            self._run(r, self.compose.rollout(svc), svc)
            return "rolled by docker-rollout"
        return self._rollout_draining(r, svc, old, drain)

    def _rollout_draining(self, r: Runner, svc: ResolvedService, old: list[str], drain: ProxyDrain) -> str:
        marker = f"/tmp/.zdd-release-{uuid.uuid4().hex[:12]}"
        label = "" if r.dry_run else r.probe(cmds.rollout_hook_label(old[0])).stdout.strip()
        own = svc.pre_stop_hook or label
        limit = svc.health_timeout + self.host.proxy.drain_timeout + 60
        before = self.native._all(r, svc.name)
        old_ips = drain.route_to(old, "old", hold=drain.name_addresses())
        pending = None
        new: list[str] = []
        drained = ""
        failing = True
        try:
            pending = r.start(self.compose.rollout(svc, cmds.release_hook(marker, limit, own)))
            new = self._await_new(r, svc, before, len(old), pending)
            self.native._wait_healthy(r, svc, new)
            drain.route_to(new, "new", hold=drain.name_addresses() + drain.addresses(old_ips))
            drained = drain.wait_drained(old_ips, self.host.proxy.drain_timeout)
            failing = False
        finally:
            if failing:  # route by name again before docker-rollout may stop the old ones
                NativeEngine._restore(r, drain, True)
            for cid in old:  # never leave docker-rollout waiting in the hook
                r.change(cmds.release(cid, marker), check=False)
            res = pending.wait() if pending is not None else None
            if not failing:
                NativeEngine._restore(r, drain, res is None or not res.ok)
        if res is not None and not res.ok:
            raise StepFailed(f"docker rollout {svc.name} failed: {res.first_error_line()}",
                             (res.stdout + res.stderr).strip())
        return f"{len(old)} → {len(new)} container(s) by docker-rollout, {drained}"

    def _await_new(self, r: Runner, svc: ResolvedService, before: list[str], count: int, pending) -> list[str]:
        """The containers docker-rollout's scale-up created (polled until all are there)."""
        if r.dry_run:
            return [f"<new {svc.name} container {i + 1}>" for i in range(count)]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            new = [i for i in self.native._all(r, svc.name) if i not in before]
            if len(new) >= count:
                return new
            if pending.done():
                res = pending.wait()
                raise StepFailed(f"docker rollout {svc.name} ended before new containers appeared: "
                                 f"{res.first_error_line()}", (res.stdout + res.stderr).strip())
            time.sleep(0.3)
        raise StepFailed(f"docker rollout {svc.name}: no new containers after 120 s")


def engine_for(host: HostConfig) -> Engine:
    return {"native": NativeEngine, "docker-rollout": DockerRolloutEngine}[host.engine](host)
