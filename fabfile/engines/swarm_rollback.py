"""Engine swarm's rollback plan: what each app service's previous spec holds, and whether
returning to it rolls something back (pure: from the survey's StackState)."""

from __future__ import annotations

from dataclasses import replace

from ..plan import short_image
from .swarm_state import StackService, StackState, SwarmPlan


def before_force(svc: StackService) -> StackService:
    """A service whose last update was swarm_tier.sh's forced one (a slot left running two
    tasks): Swarm's PreviousSpec is then the same spec, so the one before is the image the
    forced update recorded (FORCED_FROM). Returning to it is made as an update."""
    if not svc.forced_from:
        return svc
    return replace(
        svc,
        previous_image=svc.forced_from,
        can_roll_back=svc.forced_from != svc.image,
        previous_image_only=True,
        previous_placement_only=False,
        previous_ref="",
    )


def no_rollback(svc: StackService | None) -> str:
    """Why a service has nothing to roll back to ("" when it has)."""
    if svc is None:
        return "not deployed"
    svc = before_force(svc)
    if not svc.previous_image:
        return "no previous spec (never updated)"
    if svc.update_state.startswith("rollback"):
        return f"its last update was rolled back already ({svc.update_state})"
    if svc.rolled_back_from and svc.rolled_back_from == svc.previous_image:
        return "its last update was rolled back already (by zdd, as an update)"
    if not svc.can_roll_back:
        return "its previous spec runs the same tasks"
    if svc.previous_placement_only:
        return (
            "its previous spec differs in its placement only (a drain-node, or a placement change): "
            "no image to go back to"
        )
    if svc.previous_rollback_order != "start-first" and not svc.previous_image_only:
        return (
            f"its previous spec rolls back {svc.previous_rollback_order} (Swarm would stop its tasks first) and "
            "differs in more than the image: deploy the previous compose files instead"
        )
    return ""


def rollback_plan(state: StackState, names: list[str]) -> list[SwarmPlan]:
    """Which app services ``rollback`` returns to their previous spec, and why not the others."""
    plans = []
    for name in names:
        svc = state.services.get(name)
        why = no_rollback(svc)
        if why or svc is None:
            plans.append(SwarmPlan(name, False, why))
            continue
        forced, svc = bool(svc.forced_from), before_force(svc)
        back = f"{short_image(svc.digest)} → {short_image(svc.previous_image.partition('@')[2] or svc.previous_image)}"
        if svc.previous_rollback_order == "start-first" and not forced:
            plans.append(SwarmPlan(name, True, back, svc.previous_image, verb="roll back"))
            continue
        # Swarm would stop the tasks first, or go back to the same spec: the image, as a start-first update
        how = (
            "its last update was a forced one"
            if forced
            else f"its previous spec rolls back {svc.previous_rollback_order}"
        )
        why = f"{back} (as a start-first update: {how})"
        plans.append(SwarmPlan(name, True, why, svc.previous_image, svc.previous_ref, ("as-update",), verb="roll back"))
    return plans
