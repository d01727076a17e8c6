"""Rollout engines: how one app service is replaced without dropping traffic.

An engine has ``prepare`` (checks before anything changes) and ``rollout`` (replace the
containers of one service; raise StepFailed with the old containers still serving).

* :class:`NativeEngine` – built in, needs nothing on the host but Docker and Compose. Scales
  the service to 2N with ``--no-recreate``, waits on the host for the new containers to be
  healthy, drains the old ones at the proxy, then stops and removes them.
* :class:`DockerRolloutEngine` – the docker-rollout CLI plugin (wowu/docker-rollout), as the
  user's plan has it, wrapped so that it drains at the proxy the same way.
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


class Containers:
    """Listing, health and clean-up of one host's service containers (shared by engines)."""

    def __init__(self, host: HostConfig):
        self.host = host
        self.compose = cmds.Compose(host)

    def running(self, r: Runner, service: str) -> list[str]:
        return _ids(r.read(self.compose.ids(service), f"listing {service} containers"))

    def all(self, r: Runner, service: str) -> list[str]:
        """Every container of the service, whatever its state (a new one may be restarting)."""
        return _ids(r.read(self.compose.ids(service, running_only=False), f"listing {service} containers"))

    def wait_healthy(self, r: Runner, svc: ResolvedService, ids: list[str]) -> None:
        cmd = cmds.wait_healthy(ids, svc.health_timeout, self.host.no_healthcheck_wait)
        res = r.change(cmd, check=False)
        if not res.ok:
            detail = health_report(r, ids)
            raise StepFailed(f"{svc.name}: new container(s) not healthy: {res.first_error_line()}", detail)

    def wait_started(self, r: Runner, svc: ResolvedService) -> str:
        """After a service that was not running has been started: wait until it is healthy."""
        new = self.running(r, svc.name) or ([f"<{svc.name} containers>"] if r.dry_run else [])
        if not new:
            raise StepFailed(f"{svc.name}: no container is running after up")
        self.wait_healthy(r, svc, new)
        return f"was not running: started {len(new)}"

    def remove_stopped(self, r: Runner, svc: ResolvedService, running: list[str]) -> None:
        """Compose counts stopped containers when scaling and would restart them (old image,
        old config) instead of creating new ones: remove them first; they serve nothing."""
        stopped = [i for i in self.all(r, svc.name) if i not in running]
        if stopped:
            r.note(f"{svc.name}: removing {len(stopped)} stopped container(s) first: {', '.join(stopped)}")
            r.change(cmds.remove(stopped, force=True), f"removing stopped {svc.name} containers")

    def remove_created(self, r: Runner, svc: ResolvedService, before: list[str]) -> None:
        """Best effort, while failing: remove every container that was not there ``before``."""
        try:
            created = [i for i in self.all(r, svc.name) if i not in before]
            if created:
                r.change(cmds.stop_and_remove(created, svc.stop_timeout), f"removing new {svc.name} containers",
                         check=False)
        except Exception as e:  # the original failure is what the operator needs to see
            r.note(f"{svc.name}: could not remove the new containers: {e}")


def restore_proxy(r: Runner, drain: ProxyDrain, failing: bool) -> None:
    """Back to the proxy's config file; while already failing, report instead of masking."""
    try:
        drain.restore()
    except Exception as e:
        hint = (f"{drain.host.proxy.service} may still route {drain.service} to container addresses: "
                f"run `fab -H {r.host} reload-caddy` ({e})")
        if not failing:
            raise StepFailed(hint) from None
        r.note(hint)


class NativeEngine:
    name = "native"

    def __init__(self, host: HostConfig):
        self.host = host
        self.compose = cmds.Compose(host)
        self.c = Containers(host)

    def prepare(self, r: Runner) -> None:
        return None

    def rollout(self, r: Runner, svc: ResolvedService) -> str:
        old = self.c.running(r, svc.name)
        if not old:
            r.change(self.compose.up([svc.name]), f"starting {svc.name}")
            return self.c.wait_started(r, svc)
        self.c.remove_stopped(r, svc, old)
        drain = ProxyDrain.find(r, self.host, svc)
        stopping_old = False
        try:
            if drain:
                drain.pin(old)
            r.change(self.compose.scale(svc.name, 2 * len(old)), f"scaling {svc.name} up")
            new = [i for i in self.c.all(r, svc.name) if i not in old]
            if r.dry_run and not new:
                new = [f"<new {svc.name} container {i + 1}>" for i in range(len(old))]
            if not new:
                raise StepFailed(f"{svc.name}: scaling up created no new container")
            self.c.wait_healthy(r, svc, new)
            drained = ""
            if drain:
                drain.switch(new)
                drained = drain.wait_drained(self.host.proxy.drain_timeout)
            if svc.pre_stop_hook:
                for cid in old:
                    r.change(cmds.pre_stop_hook(cid, svc.pre_stop_hook), f"pre-stop hook in {cid[:12]}",
                             check=False)
            stopping_old = True  # from here on the new containers are the ones serving
            r.change(cmds.stop_and_remove(old, svc.stop_timeout), f"stopping old {svc.name} containers")
        except BaseException:
            if not stopping_old:
                self.c.remove_created(r, svc, old)
            if drain:
                restore_proxy(r, drain, failing=True)
            raise
        if drain:
            restore_proxy(r, drain, failing=False)
        how = f", {drained}" if drained else ""
        return f"{len(old)} → {len(new)} container(s){how}"


class DockerRolloutEngine:
    """``docker rollout`` per service. Behind Caddy it is wrapped so that it drains too: the
    proxy is pinned to the old containers, docker-rollout's pre-stop hook holds the old ones
    (:func:`commands.release_hook`) while zdd waits for the new ones to be healthy, routes to
    them and waits until the old ones are idle; then it releases the hook and docker-rollout
    stops the old containers, which no longer get traffic. When zdd fails meanwhile, it stops
    docker-rollout, removes the new containers and restores the proxy before releasing."""

    name = "docker-rollout"

    def __init__(self, host: HostConfig):
        self.host = host
        self.compose = cmds.Compose(host)
        self.c = Containers(host)

    def prepare(self, r: Runner) -> None:
        res = r.probe(cmds.plugin_version_ok(self.host.plugin.version, self.host.plugin.sha256))
        if not res.ok and r.dry_run:
            r.note(f"docker-rollout {self.host.plugin.version} is not installed yet: install-plugin would install it")
        elif not res.ok:
            raise StepFailed(f"docker-rollout {self.host.plugin.version} is not installed on the host "
                             f"({res.first_error_line()}): run the install-plugin task")

    @staticmethod
    def _failed(svc: ResolvedService, res, what: str = "failed") -> StepFailed:
        return StepFailed(f"docker rollout {svc.name} {what}: {res.first_error_line()}",
                          (res.stdout + res.stderr).strip())

    def _run(self, r: Runner, cmd: cmds.Command, svc: ResolvedService) -> None:
        res = r.change(cmd, check=False)
        if not res.ok:
            raise self._failed(svc, res)

    def rollout(self, r: Runner, svc: ResolvedService) -> str:
        old = self.c.running(r, svc.name)
        if not old:  # docker-rollout only starts it and does not wait: wait here
            self._run(r, self.compose.rollout(svc), svc)
            return self.c.wait_started(r, svc)
        drain = ProxyDrain.find(r, self.host, svc)
        if not drain:
            self._run(r, self.compose.rollout(svc), svc)
            return "rolled by docker-rollout"
        marker = f"/tmp/.zdd-release-{uuid.uuid4().hex[:12]}"
        if not r.dry_run and not r.probe(cmds.release(old[0], marker + "-probe")).ok:
            r.note(f"{svc.name}: docker-rollout's pre-stop hook cannot hold its containers (no sh, or /tmp "
                   "not writable): rolling it with the native engine instead, which drains the same way")
            return NativeEngine(self.host).rollout(r, svc)
        self.c.remove_stopped(r, svc, old)
        return self._rollout_draining(r, svc, old, drain, marker)

    def _rollout_draining(self, r: Runner, svc: ResolvedService, old: list[str], drain: ProxyDrain,
                          marker: str) -> str:
        label = "" if r.dry_run else r.probe(cmds.rollout_hook_label(old[0])).stdout.strip()
        own = svc.pre_stop_hook or label
        limit = svc.health_timeout + self.host.proxy.drain_timeout + 60
        pidfile = f".zdd-rollout-{marker.rsplit('-', 1)[1]}.pid"
        drain.pin(old)
        pending = None
        try:
            rollout = self.compose.rollout(svc, cmds.release_hook(marker, limit, own))
            pending = r.start(cmds.run_in_background(pidfile, rollout))
            new = self._await_new(r, svc, old, pending)
            self.c.wait_healthy(r, svc, new)
            drain.switch(new)
            drained = drain.wait_drained(self.host.proxy.drain_timeout)
        except BaseException:
            self._abort(r, svc, old, drain, marker, pidfile, pending)
            raise
        self._release(r, old, marker)
        res = pending.wait()
        restore_proxy(r, drain, failing=not res.ok)
        if not res.ok:
            raise self._failed(svc, res)
        return f"{len(old)} → {len(new)} container(s) by docker-rollout, {drained}"

    def _abort(self, r: Runner, svc: ResolvedService, old: list[str], drain: ProxyDrain, marker: str,
               pidfile: str, pending) -> None:
        """zdd failed while docker-rollout runs: stop it before it stops the old containers,
        remove what it created, route by name again, then let the held hooks end."""
        try:
            if pending is not None and not pending.done():
                r.change(cmds.kill_background(pidfile, self.host.dir), check=False)
                pending.wait()
        except Exception as e:
            r.note(f"{svc.name}: could not stop docker-rollout: {e}")
        self.c.remove_created(r, svc, old)
        restore_proxy(r, drain, failing=True)
        try:
            self._release(r, old, marker)
        except Exception as e:
            r.note(f"{svc.name}: could not release docker-rollout's hook: {e}")

    @staticmethod
    def _release(r: Runner, old: list[str], marker: str) -> None:
        for cid in old:
            r.change(cmds.release(cid, marker), check=False)

    def _await_new(self, r: Runner, svc: ResolvedService, old: list[str], pending) -> list[str]:
        """The containers docker-rollout's scale-up created (polled until all are there)."""
        if r.dry_run:
            return [f"<new {svc.name} container {i + 1}>" for i in range(len(old))]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            new = [i for i in self.c.all(r, svc.name) if i not in old]
            if len(new) >= len(old):
                return new
            if pending.done():
                raise self._failed(svc, pending.wait(), "ended before new containers appeared")
            time.sleep(0.3)
        raise StepFailed(f"docker rollout {svc.name}: no new containers after 120 s")


def engine_for(host: HostConfig) -> Engine:
    return {"native": NativeEngine, "docker-rollout": DockerRolloutEngine}[host.engine](host)
