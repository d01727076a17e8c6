"""Engine swarm's ``drain-node``, pure: which of the stack's services hold a task on the node
(``docker node ps``), and how each moves off it before the node is drained (each new task
started elsewhere before the old one stops, as in a deploy); what cannot move fails the run
before any change. Nothing here talks to a host."""

from __future__ import annotations

from .swarm_nodes import SwarmNode, move_stall
from .swarm_state import StackState, SwarmPlan


def ours(line: str, stack: str, services: set[str]) -> str:
    """The service of ``stack`` (one of ``services``) a node_tasks line's task is of, or ""."""
    name = line.rpartition(".")[0].removeprefix(f"{stack}_")
    return name if name in services and line.startswith(f"{stack}_") else ""


def on_node(listing: str, stack: str, services: set[str]) -> dict[str, int]:
    """node_tasks' lines: how many tasks of each service of ``stack`` (``services``, its names:
    stack "app" and stack "app_v2" share a prefix) the node holds."""
    counts: dict[str, int] = {}
    for line in listing.split():
        if name := ours(line, stack, services):
            counts[name] = counts.get(name, 0) + 1
    return counts


def other_stacks(listing: str, stack: str, services: set[str]) -> list[str]:
    """node_tasks' lines of services not of ``stack``: the drain stops those first."""
    return sorted({line.rpartition(".")[0] for line in listing.split() if not ours(line, stack, services)})


def drain_plan(
    state: StackState, app_services: list[str], node: SwarmNode, counts: dict[str, int]
) -> tuple[list[SwarmPlan], list[str], list[str]]:
    """(plans, problems, notes) of moving the stack's tasks off ``node`` (``counts``: its tasks
    there by service): each service with a task there moves, an app service start-first (as
    zdd's updates), the others by their own update order; a global service cannot move (the
    drain stops its task there); a service no other node could take is a problem."""
    others = [n for n in state.nodes or [] if n.id != node.id]
    plans, problems, notes = [], [], []
    for name in sorted(counts):
        svc = state.services.get(name)
        if svc is None:
            continue
        if svc.replicas is None:
            notes.append(f"{name}: global (a task on every node): the drain stops its task on {node.hostname}")
            continue
        if svc.update_state in ("paused", "rollback_paused"):  # a move would start that update again
            problems.append(f"{name}: Swarm paused its last update ({svc.update_state}): deploy or roll back first")
            continue
        stall = move_stall(name, state.model.get(name) or {}, others)
        if stall:
            problems.append(stall)
            continue
        app = name in app_services
        sets = ("order",) if app and svc.update_order != "start-first" else ()
        how = "start-first" if app else f"by its own update order, {svc.update_order}"
        if not app and svc.update_order != "start-first":
            notes.append(f"{name}: not an app service, it moves {svc.update_order} (its update_config.order)")
        tasks = f"{counts[name]} task(s)"
        plans.append(
            SwarmPlan(name, True, f"{tasks} on {node.hostname} to other nodes, {how}", svc.image, "", sets, "move")
        )
    return plans, problems, notes
