"""The deploy sequence, written once for every engine: what ``deploy``, ``rollout-service``,
``rollback`` and ``recover`` do, top to bottom. Engines (:mod:`fabfile.engines`) supply the
steps that differ; this module holds the lock, journals the plan and runs the tiers in order.

deploy::

    validate → check canary/watch → pre-deploy → lock → recover → prepare → pull → infra-up → plan
             → each tier (pre-tier, the tier, post-tier) → watch → done → finish → markers → post-deploy

A tier (:meth:`~fabfile.engines.base.Tiers.tier`) starts the tier's new containers, waits
until they are healthy, runs the canary steps (a share of the traffic, judged) and switches
the traffic to them; before the switch a failure removes
them (the old ones never stopped serving), after it the new ones carry the traffic and are
never removed. ``done`` drains and retires the old ones and restores the proxy (on the host,
after fab returns, unless ``wait``). ``finish`` (in :func:`~fabfile.locking.locked`) journals
the end with the verify verdict, keeps the images, prunes and frees the lock.

``drain-node`` (engine swarm) is a run of its own: validate → node → lock → recover → plan (what
moves off the node) → one tier (each task started elsewhere first, then the node drained).

``deploy`` and ``rollback`` run the team's hooks (:mod:`fabfile.hooks`: a pre-hook that fails
stops the run before the lock, so before any change) and, once the lock is freed, send the
release markers (:mod:`fabfile.notify`) and run the post-hook with the result, whatever it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from . import hooks as team_hooks
from . import notify
from .config_model import CanaryConfig, WatchConfig
from .engines import Engine, Release
from .interrupts import shielded
from .locking import Held, Verdict, locked, no_verdict
from .release import RunFacts
from .session import Session


def deploy(
    s: Session,
    engine: Engine,
    force: bool = False,
    wait: bool = False,
    verdict: Verdict = no_verdict,
    hooks: bool = True,
    canary: CanaryConfig | None = None,
    watch: WatchConfig | None = None,
) -> None:
    """Pull, bring infra up, roll the app services that changed, tier after tier (each with
    ``canary``'s steps before its switch), then ``watch`` them (default: the host's)."""
    canary = s.host.canary if canary is None else canary
    watch = s.host.watch if watch is None else watch
    state = engine.validate(s)
    engine.check_guard(s, state, canary, watch)
    facts = starting(s, engine, state, "deploy")
    team_hooks.before(s, "pre-deploy", facts, hooks)
    with marked(s, facts, "post-deploy", hooks, verdict):
        with locked(s, state, "deploy", verdict, facts.run) as held:
            state = under_lock(s, engine, state, held)
            engine.prepare(s)
            images = engine.pull(s, state)
            state = engine.infra_up(s, state, images)
            plans = engine.plan(s, state, images, s.host.app_services, force)
            release = Release(plans, images, [list(t) for t in s.host.rollout], canary=canary, watch=watch)
            roll(s, engine, state, release, held, wait, facts, hooks)


def rollout_service(s: Session, engine: Engine, name: str) -> None:
    """Replace one app service's containers, whatever the plan would say."""
    state = engine.validate(s, only=[name])
    with locked(s, state, f"rollout-service {name}") as held:
        state = under_lock(s, engine, state, held)
        roll(s, engine, state, engine.one_service(s, state, name), held, wait=True)


def rollback(
    s: Session,
    engine: Engine,
    to: str | None = None,
    wait: bool = False,
    verdict: Verdict = no_verdict,
    hooks: bool = True,
) -> None:
    """Go back to an earlier run's images (or Swarm's previous specs), with zero downtime."""
    state = engine.validate(s)
    kind, target = engine.rollback_target(s, state, to)
    facts = starting(s, engine, state, "rollback")
    team_hooks.before(s, "pre-rollback", facts, hooks)
    with marked(s, facts, "post-rollback", hooks, verdict):
        with locked(s, state, kind, verdict, facts.run) as held:
            state = under_lock(s, engine, state, held)
            roll(s, engine, state, engine.rollback_release(s, state, target), held, wait, facts, hooks)


def drain_node(s: Session, engine: Engine, node: str, verdict: Verdict = no_verdict) -> None:
    """Empty a node before it is drained (engine swarm): every task there started on another
    node before it stops, as in a deploy; then the node drained, with nothing left to stop."""
    state = engine.validate(s)
    target = engine.node_target(s, state, node)
    with locked(s, state, f"drain-node {node}", verdict) as held:
        state = under_lock(s, engine, state, held)
        roll(s, engine, state, engine.drain_release(s, state, target), held, wait=True)


def recover(s: Session, engine: Engine) -> None:
    """Only what the next deploy would do first: finish or undo an interrupted run, restore
    the proxy if it still routes by container address, free the lock."""
    state = engine.validate(s)
    with locked(s, state, "recover") as held:
        state = under_lock(s, engine, state, held)
        engine.tiers(s, state, Release([], action="recover", wait=True), held).done()


def under_lock(s: Session, engine: Engine, state: object, held: Held) -> object:
    """The host as it is once the lock is held: read again when the lock had to be waited for
    or taken over (the run before changed the host meanwhile: its old containers are gone),
    then what interrupted runs left half done finished or undone. Plans are made from this."""
    if held.waited:
        state = engine.survey(s)
    return engine.recover(s, state, held.run)


def roll(
    s: Session,
    engine: Engine,
    state: object,
    release: Release,
    held: Held,
    wait: bool,
    facts: RunFacts | None = None,
    hooks: bool = True,
) -> None:
    """The plan to the journal (sent with the first change), then each tier in order (with
    the pre-tier and post-tier hooks of a tier that rolls something); on a failure or an
    interruption the engine unwinds (never removing what carries traffic)."""
    release = replace(release, wait=wait)
    event = engine.plan_event(held.run, state, release)
    held.note_plan(event)
    if facts is not None:
        facts.plan(event)
    tiers = engine.tiers(s, state, release, held)
    try:
        for i, names in enumerate(release.tiers, 1):
            rolls = facts is not None and any(n in facts.services for n in names)
            if rolls:
                team_hooks.before(s, "pre-tier", facts, hooks, (i, names))
            tiers.tier(names)
            if rolls:
                team_hooks.after(s, "post-tier", facts, hooks, (i, names))
    except BaseException as e:
        with shielded("the unwind (never leaving a service without a whole set of containers)"):
            tiers.unwind(e)
        raise
    tiers.done()


def starting(s: Session, engine: Engine, state: Any, command: str) -> RunFacts:
    """What the hooks and markers know of a run before anything changes: the app services
    configured and the image references the compose files name (the plan narrows them)."""
    images = engine.images_named(s, state)
    return RunFacts(
        s.name, command, [n for n in s.host.app_services if n in images], images, started=s.report.started_at
    )


@contextmanager
def marked(s: Session, facts: RunFacts, post_hook: str, hooks: bool, verdict: Verdict) -> Iterator[None]:
    """Once the body is over (the lock freed), whatever its result: the release markers,
    then the post-hook. Neither changes the result."""
    try:
        yield
    except BaseException as e:
        _over(s, facts, e, post_hook, hooks, verdict)
        raise
    _over(s, facts, None, post_hook, hooks, verdict)


def _over(
    s: Session, facts: RunFacts, error: BaseException | None, post_hook: str, hooks: bool, verdict: Verdict
) -> None:
    facts.over(error)
    facts.verdict = ((verdict() or {}).get("verdict") or "") if not s.r.dry_run else ""
    try:
        notify.mark(s, facts)
    except Exception as e:  # a bug in a marker must not turn the run's result
        s.report.record("notify", "warned", f"internal error: {type(e).__name__}: {e}")
    team_hooks.after(s, post_hook, facts, hooks)
