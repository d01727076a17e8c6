"""Engine swarm's pure part: the stack as ``docker service inspect`` describes it (read from
``remote/survey.sh --stack``), the checks of the compose files against hosts.toml, and the
plan (which app services roll, to which digest, with which update settings). Nothing here
talks to a host."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .. import commands_swarm as swarm_cmds
from ..plan import declared_count, image_table, normalize_ref, read_head, section_json, sections, short_image
from ..proxy import by_service_name
from ..runner import BadInput
from ..steps import configured_services
from .swarm_nodes import SwarmNode, placement_stall

STACK_IMAGE = "com.docker.stack.image"  # the compose file's image reference, kept by docker stack deploy
ROLLED_BACK = "zdd.rolled-back-from"  # set by a rollback made as an update (swarm_tier.sh): the image it left
FORCED_FROM = "zdd.forced-from"  # set by swarm_tier.sh's forced update of a slot running two tasks: the
# image the spec before that update went back to (the forced one leaves Swarm's PreviousSpec the same spec)
# what zdd needs of each app service's update settings, by the name swarm_tier.sh takes
SETTINGS = {
    "order": "update_config.order: start-first",
    "failure": "update_config.failure_action: rollback",
    "rollback-order": "rollback_config.order: start-first",
}


# what a compose file's stop-first setting leaves to others than zdd (check_stack's notes)
WHAT = {"update_config": "updates", "rollback_config": "updates and rollbacks"}
OUTSIDE = {
    "update_config": "docker stack deploy",
    "rollback_config": "docker service rollback, or Swarm's own rollback of a failed docker stack deploy,",
}


# --- what runs now ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StackService:
    """One service of the stack, as ``docker service inspect`` describes it."""

    name: str  # the compose name (Swarm's is STACK_NAME)
    image: str  # what its spec runs: REF@DIGEST after docker stack deploy
    stack_ref: str = ""  # the compose reference it was deployed from (com.docker.stack.image)
    replicas: int | None = 1  # None: global
    running: str = ""  # running/desired tasks, as docker service ls shows them
    update_state: str = ""  # UpdateStatus.State of its last update ("" if none)
    update_order: str = "stop-first"
    failure_action: str = "pause"
    rollback_order: str = "stop-first"
    previous_image: str = ""  # what its previous spec ran ("" without one)
    can_roll_back: bool = False  # the previous spec runs other tasks than this one
    previous_rollback_order: str = "stop-first"  # how Swarm rolls back to the previous spec (its RollbackConfig)
    previous_image_only: bool = True  # the previous spec's tasks differ from these in the image only
    previous_placement_only: bool = False  # ... in their placement only (e.g. drain-node's constraint)
    previous_ref: str = ""  # the previous spec's com.docker.stack.image label
    rolled_back_from: str = ""  # zdd rolled it back as an update from this image (label ROLLED_BACK)
    forced_from: str = ""  # its last update was zdd's --force of the same spec: the image before (FORCED_FROM)

    @property
    def digest(self) -> str:
        return self.image.partition("@")[2]

    def unset(self) -> tuple[str, ...]:
        """The update settings zdd must set for its updates (keys of SETTINGS)."""
        return tuple(
            k
            for k, ok in (
                ("order", self.update_order == "start-first"),
                ("failure", self.failure_action == "rollback"),
                ("rollback-order", self.rollback_order == "start-first"),
            )
            if not ok
        )


@dataclass
class StackState:
    node: str  # "LocalNodeState ControlAvailable", e.g. "active true"
    model: dict[str, Any]  # docker compose config: services
    services: dict[str, StackService] = field(default_factory=dict)
    applied: dict[str, str] | None = None  # service -> spec_hash zdd last applied; None: no record
    node_error: str = ""
    key: str = "stack"  # stack_STACK: names the lock and the journal (survey.sh)
    lock_holder: str = ""  # who holds the deploy lock now ("" = free)
    journal: str = ""  # the journal's recent lines
    nodes: list[SwarmNode] | None = None  # the swarm's nodes; None: not read
    proxy_running: dict | None = None  # the config the proxy's task on this node runs; None: not read

    def replicas(self, name: str) -> int:
        """How many tasks of a service an update replaces, one after the other."""
        declared = declared_count(self.model.get(name) or {})
        if declared is not None:
            return declared
        svc = self.services.get(name)
        desired = svc.running.partition("/")[2] if svc else ""  # a global service: one per node
        return int(desired) if desired.isdigit() else (svc.replicas or 1) if svc else 1


def spec_hash(service: dict[str, Any]) -> str:
    """A service's compose definition without its image (the plan compares images by digest)."""
    body = json.dumps({k: v for k, v in service.items() if k != "image"}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _service(raw: dict, stack: str, running: dict[str, str]) -> StackService:
    spec = raw.get("Spec") or {}
    full = str(spec.get("Name", ""))
    task = spec.get("TaskTemplate") or {}
    previous = raw.get("PreviousSpec")
    update, back = spec.get("UpdateConfig") or {}, spec.get("RollbackConfig") or {}
    replicated = (spec.get("Mode") or {}).get("Replicated")
    return StackService(
        name=full.removeprefix(f"{stack}_"),
        image=str((task.get("ContainerSpec") or {}).get("Image", "")),
        stack_ref=(spec.get("Labels") or {}).get(STACK_IMAGE, ""),
        replicas=int(replicated.get("Replicas", 1)) if isinstance(replicated, dict) else None,
        running=running.get(full, ""),
        update_state=(raw.get("UpdateStatus") or {}).get("State", ""),
        update_order=update.get("Order", "stop-first"),
        failure_action=update.get("FailureAction", "pause"),
        rollback_order=back.get("Order", "stop-first"),
        previous_image=str((((previous or {}).get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image", "")),
        can_roll_back=previous is not None and (previous.get("TaskTemplate") or {}) != task,
        previous_rollback_order=((previous or {}).get("RollbackConfig") or {}).get("Order", "stop-first"),
        previous_image_only=previous is None or _but_image(previous.get("TaskTemplate") or {}) == _but_image(task),
        previous_placement_only=previous is not None
        and _but_placement(previous.get("TaskTemplate") or {}) == _but_placement(task),
        previous_ref=((previous or {}).get("Labels") or {}).get(STACK_IMAGE, ""),
        rolled_back_from=(spec.get("Labels") or {}).get(ROLLED_BACK, ""),
        forced_from=(spec.get("Labels") or {}).get(FORCED_FROM, "")
        if previous is not None and _but_force(previous.get("TaskTemplate") or {}) == _but_force(task)
        else "",
    )


def _but_force(task: dict) -> dict:
    """A task template without the counter --force bumps."""
    return {k: v for k, v in task.items() if k != "ForceUpdate"}


def _but_image(task: dict) -> dict:
    """A task template without its image (and the counter --force bumps)."""
    container = {k: v for k, v in (task.get("ContainerSpec") or {}).items() if k != "Image"}
    return {**_but_force(task), "ContainerSpec": container}


def _but_placement(task: dict) -> dict:
    """A task template without its placement (and the counter --force bumps)."""
    return {k: v for k, v in _but_force(task).items() if k != "Placement"}


def parse_survey(text: str, stack: str) -> StackState:
    """survey.sh --stack's sections as a StackState; SurveyError when the compose files are unreadable."""
    sec = sections(text)
    model = section_json("compose", sec.get("compose"), "docker compose config")
    rc, node = sec.get("node", (1, "no answer"))
    running = {}
    rc_r, listing = sec.get("replicas", (1, ""))
    for line in listing.splitlines() if rc_r == 0 else []:
        name, _, count = line.strip().partition(" ")
        running[name] = count.split(" ")[0]
    raw = section_json("services", sec.get("services", (0, "[]")), "docker service inspect")
    state = StackState(
        node.strip() if rc == 0 else "",
        model.get("services") or {},
        {s.name: s for s in (_service(r, stack, running) for r in raw)},
        node_error="" if rc == 0 else (node.strip().splitlines() or ["docker info failed"])[-1],
    )
    read_head(sec, state)
    rc, nodes = sec.get("nodes", (1, ""))
    if rc == 0:
        try:
            state.nodes = [SwarmNode.of(n) for n in json.loads(nodes) if isinstance(n, dict)]
        except (json.JSONDecodeError, TypeError):
            state.nodes = None  # unreadable: placement is not checked
    rc, running = sec.get("proxy-running", (1, ""))
    if rc == 0:
        try:
            state.proxy_running = json.loads(running)
        except json.JSONDecodeError:
            state.proxy_running = None  # unreadable: not judged
    rc, applied = sec.get("applied", (1, ""))
    if rc == 0:
        try:
            state.applied = {str(k): str(v) for k, v in json.loads(applied).items()}
        except (json.JSONDecodeError, AttributeError):
            state.applied = None  # unreadable: as if there were none (applied once more)
    return state


def check_node(state: StackState) -> None:
    """Engine swarm runs against a manager: BadInput otherwise, in one line."""
    local, _, control = state.node.partition(" ")
    if not state.node:
        raise BadInput(f"cannot read this node's swarm state: {state.node_error}")
    if local != "active":
        raise BadInput(f"this host is not in swarm mode (node state {local}): engine swarm needs a Swarm manager")
    if control != "true":
        raise BadInput("this node is a Swarm worker: engine swarm runs against a manager (docker node ls)")


def still_changing(state: StackState, stack: str, names: list[str]) -> list[str]:
    """The services Swarm is still updating or rolling back (a run must not start a change on
    top): checked at validation when no run of zdd's holds the lock, and again once the lock is
    held (:meth:`~fabfile.engines.swarm.SwarmEngine.recover`)."""
    return [
        f"{n}: Swarm is still changing it ({svc.update_state}): wait until `docker service ps {stack}_{n}` has settled"
        for n in names
        if (svc := state.services.get(n)) is not None and svc.update_state in ("updating", "rollback_started")
    ]


def check_stack(state: StackState, h: Any, only: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(problems that fail validation, notes) of the compose files against hosts.toml."""
    problems, vip = [], []
    stop_first: dict[str, list[str]] = {}  # update_config / rollback_config -> services it stops first
    for name in only if only is not None else configured_services(h):
        if name not in state.model:
            problems.append(f"service {name!r} is not in the compose files")
    for name in only if only is not None else h.app_services:
        svc = state.model.get(name)
        if name not in h.app_services or not svc:
            continue
        check = svc.get("healthcheck") or {}
        if check.get("disable") or not check.get("test") or check["test"][0] == "NONE":
            problems.append(
                f"{name} has no healthcheck in the compose files, so Swarm takes a new task as ready "
                "once it runs (an image's own HEALTHCHECK is not seen here: repeat it in the file)"
            )
        host_ports = [
            str(p.get("published"))
            for p in svc.get("ports") or []
            if isinstance(p, dict) and p.get("mode") == "host" and p.get("published")
        ]
        if host_ports:
            problems.append(
                f"{name} publishes port {', '.join(host_ports)} in host mode, so it cannot run twice on "
                "a node (start-first): publish through the proxy"
            )
        if (svc.get("deploy") or {}).get("endpoint_mode", "vip") != "dnsrr":
            vip.append(name)
        order = ((svc.get("deploy") or {}).get("update_config") or {}).get("order", "stop-first")
        if order != "start-first" and name in stack_changes(state):
            # infra-up's `docker stack deploy` applies the file's settings to this service's own update
            problems.append(
                f"{name}: the compose files' deploy.update_config.order is {order}, and docker stack "
                "deploy (infra-up) would update it so, stopping its tasks first (downtime): set "
                "update_config.order: start-first"
            )
        elif order != "start-first":
            stop_first.setdefault("update_config", []).append(name)
        if ((svc.get("deploy") or {}).get("rollback_config") or {}).get("order", "stop-first") != "start-first":
            stop_first.setdefault("rollback_config", []).append(name)
        stall = placement_stall(name, svc, state.nodes)
        if stall:
            problems.append(stall)
        if not state.lock_holder:  # a run of zdd's holding the lock is met there; checked again under it
            problems += still_changing(state, h.stack_name, [name])
    notes = [
        f"{', '.join(stop_first[key])}: the compose files' deploy.{key}.order is not start-first (Swarm's "
        f"default, stop-first, when unset): zdd's own {WHAT[key]} start the new tasks first, but a plain "
        f"{OUTSIDE[key]} would stop their tasks first (downtime): set {key}.order: start-first"
        for key in WHAT
        if key in stop_first
    ]
    if vip:
        notes.append(
            f"{', '.join(vip)} use endpoint_mode vip: where the kernel has no IPVS a proxy cannot reach "
            "their tasks through the service's virtual IP; endpoint_mode: dnsrr resolves to the tasks"
        )
    named = by_service_name(
        state.proxy_running, [n for n in only or h.app_services if n in h.app_services], h.stack_name
    )
    if named:
        notes.append(
            f"the proxy reaches {', '.join(named)} by service name: Caddy pools its connections by that name and "
            "goes on sending requests to a task out of service discovery until it dies, cutting what is in flight "
            "then: give it the tasks' addresses (reverse_proxy { dynamic a NAME PORT }, refresh 1s; README)"
        )
    return problems, notes


def wanted_digest(ref: str, digests: dict[str, str]) -> str | None:
    """The digest a compose image reference names now: its own, or what its tag was pulled as."""
    _, at, digest = ref.partition("@")
    return digest if at else digests.get(normalize_ref(ref))


def digest_table(text: str) -> dict[str, str]:
    """The ``digest REF DIGEST`` lines of a listing (:func:`swarm_cmds.image_digests`) as ref -> digest."""
    return image_table("\n".join(ln.removeprefix("digest ") for ln in text.splitlines() if ln.startswith("digest ")))


@dataclass(frozen=True)
class SwarmPlan:
    name: str
    roll: bool
    reason: str
    image: str = ""  # REF@DIGEST it is updated to
    ref: str = ""  # the compose file's reference
    sets: tuple[str, ...] = ()  # settings zdd sets for the update (keys of SETTINGS)
    verb: str = "roll"

    def line(self) -> str:
        return f"{self.name}: {self.verb if self.roll else 'skip'}, {self.reason}"

    def change(self) -> swarm_cmds.SwarmChange:
        return swarm_cmds.SwarmChange(self.name, self.image, self.ref, self.sets)


def plan_service(name: str, state: StackState, digests: dict[str, str], force: bool = False) -> SwarmPlan:
    """Roll or skip one service, and why."""
    svc = state.services.get(name)
    if svc is None:
        return SwarmPlan(name, False, "not deployed: docker stack deploy (infra-up) creates it")
    ref = str((state.model.get(name) or {}).get("image", ""))
    want = (wanted_digest(ref, digests) if ref else None) or svc.digest
    image = f"{ref.partition('@')[0]}@{want}" if ref and want else svc.image
    up, _, wanted = svc.running.partition("/")
    tasks = f"; {svc.running} tasks running" if up != wanted else ""

    def roll(reason: str) -> SwarmPlan:
        return SwarmPlan(name, True, reason + tasks, image, ref, svc.unset())

    if force:
        return roll("forced")
    if want != svc.digest:
        return roll(f"new digest {short_image(svc.digest)} → {short_image(want)}")
    if ref and ref != svc.stack_ref:
        return roll(f"the compose file names {ref} (was {svc.stack_ref or svc.image})")
    return SwarmPlan(name, False, f"unchanged (digest {short_image(svc.digest)}){tasks}")


def make_plan(names: list[str], state: StackState, digests: dict[str, str], force: bool = False) -> list[SwarmPlan]:
    return [plan_service(n, state, digests, force) for n in names]


def stack_change(name: str, state: StackState) -> swarm_cmds.SwarmChange:
    """A service of infra-up's docker stack deploy: one that runs already and rolls back
    stop-first gets rollback-order first, so that Swarm's rollback of a failed change starts
    its tasks first (swarm_tier.sh)."""
    svc = state.services.get(name)
    prepare = svc is not None and svc.rollback_order != "start-first"
    return swarm_cmds.SwarmChange(name, sets=("rollback-order",) if prepare else ())


def stack_changes(state: StackState) -> dict[str, str]:
    """Services a ``docker stack deploy`` must create or change: name -> why."""
    out = {}
    for name, svc in state.model.items():
        if name not in state.services:
            out[name] = "created"
        elif state.applied is None:
            out[name] = "applied once (no record of what zdd applied before)"
        elif state.applied.get(name) != spec_hash(svc):
            out[name] = "compose changed"
    return out
