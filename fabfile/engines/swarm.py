"""Engine swarm: the same steps for a stack that outgrew one host (a Docker Swarm manager).

Swarm replaces a service's tasks itself, the way zdd does for Compose: with
``deploy.update_config.order: start-first`` it starts the new task, waits until its
healthcheck passes, takes the old task out of service discovery and only then stops it; with
``failure_action: rollback`` a new task that fails returns the service to its previous spec,
the old tasks never having stopped. So nothing is pinned, switched or restored at the proxy:
with ``endpoint_mode: dnsrr`` a service name resolves to its tasks' addresses, and Caddy
resolves it on every dial. What zdd adds is what Swarm does not do: one read of the host and
a plan that skips what did not change, tiers in order, the deploy lock and the journal (the
key is ``stack_STACK``), a wait for each update that fails at once naming the service, and
the verify loop.

The steps keep their names and meaning:

* validate – the node is a Swarm manager; every app service has a healthcheck, publishes
  no host-mode port and leaves a start-first update room on the ready, active nodes its
  placement allows (``max_replicas_per_node`` × nodes > replicas); update settings zdd must
  set, compose orders that would stop tasks first outside zdd, and ``endpoint_mode: vip``, are said;
* pull – pull.sh as for Compose (``docker login`` into a temporary Docker config unless
  ``registry.keep_login``) and the digest each tag names now on this node. Every node pulls
  for its own tasks, with the credentials ``--with-registry-auth`` hands to Swarm: the
  update or stack deploy logs in again, to a temporary config of its own (the token on stdin,
  :func:`.swarm_tier.registry_login`), so no token stays in ~/.docker;
* infra-up – ``docker stack deploy --resolve-image changed`` when a service is missing or the
  compose files changed since zdd last applied them (it keeps every existing service's
  image: compose changes apply at once, each service start-first); then the infra services
  whose tag names a new digest are updated;
* plan – an app service rolls when its tag names another digest than its spec runs, or the
  compose file names another image; otherwise it is skipped (:mod:`.swarm_state`);
* each tier – ``docker service update --image REF@DIGEST`` of the tier's services together,
  and a wait on the host until Swarm has replaced their tasks (new ones running and healthy,
  old ones shut down): the next tier starts while Swarm still monitors them, each later
  tier's wait watches them (:mod:`.swarm_tier`); ``paused`` or ``rollback_*`` of any of them
  fails the deploy at once, naming the service, and no later tier starts. The deploy returns
  once the last tier's tasks are replaced; a job on the manager holds the lock through
  Swarm's monitor window and journals its verdict (with ``wait``: the run waits for
  ``completed`` itself);
* reload-caddy – only with ``proxy.reload_on_deploy``.

Rollbacks never stop first: Swarm rolls back with the rollback settings of the spec it returns
to, so each update (and infra-up's stack deploy) first gives the spec it starts from
``--rollback-order start-first`` when it has another (a change of settings only: no task is
replaced), and sets it on the new spec too (remote/swarm_tier.sh explains it).
``rollback`` returns each app service to Swarm's previous spec (``docker service rollback``),
tiers in reverse order; a previous spec that would roll back stop-first (it came from a
``docker stack deploy`` zdd did not prepare) is returned to as a start-first update to its
image, or skipped, saying why, when it differs in more than the image. ``status`` shows the
stack's services, their tasks node by node (image, state), the lock and the last run; an
interrupted run is only closed in the journal (Swarm finishes or undoes what it started on
its own).
"""

from __future__ import annotations

import json
import time
from typing import Any

from .. import commands_swarm as swarm_cmds
from .. import locking, steps
from ..config_model import CanaryConfig, WatchConfig
from ..history import journal_lines
from ..locking import Held
from ..plan import image_table, short_image
from ..runner import BadInput
from ..session import Session
from .base import Release
from .swarm_drain import drain_plan, on_node, other_stacks
from .swarm_nodes import SwarmNode, find_node, tasks_by_node
from .swarm_rollback import rollback_plan
from .swarm_state import (
    SETTINGS,
    StackState,
    check_node,
    check_stack,
    digest_table,
    make_plan,
    parse_survey,
    spec_hash,
    stack_change,
    stack_changes,
    still_changing,
    wanted_digest,
)
from .swarm_tier import Updates, ceiling, reload_proxy, run


class SwarmEngine:
    name = "swarm"
    interrupted = "interrupted"

    def __init__(self, host: Any):
        self.host = host

    # --- reading the host ----------------------------------------------------------------
    def survey(self, s: Session) -> StackState:
        """One read of the manager: compose model, node, the stack's services, what zdd applied."""
        return steps.read_survey(
            s,
            swarm_cmds.stack_survey(s.host),
            lambda text: parse_survey(text, s.host.stack_name),
            f"stack {s.host.stack_name}",
        )

    def validate(self, s: Session, only: list[str] | None = None) -> StackState:
        """The node is a manager, the compose files fit hosts.toml; nothing changes before this passes."""
        h = s.host
        with s.report.step("validate") as rec:
            state = self.survey(s)
            check_node(state)
            problems, notes = check_stack(state, h, only)
            if only is None:
                steps.registry_credentials(s)  # a missing token fails here, before anything changes
            for name in only or []:
                if name in h.app_services and name in state.model and name not in state.services:
                    problems.append(f"{name} is not deployed in stack {h.stack_name}: run infra-up (or deploy) first")
            if problems:
                raise BadInput(f"{len(problems)} problem(s) on the host: " + "; ".join(problems))
            rec.detail = (
                f"Swarm manager; stack {h.stack_name}: {len(state.services)} of {len(state.model)} services deployed"
            )
            s.notes.extend(notes)
        return state

    def check_guard(self, s: Session, state: StackState, canary: CanaryConfig, watch: WatchConfig) -> None:
        if canary.steps or watch.seconds:
            raise BadInput("canary steps and a watch are not available with engine swarm (Swarm moves the tasks)")

    # --- getting ready -------------------------------------------------------------------
    def prepare(self, s: Session) -> None:
        return None  # validate has found a Swarm manager; Swarm needs no tool of ours

    def pull(self, s: Session, state: StackState) -> dict[str, str]:
        """Log in, pull every configured service on this node and read the digests (ref -> digest)."""
        names = [n for n in steps.configured_services(s.host) if n in state.model]
        with s.report.step("pull") as rec:
            listing, logged = steps.fetch_images(s, names, (swarm_cmds.image_digests(),))
            digests = digest_table(listing)
            changed = [
                n
                for n in names
                if n in state.services
                and wanted_digest(str(state.model[n].get("image", "")), digests) not in (None, state.services[n].digest)
            ]
            rec.detail = logged + (f"new digest for {', '.join(changed)}" if changed else "no new digests")
        proxy = s.host.proxy.service
        if proxy in changed:
            s.notes.append(
                f"{proxy} has a new image: zdd does not update the proxy (its port is published on the "
                "node); docker service update --image it when a short outage is acceptable"
            )
        return digests

    def infra_up(
        self, s: Session, state: StackState | None = None, digests: dict[str, str] | None = None
    ) -> StackState:
        """``docker stack deploy`` when a service is missing or the compose files changed since zdd
        applied them; then the infra services whose tag names a new digest. The state afterwards."""
        h = s.host
        with s.report.step("infra-up") as rec:
            if state is None or digests is None:  # the task alone: compare with the images on this node
                state = self.survey(s)
                check_node(state)
                digests = image_table(s.r.read(swarm_cmds.image_digests(), "listing the images"))
            said = []
            changes = stack_changes(state)
            if changes:
                hashes = json.dumps({n: spec_hash(svc) for n, svc in state.model.items()}, sort_keys=True)
                run(s, "stack", [stack_change(n, state) for n in changes], ceiling(s, state, list(changes)), hashes)
                whys: dict[str, list[str]] = {}
                for name, why in changes.items():
                    whys.setdefault(why, []).append(name)
                said.append("docker stack deploy: " + "; ".join(f"{why}: {', '.join(n)}" for why, n in whys.items()))
                if not s.r.dry_run:
                    state = self.survey(s)  # what it created and changed
            infra = [p for p in make_plan([n for n in h.infra if n in state.services], state, digests) if p.roll]
            if infra:
                run(s, "update", [p.change() for p in infra], ceiling(s, state, [p.name for p in infra]))
                said.append(f"new image for {', '.join(p.name for p in infra)}")
            if not said:
                rec.status, rec.detail = "skipped", "unchanged: " + (", ".join(h.infra) or "the stack")
                return state
            rec.detail = "; ".join(said)
        return state

    # --- what rolls, and rolling it ------------------------------------------------------
    def images_named(self, s: Session, state: StackState) -> dict[str, str]:
        return {n: str(state.model[n].get("image") or "") for n in s.host.app_services if n in state.model}

    def plan(self, s: Session, state: StackState, digests: dict[str, str], names: list[str], force: bool) -> list:
        plans = steps.planned(s, lambda: make_plan(names, state, digests, force))
        settings: dict[str, list[str]] = {}
        for p in plans:
            for key in p.sets if p.roll else ():
                settings.setdefault(key, []).append(p.name)
        for key, names_ in settings.items():
            s.notes.append(
                f"{', '.join(names_)}: no deploy.{SETTINGS[key]} in the running spec: zdd sets it for its "
                "update (a later docker stack deploy resets it: put it in the compose file)"
            )
        return plans

    def plan_event(self, run_id: str, state: StackState, release: Release) -> dict:
        """Each service's digest before and after."""
        services = {}
        for p in release.plans:
            svc = state.services.get(p.name)
            before = [svc.digest] if svc and svc.digest else []
            after = p.image.partition("@")[2] if p.roll else (before or [""])[0]
            services[p.name] = {
                "roll": p.roll,
                "reason": p.reason,
                "ref": p.ref or (svc.stack_ref if svc else ""),
                "before": before,
                "after": after,
                "old": [],
            }
        return {"run": run_id, "t": int(time.time()), "event": "plan", "services": services}

    def tiers(self, s: Session, state: StackState, release: Release, held: Held) -> Updates:
        return Updates(s, state, release.plans, held, release.action, release.tiers, release.wait, release.node)

    def one_service(self, s: Session, state: StackState, name: str) -> Release:
        """The service updated to the digest its tag names on this node (always)."""
        digests = digest_table(s.r.read(swarm_cmds.image_digests(), "listing the images"))
        return Release(make_plan([name], state, digests, force=True), digests, [[name]])

    def recover(self, s: Session, state: StackState, own: str) -> StackState:
        """Interrupted runs closed in the journal; then, the lock held, no app service Swarm is
        still changing (validation let one through while another run held the lock: a job whose
        wait ended, or a zdd that died, whose lock was taken over)."""
        state = locking.recover(s, state, own, self.survey)
        busy = still_changing(state, s.host.stack_name, [n for n in s.host.app_services if n in state.model])
        if busy:
            raise BadInput(f"{len(busy)} problem(s) on the host: " + "; ".join(busy))
        return state

    # --- rollback ------------------------------------------------------------------------
    def rollback_target(self, s: Session, state: StackState, to: str | None) -> tuple[str, Any]:
        if to:
            raise BadInput("rollback --to: engine swarm returns each service to Swarm's previous spec only")
        return "rollback", None

    def rollback_release(self, s: Session, state: StackState, target: Any) -> Release:
        """Every app service back to Swarm's previous spec, tiers in reverse order."""
        plans = steps.planned(s, lambda: rollback_plan(state, s.host.app_services))
        return Release(plans, {}, [list(t) for t in reversed(s.host.rollout)], "rollback")

    # --- drain-node ----------------------------------------------------------------------
    def node_target(self, s: Session, state: StackState, node: str) -> SwarmNode:
        """The node to empty: one of this swarm's, up (a node that is down serves nothing: Swarm's
        own drain is the way to move its tasks)."""
        target = find_node(state.nodes, node)
        if target.status != "ready":
            raise BadInput(
                f"node {target.hostname} is {target.status or 'not ready'}: its tasks serve nothing now, so there "
                f"is nothing to start first; docker node update --availability drain {target.hostname} moves them"
            )
        return target

    def drain_release(self, s: Session, state: StackState, target: SwarmNode) -> Release:
        """Each service of the stack with a task on the node moves off it (app services
        start-first), all at once; then the node is drained (swarm_tier.sh move)."""
        stack, ours = s.host.stack_name, set(state.services)

        def decide() -> list:
            listing = s.r.read(swarm_cmds.node_tasks(target.id), f"listing the tasks on {target.hostname}")
            plans, problems, notes = drain_plan(state, s.host.app_services, target, on_node(listing, stack, ours))
            if problems:
                raise BadInput(f"cannot move every task off {target.hostname}: " + "; ".join(problems))
            others = other_stacks(listing, stack, ours)
            s.notes.extend(notes + [f"{n}: not of stack {stack}: the drain stops its task first" for n in others])
            return plans

        plans = steps.planned(s, decide, lambda p: f"move {len(p)} service(s) off {target.hostname}, then drain it")
        return Release(plans, {}, [[p.name for p in plans]], "move", node=target.id)

    # --- the proxy and what runs ---------------------------------------------------------
    def reload_proxy(self, s: Session) -> None:
        reload_proxy(s)

    def status(self, s: Session) -> list[str]:
        """The stack's services (digest, tasks, last update), their tasks node by node, the lock
        and the last run."""
        state = self.survey(s)
        check_node(state)
        rows = [("service", "tasks", "digest", "last update", "image")]
        rows += [
            (n, v.running or "?", short_image(v.digest), v.update_state or "-", v.image.partition("@")[0])
            for n, v in sorted(state.services.items())
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[4] for r in rows]
        tasks = tasks_by_node(s.r.read(swarm_cmds.stack_tasks(s.host), "docker stack ps").rstrip())
        return lines + ["", *tasks, "", *journal_lines(state, locking.read_runs(s, state))]
