"""Engine swarm's tiers: a change (update, rollback, stack deploy) started on the manager and
waited for there (``remote/swarm_tier.sh``) until Swarm has finished it (or, for a tier of an
update with a later tier to come, replaced its tasks), failing at once naming the service
Swarm paused or rolled back. :class:`Updates` is what
:class:`~fabfile.engines.compose_rollout.ComposeRollout` is for Compose."""

from __future__ import annotations

import time

from .. import commands_swarm as swarm_cmds
from .. import steps
from ..config import SWARM_ANSWER_MARGIN, SWARM_TASK_MARGIN
from ..locking import Held
from ..runner import StepFailed
from ..session import Session
from .swarm_state import StackState, SwarmPlan

MONITOR = "(monitor)"  # run()'s answer: the job watching Swarm's monitor window ("PID SERVICE...")


def ceiling(s: Session, state: StackState, names: list[str]) -> int:
    """Seconds a change may take: each task in turn boots, gets healthy and is monitored."""
    return max(
        ((s.host.service(n).health_timeout + SWARM_TASK_MARGIN) * max(state.replicas(n), 1) for n in names),
        default=SWARM_TASK_MARGIN,
    )


def run(
    s: Session,
    action: str,
    changes: list[swarm_cmds.SwarmChange],
    limit: int,
    hashes: str = "",
    key: str = "",
    lines: tuple[str, ...] = (),
    watch: tuple[str, ...] = (),
    replaced: bool = False,
    job_run: str = "",
    node: str = "",
) -> dict[str, str]:
    """Start ``action`` on the host (``lines`` go to the journal KEY first) and read its lines
    until it ends: how each service finished (``replaced``, or Swarm's final state), the
    ``watch`` services that completed meanwhile too, and under :data:`MONITOR` the job (its
    pid and the services it waits for) that ``job_run`` handed Swarm's monitor window to, and
    for a move off ``node`` the node drained and the services unpinned; StepFailed naming the
    service Swarm paused or rolled back."""
    login = registry_login(s, action, changes)
    cmd = swarm_cmds.swarm_tier(
        s.host, action, changes, limit, hashes, key, lines, watch, replaced, login[:2] if login else None, job_run, node
    )
    conv = s.r.converse(cmd, labels={swarm_cmds.LOGIN_WORD: f"${login[3]} (secret, on stdin)" if login else ""})
    if login:
        conv.send(swarm_cmds.login_line(login[2]))
    names = ", ".join(c.name for c in changes) or s.host.stack_name
    done: dict[str, str] = {}
    said: list[str] = []
    deadline = time.monotonic() + limit + SWARM_ANSWER_MARGIN
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
            elif word == "monitor":
                done[MONITOR] = rest
            elif word in (swarm_cmds.DRAINED, swarm_cmds.UNPINNED):
                done[word] = f"{done.get(word, '')} {rest}".strip()
            elif word == "ok":
                conv.close()
                return done
            elif word == "failed":
                conv.close()
                raise StepFailed(rest + ("" if node else consequence(rest)), swarm_failure_detail(said))
    except KeyboardInterrupt:
        s.notes.append(
            f"interrupted: Swarm goes on with what it started ({names}): fab -H {s.name} status shows it, "
            + (f"fab -H {s.name} drain-node {node} finishes it" if node else f"fab -H {s.name} rollback undoes it")
        )
        raise
    ended = conv.close()
    raise StepFailed(
        f"{names}: the host stopped answering ({ended.first_error_line()}); Swarm goes on with it",
        swarm_failure_detail(said),
    )


def registry_login(s: Session, action: str, changes: list[swarm_cmds.SwarmChange]) -> tuple[str, ...] | None:
    """(server, username, token, token_env) when the change hands Swarm a registry login
    (``--with-registry-auth``) of a temporary Docker config: with a registry, unless
    ``registry.keep_login`` leaves the pull's login in ~/.docker. None otherwise."""
    reg = s.host.registry
    if reg is None or reg.keep_login or not needs_auth(action, changes):
        return None
    creds = steps.registry_credentials(s)
    return (reg.server, creds[0], creds[1], reg.password_env) if creds else None


def needs_auth(action: str, changes: list[swarm_cmds.SwarmChange]) -> bool:
    """Whether swarm_tier.sh passes --with-registry-auth for this change (a plain rollback
    does not: Swarm pulls with the login its previous spec had)."""
    return action in ("update", "stack", "move") or any("as-update" in c.sets for c in changes)


def consequence(failure: str) -> str:
    """What a failed update leaves, said after Swarm's own words."""
    if " rollback_" in failure:
        return "; Swarm returns it to its previous spec, its old tasks serve meanwhile"
    if " paused" in failure:
        return "; Swarm paused the update: fix the image and deploy again, or fab rollback"
    if "no suitable node" in failure:
        return (
            "; no node may take the new task: see docker node ls and the service's placement (start-first "
            "needs room for one more task: max_replicas_per_node, constraints)"
        )
    return ""


def swarm_failure_detail(lines: list[str]) -> str:
    """The tasks Swarm reported for the service that failed, readable."""
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        if word == "detail":
            name, _, text = rest.partition(" ")
            out.append(f"  {name}: {text}")
    return "\n".join(out)


class Updates:
    """One run's Swarm updates (or rollbacks), tier after tier (the engines'
    :class:`~fabfile.engines.base.Tiers`). The run's pending journal lines (its plan) go to the
    host with the first change.

    Updates overlap Swarm's monitor window: a tier with a later tier to come is done once Swarm
    has replaced its tasks (the new ones running, healthy, the old ones shut down); its services
    are then watched by each later tier's run (Swarm pausing or rolling one back fails that run,
    before it starts anything if it is already so). The last tier's run ends the same way once
    its own tasks are replaced, the new tasks carrying all the traffic, and hands the rest of the
    wait, until Swarm says ``completed`` for every service, to a job on the host that holds the
    deploy lock meanwhile and journals Swarm's verdict (``settled``); with ``wait`` (``--wait``,
    and ``rollout-service``) the run itself waits for ``completed``. Rollbacks wait for each
    tier's verdict."""

    def __init__(
        self,
        s: Session,
        state: StackState,
        plans: list[SwarmPlan],
        held: Held,
        action: str = "update",
        tiers: list[list[str]] | None = None,
        wait: bool = True,
        node: str = "",
    ):
        self.s, self.state, self.action, self.held = s, state, action, held
        self.plans = {p.name: p for p in plans}
        # services the plan rolls in tiers not started yet, and those Swarm still monitors
        self.later = {n for t in tiers or [] for n in t if n in self.plans and self.plans[n].roll}
        self.monitored: list[str] = []
        self.wait = wait
        self.node = node  # action move: the node (ID) the services move off, drained after
        self.job = ""  # the monitor job the last tier handed Swarm's monitor window to ("PID SERVICE...")
        held.prune = action == "update" and any(p.roll for p in plans)
        held.images.clear()  # no zdd-keep tags: Swarm keeps each service's previous spec

    def unwind(self, error: BaseException) -> None:
        """Swarm finishes or rolls back what it started; nothing of zdd's to undo. A move that did
        not end leaves the node active, its constraint on the services it started moving."""
        if self.action == "move":
            self.s.notes.append(
                f"the node is not drained; a service whose move started keeps the constraint node.id!={self.node} "
                f"until fab -H {self.s.name} drain-node {self.node} runs again (it drains the node, then removes it)"
            )

    def done(self) -> None:
        """After the last tier of a deploy: the proxy reloaded only when hosts.toml asks; the
        monitor job said."""
        if self.action != "update":
            return
        if self.job:
            pid, _, names = self.job.partition(" ")
            self.s.report.record(
                "swarm verdict",
                "ok",
                f"left to the host: Swarm monitors {', '.join(names.split())} until its monitor window ends; job "
                f"{pid} holds the deploy lock until then and journals the verdict (fab -H {self.s.name} status)",
            )
        if self.s.host.proxy.reload_on_deploy:
            reload_proxy(self.s)
        else:
            self.s.report.skip(
                steps.proxy_step(self.s), "not needed: Swarm takes a task out of service discovery before it stops it"
            )

    def tier(self, names: list[str]) -> None:
        """Change the tier's services that the plan rolls, together; wait until Swarm has finished."""
        plans = [self.plans[n] for n in names if n in self.plans and self.plans[n].roll]
        if not plans and self.action != "move":  # a move drains the node even with nothing left to move
            return
        names = [p.name for p in plans]
        self.later -= set(names)
        overlap = self.action == "update"
        handing = overlap and not self.later and not self.wait  # the last tier: Swarm's verdict to a job
        watch = tuple(self.monitored) if overlap else ()
        title = f"{'rollout' if self.action == 'update' else 'rollback'} {', '.join(names)}"
        if self.action == "move":
            title = f"move {', '.join(names)} off the node, drain it" if names else "drain the node"
        with self.s.report.step(title) as rec:
            done = run(
                self.s,
                self.action,
                [p.change() for p in plans],
                ceiling(self.s, self.state, names + list(watch)),
                key=self.state.key,
                lines=self.held.take_lines(),
                watch=watch,
                replaced=overlap and (bool(self.later) or handing),
                job_run=self.held.run if handing else "",
                node=self.node,
            )
            rec.detail = ", ".join(f"{n} {done.get(n, '?')}" for n in names)
            if self.action == "move":
                rec.detail += (
                    ", " if names else ""
                ) + f"node drained; constraint removed from: {done.get(swarm_cmds.UNPINNED) or 'none'}"
            if watch:
                rec.detail += "; earlier: " + ", ".join(f"{n} {done.get(n, 'monitored')}" for n in watch)
            if MONITOR in done:
                self.job = done[MONITOR]
                self.held.handed_over = True
        self.monitored = [n for n in watch if done.get(n) not in ("completed", "superseded")]
        self.monitored += [n for n in names if done.get(n) == "replaced"]


def reload_proxy(s: Session) -> None:
    """A graceful reload of the proxy in its tasks on this node."""
    p = s.host.proxy
    with s.report.step(steps.proxy_step(s)) as rec:
        if steps.no_proxy_step(s, rec):
            return
        ids = s.r.read(swarm_cmds.service_containers(s.host, p.service), f"finding the {p.service} tasks").split()
        if not ids:
            raise StepFailed(f"no task of {s.host.stack_name}_{p.service} runs on this node: reload it where it runs")
        for container in ids:
            steps.reload_in(s, container)
        rec.detail = f"graceful reload of {p.config} in {len(ids)} task(s) on this node"
