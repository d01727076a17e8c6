"""Engine swarm: the same steps for a stack that outgrew one host (a Docker Swarm manager).

Swarm replaces a service's tasks itself, the way zdd does for Compose: with
``deploy.update_config.order: start-first`` it starts the new task, waits until its
healthcheck passes, takes the old task out of service discovery and only then stops it; with
``failure_action: rollback`` a new task that fails returns the service to its previous spec,
the old tasks never having stopped. So nothing is pinned, switched or restored at the proxy:
with ``endpoint_mode: dnsrr`` a service name resolves to its tasks' addresses, and Caddy
resolves it on every dial. What zdd adds is what Swarm does not do: one read of the host and
a plan that skips what did not change, tiers in order, the deploy lock and the journal (as
for Compose: ``steps.locked``; the key is ``stack_STACK``), a wait for each update that fails
at once naming the service, and the verify loop.

The steps keep their names and meaning:

* validate – the node is a Swarm manager; every app service has a healthcheck and publishes
  no host-mode port; update settings zdd must set, and ``endpoint_mode: vip``, are said;
* pull – pull.sh as for Compose (``docker login`` into ~/.docker: ``registry.keep_login`` is
  required) and the digest each tag names now on this node. Every node pulls for its own
  tasks, with the credentials ``--with-registry-auth`` hands to Swarm;
* infra-up – ``docker stack deploy --resolve-image changed`` when a service is missing or the
  compose files changed since zdd last applied them (it keeps every existing service's
  image: compose changes apply at once, each service start-first); then the infra services
  whose tag names a new digest are updated;
* plan – an app service rolls when its tag names another digest than its spec runs, or the
  compose file names another image; otherwise it is skipped. The plan (each service's digest
  before and after) goes to the journal with the first change;
* each tier – ``docker service update --image REF@DIGEST`` of the tier's services together,
  and a wait on the host (``remote/swarm_tier.sh``) until Swarm says ``completed`` for each;
  ``paused`` or ``rollback_*`` fails the deploy at once, naming the service; later tiers
  are not started;
* reload-caddy – only with ``proxy.reload_on_deploy``; finish – as for Compose (the journal's
  end, prune when something rolled, the lock released), without keep tags.

``rollback`` returns each app service to Swarm's previous spec (``docker service rollback``),
tiers in reverse order; ``status`` shows the stack's services and tasks, the lock and the last
run; ``recover`` only closes an interrupted run in the journal (Swarm finishes or undoes what
it started on its own).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from . import commands as cmds
from . import journal, steps
from .engines import engine_for
from .history import journal_lines, read_runs
from .plan import declared_count, image_table, normalize_ref, read_head, section_json, sections, short_image
from .runner import BadInput, StepFailed
from .session import Session

STACK_IMAGE = "com.docker.stack.image"   # the compose file's image reference, kept by docker stack deploy
# what zdd needs of each app service's update settings, by the name swarm_tier.sh takes
SETTINGS = {"order": "update_config.order: start-first", "failure": "update_config.failure_action: rollback",
            "rollback-order": "rollback_config.order: start-first"}


# --- what runs now ---------------------------------------------------------------------------

@dataclass(frozen=True)
class StackService:
    """One service of the stack, as ``docker service inspect`` describes it."""

    name: str                     # the compose name (Swarm's is STACK_NAME)
    image: str                    # what its spec runs: REF@DIGEST after docker stack deploy
    stack_ref: str = ""           # the compose reference it was deployed from (com.docker.stack.image)
    replicas: int | None = 1      # None: global
    running: str = ""             # running/desired tasks, as docker service ls shows them
    update_state: str = ""        # UpdateStatus.State of its last update ("" if none)
    update_order: str = "stop-first"
    failure_action: str = "pause"
    rollback_order: str = "stop-first"
    previous_image: str = ""      # what its previous spec ran ("" without one)
    can_roll_back: bool = False   # the previous spec runs other tasks than this one

    @property
    def digest(self) -> str:
        return self.image.partition("@")[2]

    def unset(self) -> tuple[str, ...]:
        """The update settings zdd must set for its updates (keys of SETTINGS)."""
        return tuple(k for k, ok in (("order", self.update_order == "start-first"),
                                     ("failure", self.failure_action == "rollback"),
                                     ("rollback-order", self.rollback_order == "start-first")) if not ok)


@dataclass
class StackState:
    node: str                                  # "LocalNodeState ControlAvailable", e.g. "active true"
    model: dict[str, Any]                      # docker compose config: services
    services: dict[str, StackService] = field(default_factory=dict)
    applied: dict[str, str] | None = None      # service -> spec_hash zdd last applied; None: no record
    node_error: str = ""
    key: str = "stack"                         # stack_STACK: names the lock and the journal (survey.sh)
    lock_holder: str = ""                      # who holds the deploy lock now ("" = free)
    journal: str = ""                          # the journal's recent lines

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
    )


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
    state = StackState(node.strip() if rc == 0 else "", model.get("services") or {},
                       {s.name: s for s in (_service(r, stack, running) for r in raw)},
                       node_error="" if rc == 0 else (node.strip().splitlines() or ["docker info failed"])[-1])
    read_head(sec, state)
    rc, applied = sec.get("applied", (1, ""))
    if rc == 0:
        try:
            state.applied = {str(k): str(v) for k, v in json.loads(applied).items()}
        except (json.JSONDecodeError, AttributeError):
            state.applied = None  # unreadable: as if there were none (applied once more)
    return state


# --- validate --------------------------------------------------------------------------------

def survey(s: Session) -> StackState:
    """One read of the manager: compose model, node, the stack's services, what zdd applied."""
    return steps.read_survey(s, cmds.stack_survey(s.host), lambda text: parse_survey(text, s.host.stack_name),
                             f"stack {s.host.stack_name}")


def check_node(state: StackState) -> None:
    """Engine swarm runs against a manager: BadInput otherwise, in one line."""
    local, _, control = state.node.partition(" ")
    if not state.node:
        raise BadInput(f"cannot read this node's swarm state: {state.node_error}")
    if local != "active":
        raise BadInput(f"this host is not in swarm mode (node state {local}): engine swarm needs a Swarm manager")
    if control != "true":
        raise BadInput("this node is a Swarm worker: engine swarm runs against a manager (docker node ls)")


def check_stack(state: StackState, h: Any, only: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(problems that fail validation, notes) of the compose files against hosts.toml."""
    problems, vip = [], []
    for name in only if only is not None else steps.configured_services(h):
        if name not in state.model:
            problems.append(f"service {name!r} is not in the compose files")
    for name in only if only is not None else h.app_services:
        svc = state.model.get(name)
        if name not in h.app_services or not svc:
            continue
        check = svc.get("healthcheck") or {}
        if check.get("disable") or not check.get("test") or check["test"][0] == "NONE":
            problems.append(f"{name} has no healthcheck in the compose files, so Swarm takes a new task as ready "
                            "once it runs (an image's own HEALTHCHECK is not seen here: repeat it in the file)")
        host_ports = [str(p.get("published")) for p in svc.get("ports") or []
                      if isinstance(p, dict) and p.get("mode") == "host" and p.get("published")]
        if host_ports:
            problems.append(f"{name} publishes port {', '.join(host_ports)} in host mode, so it cannot run twice on "
                            "a node (start-first): publish through the proxy")
        if (svc.get("deploy") or {}).get("endpoint_mode", "vip") != "dnsrr":
            vip.append(name)
    notes = []
    if vip:
        notes.append(f"{', '.join(vip)} use endpoint_mode vip: where the kernel has no IPVS a proxy cannot reach "
                     "their tasks through the service's virtual IP; endpoint_mode: dnsrr resolves to the tasks")
    return problems, notes


def validate(s: Session, only: list[str] | None = None) -> StackState:
    """The node is a manager, the compose files fit hosts.toml; nothing changes before this passes."""
    h = s.host
    with s.report.step("validate") as rec:
        state = survey(s)
        check_node(state)
        problems, notes = check_stack(state, h, only)
        if only is None:
            steps.registry_credentials(s)  # a missing token fails here, before anything changes
        if problems:
            raise BadInput(f"{len(problems)} problem(s) on the host: " + "; ".join(problems))
        rec.detail = f"Swarm manager; stack {h.stack_name}: {len(state.services)} of {len(state.model)} services " \
                     "deployed"
        s.notes.extend(notes)
    return state


# --- pull ------------------------------------------------------------------------------------

def wanted_digest(ref: str, digests: dict[str, str]) -> str | None:
    """The digest a compose image reference names now: its own, or what its tag was pulled as."""
    _, at, digest = ref.partition("@")
    return digest if at else digests.get(normalize_ref(ref))


def digest_table(text: str) -> dict[str, str]:
    """The ``digest REF DIGEST`` lines of a listing (:func:`cmds.image_digests`) as ref -> digest."""
    return image_table("\n".join(ln.removeprefix("digest ") for ln in text.splitlines() if ln.startswith("digest ")))


def pull(s: Session, state: StackState) -> dict[str, str]:
    """Log in, pull every configured service on this node and read the digests (ref -> digest)."""
    names = [n for n in steps.configured_services(s.host) if n in state.model]
    with s.report.step("pull") as rec:
        listing, logged = steps.fetch_images(s, names, (cmds.image_digests(),))
        digests = digest_table(listing)
        changed = [n for n in names if n in state.services and
                   wanted_digest(str(state.model[n].get("image", "")), digests) not in (None, state.services[n].digest)]
        rec.detail = logged + (f"new digest for {', '.join(changed)}" if changed else "no new digests")
    proxy = s.host.proxy.service
    if proxy in changed:
        s.notes.append(f"{proxy} has a new image: zdd does not update the proxy (its port is published on the node); "
                       f"docker service update --image it when a short outage is acceptable")
    return digests


# --- the plan --------------------------------------------------------------------------------

@dataclass(frozen=True)
class SwarmPlan:
    name: str
    roll: bool
    reason: str
    image: str = ""                   # REF@DIGEST it is updated to
    ref: str = ""                     # the compose file's reference
    sets: tuple[str, ...] = ()        # settings zdd sets for the update (keys of SETTINGS)
    verb: str = "roll"

    def line(self) -> str:
        return f"{self.name}: {self.verb if self.roll else 'skip'}, {self.reason}"

    def change(self) -> cmds.SwarmChange:
        return cmds.SwarmChange(self.name, self.image, self.ref, self.sets)


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


def rollback_plan(state: StackState, names: list[str]) -> list[SwarmPlan]:
    """Which app services ``rollback`` returns to their previous spec, and why not the others."""
    plans = []
    for name in names:
        svc = state.services.get(name)
        why = no_rollback(svc)
        if why or svc is None:
            plans.append(SwarmPlan(name, False, why))
            continue
        back = short_image(svc.previous_image.partition("@")[2] or svc.previous_image)
        plans.append(SwarmPlan(name, True, f"{short_image(svc.digest)} → {back}", svc.previous_image,
                               verb="roll back"))
    return plans


def no_rollback(svc: StackService | None) -> str:
    """Why a service has nothing to roll back to ("" when it has)."""
    if svc is None:
        return "not deployed"
    if not svc.previous_image:
        return "no previous spec (never updated)"
    if svc.update_state.startswith("rollback"):
        return f"its last update was rolled back already ({svc.update_state})"
    if not svc.can_roll_back:
        return "its previous spec runs the same tasks"
    return ""


def plan(s: Session, state: StackState, digests: dict[str, str], names: list[str], force: bool) -> list[SwarmPlan]:
    plans = steps.planned(s, lambda: make_plan(names, state, digests, force))
    settings: dict[str, list[str]] = {}
    for p in plans:
        for key in p.sets if p.roll else ():
            settings.setdefault(key, []).append(p.name)
    for key, names_ in settings.items():
        s.notes.append(f"{', '.join(names_)}: no deploy.{SETTINGS[key]} in the running spec: zdd sets it for its "
                       "update (a later docker stack deploy resets it: put it in the compose file)")
    return plans


# --- swarm_tier.sh: make a change, wait until Swarm has finished it ----------------------------

def ceiling(s: Session, state: StackState, names: list[str]) -> int:
    """Seconds a change may take: each task in turn boots, gets healthy and is monitored."""
    return max(((s.host.service(n).health_timeout + 60) * max(state.replicas(n), 1) for n in names), default=60)


def run(s: Session, action: str, changes: list[cmds.SwarmChange], limit: int, hashes: str = "",
        key: str = "", lines: tuple[str, ...] = ()) -> dict[str, str]:
    """Start ``action`` on the host (``lines`` go to the journal KEY first) and read its lines
    until it ends: how each service finished; StepFailed naming the service Swarm paused or
    rolled back."""
    conv = s.r.converse(cmds.swarm_tier(s.host, action, changes, limit, hashes, key, lines))
    names = ", ".join(c.name for c in changes) or s.host.stack_name
    done: dict[str, str] = {}
    said: list[str] = []
    deadline = time.monotonic() + limit + 60
    try:
        while time.monotonic() < deadline:
            line = conv.readline(1.0)
            if line is None:
                break
            word, _, rest = line.partition(" ")
            if word == "progress":
                s.report.progress(rest)
                continue
            if line:
                said.append(line)
            if word == "note":
                s.r.note(rest)
            elif word == "done":
                name, _, how = rest.partition(" ")
                done[name] = how
            elif word == "ok":
                conv.close()
                return done
            elif word == "failed":
                conv.close()
                raise StepFailed(rest + consequence(rest), failure_detail(said))
    except KeyboardInterrupt:
        s.notes.append(f"interrupted: Swarm goes on with what it started ({names}): fab -H {s.name} status shows "
                       f"it, fab -H {s.name} rollback undoes it")
        raise
    ended = conv.close()
    raise StepFailed(f"{names}: the host stopped answering ({ended.first_error_line()}); Swarm goes on with it",
                     failure_detail(said))


def consequence(failure: str) -> str:
    """What a failed update leaves, said after Swarm's own words."""
    if " rollback_" in failure:
        return "; Swarm returns it to its previous spec, its old tasks serve meanwhile"
    if " paused" in failure:
        return "; Swarm paused the update: fix the image and deploy again, or fab rollback"
    return ""


def failure_detail(lines: list[str]) -> str:
    """The tasks Swarm reported for the service that failed, readable."""
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        if word == "detail":
            name, _, text = rest.partition(" ")
            out.append(f"  {name}: {text}")
    return "\n".join(out)


class Updates:
    """One run's Swarm updates (or rollbacks), tier after tier: what Rollout is for Compose.
    The run's pending journal lines (its plan) go to the host with the first change."""

    def __init__(self, s: Session, state: StackState, plans: list[SwarmPlan], held: steps.Held,
                 action: str = "update"):
        self.s, self.state, self.action, self.held = s, state, action, held
        self.plans = {p.name: p for p in plans}
        held.prune = action == "update" and any(p.roll for p in plans)

    def tier(self, names: list[str]) -> None:
        """Change the tier's services that the plan rolls, together; wait until Swarm has finished."""
        plans = [self.plans[n] for n in names if n in self.plans and self.plans[n].roll]
        if not plans:
            return
        title = "rollout" if self.action == "update" else "rollback"
        with self.s.report.step(f"{title} {', '.join(p.name for p in plans)}") as rec:
            lines, self.held.lines[:] = tuple(self.held.lines), []
            done = run(self.s, self.action, [p.change() for p in plans],
                       ceiling(self.s, self.state, [p.name for p in plans]), key=self.state.key, lines=lines)
            rec.detail = ", ".join(f"{p.name} {done.get(p.name, '?')}" for p in plans)


# --- the steps -------------------------------------------------------------------------------

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


def infra_up(s: Session, state: StackState | None = None, digests: dict[str, str] | None = None) -> StackState:
    """``docker stack deploy`` when a service is missing or the compose files changed since zdd
    applied them; then the infra services whose tag names a new digest. The state afterwards."""
    h = s.host
    with s.report.step("infra-up") as rec:
        if state is None or digests is None:  # the task alone: compare with the images on this node
            state = survey(s)
            check_node(state)
            digests = image_table(s.r.read(cmds.image_digests(), "listing the images"))
        said = []
        changes = stack_changes(state)
        if changes:
            hashes = json.dumps({n: spec_hash(svc) for n, svc in state.model.items()}, sort_keys=True)
            run(s, "stack", [cmds.SwarmChange(n) for n in changes], ceiling(s, state, list(changes)), hashes)
            whys: dict[str, list[str]] = {}
            for name, why in changes.items():
                whys.setdefault(why, []).append(name)
            said.append("docker stack deploy: " + "; ".join(f"{why}: {', '.join(n)}" for why, n in whys.items()))
            if not s.r.dry_run:
                state = survey(s)  # what it created and changed
        infra = [p for p in make_plan([n for n in h.infra if n in state.services], state, digests) if p.roll]
        if infra:
            run(s, "update", [p.change() for p in infra], ceiling(s, state, [p.name for p in infra]))
            said.append(f"new image for {', '.join(p.name for p in infra)}")
        if not said:
            rec.status, rec.detail = "skipped", "unchanged: " + (", ".join(h.infra) or "the stack")
            return state
        rec.detail = "; ".join(said)
    return state


def deploy(s: Session, force: bool = False, wait: bool = False) -> None:
    """validate → lock → [recover] → pull → infra-up → plan → tiers → [reload-caddy] → finish
    (journal, prune, unlock). (``wait`` means nothing here: a tier is done when Swarm has
    finished it.)"""
    state = validate(s)
    with steps.locked(s, state, "deploy") as held:
        state = steps.recover(s, state, survey)
        deploy_steps(s, state, held, force)


def deploy_steps(s: Session, state: StackState, held: steps.Held, force: bool = False) -> None:
    engine = engine_for(s.host)
    engine.prepare(s.r)
    digests = pull(s, state)
    state = infra_up(s, state, digests)
    plans = plan(s, state, digests, s.host.app_services, force)
    note_plan(held, state, plans)
    updates = Updates(s, state, plans, held)
    for tier in s.host.rollout:
        engine.roll_tier(updates, list(tier))
    proxy = s.host.proxy
    if proxy.reload_on_deploy:
        reload_caddy(s)
    else:
        s.report.skip(f"reload-{proxy.service or 'proxy'}", "not needed: Swarm takes a task out of service "
                                                           "discovery before it stops it")


def note_plan(held: steps.Held, state: StackState, plans: list[SwarmPlan]) -> None:
    """The plan for the journal (each service's digest before and after), sent with the first change."""
    services = {}
    for p in plans:
        svc = state.services.get(p.name)
        before = [svc.digest] if svc and svc.digest else []
        after = p.image.partition("@")[2] if p.roll else (before or [""])[0]
        services[p.name] = {"roll": p.roll, "reason": p.reason, "ref": p.ref or (svc.stack_ref if svc else ""),
                            "before": before, "after": after, "old": []}
    held.lines.append(journal.line({"run": held.run, "t": int(time.time()), "event": "plan", "services": services}))


def rollout_service(s: Session, name: str, state: StackState) -> None:
    """Update one app service (always), to the digest its tag names on this node."""
    if name not in state.services:
        raise BadInput(f"{name} is not deployed in stack {s.host.stack_name}: run infra-up (or deploy) first")
    with steps.locked(s, state, f"rollout-service {name}") as held:
        state = steps.recover(s, state, survey)
        digests = digest_table(s.r.read(cmds.image_digests(), "listing the images"))
        plans = make_plan([name], state, digests, force=True)
        note_plan(held, state, plans)
        Updates(s, state, plans, held).tier([name])


def rollback(s: Session, to: str | None = None) -> None:
    """Every app service back to Swarm's previous spec, tiers in reverse order, each waited for."""
    if to:
        raise BadInput("rollback --to: engine swarm returns each service to Swarm's previous spec only")
    with s.report.step("validate") as rec:
        state = survey(s)
        check_node(state)
        rec.detail = f"Swarm manager; stack {s.host.stack_name}"
    with steps.locked(s, state, "rollback") as held:
        state = steps.recover(s, state, survey)
        plans = steps.planned(s, lambda: rollback_plan(state, s.host.app_services))
        note_plan(held, state, plans)
        engine = engine_for(s.host)
        updates = Updates(s, state, plans, held, "rollback")
        for tier in reversed(s.host.rollout):
            engine.roll_tier(updates, list(tier))


def recover_task(s: Session) -> None:
    """Close an interrupted run in the journal and free the lock (Swarm finished or undid what
    it had started on its own)."""
    state = validate(s)
    with steps.locked(s, state, "recover"):
        steps.recover(s, state, survey)


def reload_caddy(s: Session) -> None:
    """A graceful reload of the proxy in its tasks on this node."""
    p = s.host.proxy
    with s.report.step(f"reload-{p.service or 'proxy'}") as rec:
        if steps.no_proxy_step(s, rec):
            return
        ids = s.r.read(cmds.service_containers(s.host, p.service), f"finding the {p.service} tasks").split()
        if not ids:
            raise StepFailed(f"no task of {s.host.stack_name}_{p.service} runs on this node: reload it where it runs")
        for container in ids:
            steps.reload_in(s, container)
        rec.detail = f"graceful reload of {p.config} in {len(ids)} task(s) on this node"


def status(s: Session) -> None:
    """The stack's services (image digest, tasks, last update) and tasks, as Swarm sees them;
    the lock and the last run (the journal)."""
    state = survey(s)
    check_node(state)
    rows = [("service", "tasks", "digest", "last update", "image")]
    rows += [(n, v.running or "?", short_image(v.digest), v.update_state or "-", v.image.partition("@")[0])
             for n, v in sorted(state.services.items())]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[4] for r in rows)
    tasks = s.r.read(cmds.stack_tasks(s.host), "docker stack ps").rstrip()
    text += "\n\n" + tasks + "\n\n" + "\n".join(journal_lines(state, read_runs(s, state)))
    for line in text.splitlines():
        print(f"[{s.name}]   {line}", file=s.r.out)
