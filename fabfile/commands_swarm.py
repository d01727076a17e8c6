"""Command builders of engine swarm: reading a stack on a Swarm manager, changing it and waiting
for Swarm's verdict on the host (``remote/swarm_tier.sh``). Pure, like :mod:`fabfile.commands`."""

from __future__ import annotations

from dataclasses import dataclass

from .command import Command, host_program
from .commands import Compose
from .config import JOURNAL_TAIL, HostConfig


def stack_state_file(host: HostConfig) -> str:
    """Where the host keeps what zdd last applied of the stack's compose files (relative to ~)."""
    return f".zdd/stacks/{host.stack_name}.json"


def stack_survey(host: HostConfig) -> Command:
    """Read the node, the stack's services, the compose model and the config the proxy's task
    on this node runs, at once (changes nothing)."""
    return host_program(
        "survey.sh",
        "--stack",
        host.stack_name,
        stack_state_file(host),
        str(JOURNAL_TAIL),
        host.proxy.service,
        host.proxy.admin,
        *Compose(host).project_flags(),
        cwd=host.dir,
    )


def image_digests() -> Command:
    """The registry digest of each image on the host by repo:tag (``digest REF DIGEST`` lines,
    told apart from an image listing): what a pull resolved."""
    return Command(("docker", "image", "ls", "--digests", "--format", "digest {{.Repository}}:{{.Tag}} {{.Digest}}"))


@dataclass(frozen=True)
class SwarmChange:
    """One service of a swarm_tier.sh run (see there)."""

    name: str  # the compose service; Swarm's is STACK_NAME
    image: str = ""  # update: REF@DIGEST to run
    ref: str = ""  # update: the compose file's reference, kept as com.docker.stack.image
    sets: tuple[str, ...] = ()  # settings zdd sets (order, failure, rollback-order), or as-update (a rollback)

    def args(self) -> tuple[str, ...]:
        return (self.name, self.image, self.ref, ",".join(self.sets))


SWARM_DONE = {"update": "completed", "rollback": "rollback_completed", "stack": "running 1/1", "move": "completed"}
DRAINED, UNPINNED = "drained", "unpinned"  # swarm_tier.sh move: the node drained, a service's constraint removed


def swarm_tier(
    host: HostConfig,
    action: str,
    changes: list[SwarmChange],
    ceiling: int,
    hashes: str = "",
    key: str = "",
    journal: tuple[str, ...] = (),
    watch: tuple[str, ...] = (),
    replaced: bool = False,
    login: tuple[str, str] | None = None,
    job_run: str = "",
    node: str = "",
) -> Command:
    """Start ``action`` (update, rollback, stack) for these services and wait on the host until
    Swarm has finished each (fabfile/remote/swarm_tier.sh); ``journal`` lines are appended to
    the journal KEY before the change. ``watch``: earlier tiers' services whose update Swarm
    still monitors (their failure fails this run too; without ``replaced`` it waits for them);
    ``replaced``: done once Swarm has replaced the tasks, before its monitor window ends;
    ``job_run`` (with ``replaced``: the last tier of run JOB_RUN): the rest of the wait, Swarm's
    monitor window, goes to a job on the host that holds the deploy lock until Swarm's verdict
    and journals it (event ``settled``). ``node`` (action move: a node's ID): the services move
    off it, start-first, and it is drained once they have.
    ``login`` (server, username): the script logs in to a temporary Docker config for
    ``--with-registry-auth``, with the token zdd sends it as its first line
    (:func:`login_line`), never an argument.

    The arguments, in the order swarm_tier.sh's header gives: ``N [SERVICE IMAGE REF SETS]xN
    [-w SERVICE]... [-r] [-j RUN] [-n NODE] [--login SERVER USER] [-c FILE...]``."""
    args = [
        action,
        host.stack_name,
        str(ceiling),
        stack_state_file(host),
        hashes,
        key,
        "\n".join(journal),
        str(len(changes)),
    ]
    for change in changes:
        args += change.args()
    for name in watch:
        args += ["-w", name]
    if replaced:
        args.append("-r")
        if job_run:
            args += ["-j", job_run]
    if node:
        args += ["-n", node]
    if login:
        args += ["--login", *login]
    if action == "stack":
        for f in host.compose_files:
            args += ["-c", f]
    started = [host.stack_name] if action == "stack" else [c.name for c in changes]
    done = ["replaced" if replaced else SWARM_DONE["update" if "as-update" in c.sets else action] for c in changes]
    dry = [f"started {n}" for n in started] + [f"done {c.name} {how}" for c, how in zip(changes, done)]
    dry += [] if replaced else [f"done {n} completed" for n in watch]
    dry += [f"{DRAINED} {node}"] if action == "move" else []
    return host_program("swarm_tier.sh", *args, cwd=host.dir, dry_run_output=(*dry, "ok after 0s"))


LOGIN_WORD = "login"  # the first word of the line that carries the token to swarm_tier.sh


def login_line(token: str) -> str:
    """What zdd sends swarm_tier.sh for ``--login``: the token, on stdin only."""
    return f"{LOGIN_WORD} {token}"


TASK_WORD = "task"  # the first word of stack_tasks' lines of a task (the health table follows them)


def stack_tasks(host: HostConfig) -> Command:
    """The stack's tasks (every node: ``task NODE|NAME|IMAGE|STATE|ERROR`` lines) and, on this
    node, their containers' health."""
    stack = host.stack_name
    tasks = Command(
        (
            "docker",
            "stack",
            "ps",
            stack,
            "--no-trunc",
            "--filter",
            "desired-state=running",
            "--format",
            TASK_WORD + " {{.Node}}|{{.Name}}|{{.Image}}|{{.CurrentState}}|{{.Error}}",
        )
    )
    health = Command(
        (
            "docker",
            "ps",
            "--filter",
            f"label=com.docker.stack.namespace={stack}",
            "--format",
            "table {{.Names}}\t{{.Status}}",
        )
    )
    return tasks.and_then(health)


def node_tasks(node_id: str) -> Command:
    """The tasks Swarm wants running on a node (one NAME line each: SERVICE.SLOT), every stack's."""
    return Command(
        ("docker", "node", "ps", "--no-trunc", "--filter", "desired-state=running", "--format", "{{.Name}}", node_id)
    )


def service_containers(host: HostConfig, service: str) -> Command:
    """The running containers of a stack service on this node."""
    return Command(
        ("docker", "ps", "--quiet", "--filter", f"label=com.docker.swarm.service.name={host.stack_name}_{service}")
    )
