"""What an engine must provide: the narrow interface the deploy sequence
(:mod:`fabfile.sequence`) and the tasks call, whichever engine runs.

An engine reads the host (``survey``/``validate``), gets it ready (``prepare``, ``pull``,
``infra_up``), decides what rolls (``plan``, or ``rollback_release`` for a rollback) and, for
a :class:`Release`, gives the :class:`Tiers` that replace the containers tier after tier.
The sequence holds the lock, journals the plan and runs the tiers in order; the engine never
asks which engine it is, and nothing above it does either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config_model import CanaryConfig, WatchConfig
from ..locking import Held
from ..session import Session


@dataclass
class Release:
    """What a run rolls: each service's plan (``.name``, ``.roll``, ``.line()``), the images
    the plan compared with (ref -> image or digest), the tiers in the order they run, the
    action (``update``; ``rollback`` for a Swarm rollback to the previous spec; ``move`` for a
    node's tasks moved off it, ``node``) and whether the
    run waits until the host has settled (``wait``) or returns once the new set carries the traffic."""

    plans: list[Any]
    images: dict[str, str] = field(default_factory=dict)
    tiers: list[list[str]] = field(default_factory=list)
    action: str = "update"
    canary: CanaryConfig = field(default_factory=CanaryConfig)  # steps () = switch at once
    watch: WatchConfig = field(default_factory=WatchConfig)  # seconds 0 = no watch after the switch
    wait: bool = False  # the run returns once the host has settled (the deploy's --wait), set by the sequence
    node: str = ""  # action move (drain-node): the node whose tasks move off it, which is then drained


class Tiers(Protocol):
    """One run's replacement of app services, tier after tier, on one host."""

    def tier(self, names: list[str]) -> None:
        """Replace the containers of these services (one tier), or raise StepFailed leaving
        a whole set serving."""

    def unwind(self, error: BaseException) -> None:
        """After a failure or an interruption (``error``): leave every service served."""

    def done(self) -> None:
        """After the last tier: what the engine does once all tiers switched (drain reports,
        restore the proxy; with the release's ``wait``, until the old containers are gone)."""


class Engine(Protocol):
    name: str
    interrupted: str  # what an interruption leaves behind, for the run's one-line error

    def survey(self, s: Session) -> Any:
        """One read of the host; the state has ``key``, ``lock_holder`` and ``journal``."""

    def validate(self, s: Session, only: list[str] | None = None) -> Any:
        """Check the host against hosts.toml (``only`` these services); nothing changes before."""

    def check_guard(self, s: Session, state: Any, canary: CanaryConfig, watch: WatchConfig) -> None:
        """BadInput (before any change) when canary steps or a watch cannot run on this host."""

    def prepare(self, s: Session) -> None:
        """Checks and installs the engine's own tool needs (before the pull)."""

    def pull(self, s: Session, state: Any) -> dict[str, str]:
        """Log in and pull; what each image reference names now."""

    def infra_up(self, s: Session, state: Any = None, images: dict[str, str] | None = None) -> Any:
        """Bring the infra services up (in a deploy, only what changed); the state afterwards."""

    def images_named(self, s: Session, state: Any) -> dict[str, str]:
        """Each app service's image reference as the compose files name it now (for the hooks
        that run before the plan)."""

    def plan(self, s: Session, state: Any, images: dict[str, str], names: list[str], force: bool) -> list[Any]:
        """Roll or skip each of ``names``, with the reason (the plan step)."""

    def plan_event(self, run: str, state: Any, release: Release) -> dict:
        """The journal's ``plan`` event: each service's image before and after."""

    def tiers(self, s: Session, state: Any, release: Release, held: Held) -> Tiers:
        """The tiers that carry out ``release`` under the lock ``held``."""

    def one_service(self, s: Session, state: Any, name: str) -> Release:
        """``rollout-service NAME``: roll that one service, whatever the plan would say."""

    def recover(self, s: Session, state: Any, own: str) -> Any:
        """Finish or undo interrupted runs (not ``own``); the state afterwards."""

    def rollback_target(self, s: Session, state: Any, to: str | None) -> tuple[str, Any]:
        """(the journal's kind of run, what to go back to); BadInput when there is nothing."""

    def rollback_release(self, s: Session, state: Any, target: Any) -> Release:
        """Under the lock: get ready to go back to ``target`` and say what rolls."""

    def node_target(self, s: Session, state: Any, node: str) -> Any:
        """``drain-node NODE``: the node to empty, checked before the lock; BadInput when there
        is none such, or the engine has no nodes (one host)."""

    def drain_release(self, s: Session, state: Any, target: Any) -> Release:
        """Under the lock: what moves off the node ``target`` (each task started elsewhere before
        the old one stops), after which it is drained; BadInput when something could not move."""

    def reload_proxy(self, s: Session) -> None:
        """The reload-caddy step: a graceful reload of the proxy's config file."""

    def status(self, s: Session) -> list[str]:
        """What runs now, the lock and the last run: lines for ``fab status``."""
