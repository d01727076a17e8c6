"""The deploy sequence, written once for every engine: what ``deploy``, ``rollout-service``,
``rollback`` and ``recover`` do, top to bottom. Engines (:mod:`fabfile.engines`) supply the
steps that differ; this module holds the lock, journals the plan and runs the tiers in order.

deploy::

    validate → lock → recover → prepare → pull → infra-up → plan → each tier → done → finish

A tier (:meth:`~fabfile.engines.base.Tiers.tier`) starts the tier's new containers, waits
until they are healthy and switches the traffic to them; before the switch a failure removes
them (the old ones never stopped serving), after it the new ones carry the traffic and are
never removed. ``done`` drains and retires the old ones and restores the proxy (on the host,
after fab returns, unless ``wait``). ``finish`` (in :func:`~fabfile.locking.locked`) journals
the end with the verify verdict, keeps the images, prunes and frees the lock.
"""

from __future__ import annotations

from .engines import Engine, Release
from .interrupts import shielded
from .locking import Held, Verdict, locked, no_verdict
from .session import Session


def deploy(s: Session, engine: Engine, force: bool = False, wait: bool = False,
           verdict: Verdict = no_verdict) -> None:
    """Pull, bring infra up, roll the app services that changed, tier after tier."""
    state = engine.validate(s)
    with locked(s, state, "deploy", verdict) as held:
        state = under_lock(s, engine, state, held)
        engine.prepare(s)
        images = engine.pull(s, state)
        state = engine.infra_up(s, state, images)
        plans = engine.plan(s, state, images, s.host.app_services, force)
        roll(s, engine, state, Release(plans, images, [list(t) for t in s.host.rollout]), held, wait)


def rollout_service(s: Session, engine: Engine, name: str) -> None:
    """Replace one app service's containers, whatever the plan would say."""
    state = engine.validate(s, only=[name])
    with locked(s, state, f"rollout-service {name}") as held:
        state = under_lock(s, engine, state, held)
        roll(s, engine, state, engine.one_service(s, state, name), held, wait=True)


def rollback(s: Session, engine: Engine, to: str | None = None, wait: bool = False,
             verdict: Verdict = no_verdict) -> None:
    """Go back to an earlier run's images (or Swarm's previous specs), with zero downtime."""
    state = engine.validate(s)
    kind, target = engine.rollback_target(s, state, to)
    with locked(s, state, kind, verdict) as held:
        state = under_lock(s, engine, state, held)
        roll(s, engine, state, engine.rollback_release(s, state, target), held, wait)


def recover(s: Session, engine: Engine) -> None:
    """Only what the next deploy would do first: finish or undo an interrupted run, restore
    the proxy if it still routes by container address, free the lock."""
    state = engine.validate(s)
    with locked(s, state, "recover") as held:
        state = under_lock(s, engine, state, held)
        engine.tiers(s, state, Release([], action="recover"), held).done(wait=True)


def under_lock(s: Session, engine: Engine, state: object, held: Held) -> object:
    """The host as it is once the lock is held: read again when the lock had to be waited for
    or taken over (the run before changed the host meanwhile: its old containers are gone),
    then what interrupted runs left half done finished or undone. Plans are made from this."""
    if held.waited:
        state = engine.survey(s)
    return engine.recover(s, state, held.run)


def roll(s: Session, engine: Engine, state: object, release: Release, held: Held, wait: bool) -> None:
    """The plan to the journal (sent with the first change), then each tier in order; on a
    failure or an interruption the engine unwinds (never removing what carries traffic)."""
    held.note_plan(engine.plan_event(held.run, state, release))
    tiers = engine.tiers(s, state, release, held)
    try:
        for names in release.tiers:
            tiers.tier(names)
    except BaseException as e:
        with shielded("the unwind (never leaving a service without a whole set of containers)"):
            tiers.unwind(e)
        raise
    tiers.done(wait)
