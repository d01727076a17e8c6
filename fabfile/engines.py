"""Rollout engines: how the containers of one tier of app services are replaced.

The interface is two methods, so engines read side by side:

* ``prepare(r)`` – checks before anything changes (is the engine's tool there?);
* ``roll_tier(rollout, names)`` – replace the tier's services that the plan rolls, leaving
  a whole set serving on failure (raise StepFailed).

The Compose engines share one replace sequence (:mod:`fabfile.rollout`: pin, start, health,
switch, drain, retire, restore); they differ only in how new containers start and old ones
stop, which ``fabfile/remote/tier.sh`` does on the host:

* :class:`NativeEngine` – built in: ``docker compose up --no-recreate --scale`` starts the new
  containers beside the old ones; old ones are stopped and removed once drained.
* :class:`DockerRolloutEngine` – the docker-rollout CLI plugin (wowu/docker-rollout), as the
  user's plan has it: one ``docker rollout`` per service, its pre-stop hook holding the old
  containers until zdd has switched the proxy and drained them; then docker-rollout stops them.

The Swarm engine needs no replace sequence of zdd's: Swarm starts each new task, waits for its
healthcheck and takes the old one out of service discovery before stopping it. Its tiers are
:class:`fabfile.swarm.Updates` (``docker service update`` of the tier's services, and a wait
on the host for Swarm's verdict on each):

* :class:`SwarmEngine` – the host is a Swarm manager; the compose files are a stack's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from . import commands as cmds
from .config import HostConfig
from .rollout import Rollout
from .runner import Runner, StepFailed

if TYPE_CHECKING:
    from .swarm import Updates


class Engine(Protocol):
    name: str

    def prepare(self, r: Runner) -> None: ...

    def roll_tier(self, rollout: Rollout | Updates, names: list[str]) -> None: ...


class NativeEngine:
    name = "native"

    def __init__(self, host: HostConfig):
        self.host = host

    def prepare(self, r: Runner) -> None:
        return None

    def roll_tier(self, rollout: Rollout, names: list[str]) -> None:
        rollout.tier(names)


class DockerRolloutEngine:
    name = "docker-rollout"

    def __init__(self, host: HostConfig):
        self.host = host

    def prepare(self, r: Runner) -> None:
        res = r.probe(cmds.plugin_version_ok(self.host.plugin.version, self.host.plugin.sha256))
        if not res.ok and r.dry_run:
            r.note(f"docker-rollout {self.host.plugin.version} is not installed yet: install-plugin would install it")
        elif not res.ok:
            raise StepFailed(f"docker-rollout {self.host.plugin.version} is not installed on the host "
                             f"({res.first_error_line()}): run the install-plugin task")

    def roll_tier(self, rollout: Rollout, names: list[str]) -> None:
        rollout.tier(names)


class SwarmEngine:
    name = "swarm"

    def __init__(self, host: HostConfig):
        self.host = host

    def prepare(self, r: Runner) -> None:
        return None  # validate has found a Swarm manager; Swarm needs no tool of ours

    def roll_tier(self, updates: Updates, names: list[str]) -> None:
        updates.tier(names)


ENGINES: dict[str, type] = {"native": NativeEngine, "docker-rollout": DockerRolloutEngine, "swarm": SwarmEngine}


def engine_for(host: HostConfig) -> Engine:
    return ENGINES[host.engine](host)
