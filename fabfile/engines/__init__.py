"""Engines: how the containers of one tier of app services are replaced. Each is one object
behind one narrow interface (:class:`~fabfile.engines.base.Engine`), read side by side:

* :class:`~fabfile.engines.compose.ComposeEngine` (``native``, built in): ``docker compose
  up --no-recreate --scale`` starts the new containers beside the old ones; zdd pins, switches
  and drains them at the proxy (:mod:`fabfile.engines.compose_rollout`, ``remote/tier.sh``);
* :class:`~fabfile.engines.compose.DockerRolloutEngine` (``docker-rollout``, the plan's CLI
  plugin): the same sequence, one ``docker rollout`` per service starting the new containers,
  its pre-stop hook holding the old ones until zdd has drained them;
* :class:`~fabfile.engines.swarm.SwarmEngine` (``swarm``): the host is a Swarm manager; Swarm
  replaces each task start-first, zdd orders the tiers and waits for Swarm's verdict
  (``remote/swarm_tier.sh``).

:func:`engine_for` is the one place an engine is chosen by its name (hosts.toml's ``engine``).
To add an engine: a class with the methods of :class:`~fabfile.engines.base.Engine` in a
module of its own here, its name in :data:`ENGINES` and in ``config.ENGINES``.
"""

from __future__ import annotations

from ..config import HostConfig
from .base import Engine, Release, Tiers
from .compose import ComposeEngine, DockerRolloutEngine
from .swarm import SwarmEngine

ENGINES: dict[str, type] = {"native": ComposeEngine, "docker-rollout": DockerRolloutEngine, "swarm": SwarmEngine}


def engine_for(host: HostConfig) -> Engine:
    """The engine hosts.toml names for this host."""
    return ENGINES[host.engine](host)


__all__ = ["ENGINES", "Engine", "Release", "Tiers", "engine_for"]
