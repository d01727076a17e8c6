"""Command builders: pure functions from configuration to the commands run on a host.

Nothing here talks to a host. Every builder returns a :class:`Command` (an argv plus the
directory to run it in and what to feed its stdin); :meth:`Command.render` is the only
place a shell string is made, and it quotes every value. So the whole plan can be printed
as a dry run or asserted in a unit test without SSH.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from .command import Command, Stdin, host_program, host_script, quote_path  # noqa: F401  (used by callers too)
from .config import JOURNAL_TAIL, HostConfig
from .plan import HOOK_LABEL, ServicePlan

# --- docker compose -----------------------------------------------------------------------


class Compose:
    """``docker compose`` commands for one host's project."""

    def __init__(self, host: HostConfig):
        self.host = host

    def project_flags(self) -> tuple[str, ...]:
        """``-f FILE… [-p NAME] [--env-file FILE]``: understood by compose and docker-rollout."""
        argv: list[str] = []
        for f in self.host.compose_files:
            argv += ["-f", f]
        if self.host.project_name:
            argv += ["-p", self.host.project_name]
        if self.host.env_file:
            argv += ["--env-file", self.host.env_file]
        return tuple(argv)

    def base(self) -> tuple[str, ...]:
        return ("docker", "compose", *self.project_flags())

    def _cmd(self, *args: str, stdin: Stdin | None = None) -> Command:
        return Command(self.base() + args, cwd=self.host.dir, stdin=stdin)

    def up(self, services: list[str]) -> Command:
        """Start (or update) services without touching their dependencies."""
        return self._cmd("up", "--detach", "--no-deps", *services)

    def ids(self, service: str, running_only: bool = True) -> Command:
        args = ["ps", "--quiet"]
        if running_only:
            args += ["--status", "running"]
        return self._cmd(*args, service)

    def recreate(self, service: str) -> Command:
        return self._cmd("up", "--detach", "--no-deps", "--force-recreate", service)


# --- plain docker -------------------------------------------------------------------------


def exec_(container: str, *argv: str, stdin: Stdin | None = None) -> Command:
    flags = ("--interactive",) if stdin is not None else ()
    return Command(("docker", "exec", *flags, container, *argv), stdin=stdin)


def image_ids() -> Command:
    return Command(("docker", "image", "ls", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"))


def image_prune() -> Command:
    return Command(("docker", "image", "prune", "--force"))


def lock(
    key: str, action: str, holder: str = "", arg: str = "", lines: tuple[str, ...] = (), stale: int | None = None
) -> Command:
    """The project's deploy lock on the host (KEY from the survey): ``acquire`` waits up to
    ``arg`` s for the previous deploy's restore job and takes over a deploy's lock not renewed
    for ``stale`` s (required: ``HostConfig.lock_stale``), ``takeover`` replaces holder ``arg``,
    ``unlock`` frees it. ``lines`` are appended to the project's journal with it."""
    if action == "acquire":
        if stale is None:
            raise ValueError("lock acquire needs stale (the host's lock_stale)")
        argv = [action, key, holder, arg or "0", str(stale)]
    elif action == "takeover":
        argv = [action, key, holder, arg]
    elif action == "unlock":
        argv = [action, key]
    else:
        raise ValueError(f"unknown lock action {action!r}")
    return dataclasses.replace(
        host_program("lock.sh", *argv, stdin=_journal_stdin(lines)),
        deadline=int(arg) + 60 if action == "acquire" and arg.isdigit() else None,
    )


def _journal_stdin(lines: tuple[str, ...]) -> Stdin | None:
    return Stdin("".join(line + "\n" for line in lines), "journal lines") if lines else None


def journal_read(key: str, last: int) -> Command:
    """The project's journal (its last ``last`` lines)."""
    return Command(("tail", "-n", str(last), f".zdd/journal/{key}.jsonl"), cwd="~")


def finish(
    key: str, holder: str, prune: bool, keep: int, run: str, images: dict[str, str], lines: tuple[str, ...]
) -> Command:
    """The end of a run: journal lines, keep tags, prune, release the lock if still held."""
    return dataclasses.replace(
        host_program(
            "finish.sh",
            key,
            holder,
            "1" if prune else "0",
            str(keep),
            run,
            *(f"{svc}={image}" for svc, image in images.items() if image),
            stdin=_journal_stdin(lines),
        ),
        deadline=900 if prune else None,
    )  # docker image prune on a big host takes a while


def recover(
    host: HostConfig, key: str, run: str, tiers: list[tuple[str, bool, list[str], list[str], list[str], int]]
) -> Command:
    """Finish or undo the tiers of an interrupted run: (pid, switched, services, old ids, new ids
    as journaled, its start in epoch seconds) each."""
    args = [key, run, str(len(tiers))]
    for pid, switched, services, old, new, since in tiers:
        args += [pid, "1" if switched else "", ",".join(services), ",".join(old), ",".join(new), str(since)]
    return dataclasses.replace(
        host_program("recover.sh", *args, *Compose(host).project_flags(), cwd=host.dir),
        deadline=host.proxy.drain_timeout + 900,
    )  # it may wait for a tier.sh's drain


def image_inspect_ids(images: list[str]) -> Command:
    """The IDs of those of ``images`` that are on the host (one line each)."""
    return Command(("docker", "image", "inspect", "--format", "{{.Id}}", *images))


def tag(image: str, ref: str) -> Command:
    return Command(("docker", "tag", image, ref))


def install_plugin(url: str, sha256: str, version: str, uploaded: str | None = None) -> Command:
    """Install docker-rollout from ``url``, or from a copy already ``uploaded`` to the host."""
    return host_script("install_plugin.sh", url, sha256, version, *([uploaded] if uploaded else []))


def remove_file(path: str) -> Command:
    return Command(("rm", "-f", path))


def plugin_version_ok(version: str, sha256: str) -> Command:
    """Is exactly the pinned docker-rollout file installed (sha256), reporting ``version``?"""
    return host_script("plugin_version.sh", version, sha256)


# --- Caddy inside its container -----------------------------------------------------------


def caddy_validate(container: str, config: str) -> Command:
    argv = ["caddy", "validate", "--config", config]
    if not config.endswith(".json"):
        argv += ["--adapter", "caddyfile"]
    return exec_(container, *argv)


def caddy_reload(container: str, config: str, force: bool = True) -> Command:
    """Graceful reload from the config file (``--force`` even when it is unchanged)."""
    argv = ["caddy", "reload", "--config", config]
    if not config.endswith(".json"):
        argv += ["--adapter", "caddyfile"]
    if force:
        argv.append("--force")
    return exec_(container, *argv)


# --- one deploy's host-side programs (fabfile/remote/*.sh, run with `sh -c`) --------------


def survey(host: HostConfig) -> Command:
    """Read everything a deploy needs of the host at once (changes nothing)."""
    p = host.proxy
    return host_program(
        "survey.sh",
        p.service or "",
        p.config,
        p.admin,
        host.project_name,
        str(JOURNAL_TAIL),
        *Compose(host).project_flags(),
        cwd=host.dir,
    )


def pull(host: HostConfig, services: list[str], credentials: tuple[str, str, str, str] | None, limit: int) -> Command:
    """Log in (to a temporary Docker config unless ``registry.keep_login``), pull, list the
    images: one round trip. ``credentials`` is (server, username, token, token_env); the token
    goes on stdin only."""
    server, username = (credentials[0], credentials[1]) if credentials else ("", "")
    keep = "1" if host.registry is not None and host.registry.keep_login else "0"
    stdin = Stdin(credentials[2], f"${credentials[3]} (secret, on stdin)", secret=True) if credentials else None
    return dataclasses.replace(
        host_program(
            "pull.sh",
            keep,
            server,
            username,
            str(limit),
            *services,
            "--",
            *Compose(host).project_flags(),
            cwd=host.dir,
            stdin=stdin,
        ),
        deadline=limit + 60,
    )


@dataclass(frozen=True)
class TierService:
    """One service of a tier as tier.sh takes it."""

    name: str
    target: int  # new containers to start
    health_timeout: int
    stop_timeout: int | None
    old: tuple[str, ...]  # short ids of the running containers it replaces
    held: tuple[str, ...]  # proxy upstream addresses to watch drain (name:port, ip:port)
    hook: str = ""  # the user's pre-stop hook, run in each old container before it stops

    @classmethod
    def of(cls, host: HostConfig, p: ServicePlan, held: list[str], plugin: bool) -> TierService:
        """A service's plan as tier.sh takes it (``plugin``: docker-rollout starts it)."""
        svc = host.service(p.name)
        hook, target = svc.pre_stop_hook, p.target
        if plugin and p.old:
            hook = hook or p.old[0].labels.get(HOOK_LABEL, "")
            target = len(p.old)  # docker-rollout doubles the running count
        return cls(p.name, target, svc.health_timeout, svc.stop_timeout, tuple(c.id for c in p.old), tuple(held), hook)

    def args(self) -> tuple[str, ...]:
        return (
            self.name,
            str(self.target),
            str(self.health_timeout),
            "" if self.stop_timeout is None else str(self.stop_timeout),
            ",".join(self.old),
            ",".join(self.held),
            self.hook,
        )


def tier(
    host: HostConfig,
    plugin: bool,
    proxy: str,
    services: list[TierService],
    proxy_networks: tuple[str, ...] = (),
    key: str = "project",
    run: str = "run",
) -> Command:
    """Replace a tier's containers in one conversation with zdd (see fabfile/remote/tier.sh):
    ``plugin`` starts each running service's new containers with ``docker rollout`` (engine
    docker-rollout), else all with ``docker compose up --scale``."""
    grace = max((host.service(s.name).stream_grace for s in services), default=host.proxy.stream_grace)
    nocheck = max(
        (host.service(s.name).no_healthcheck_wait or host.no_healthcheck_wait for s in services),
        default=host.no_healthcheck_wait,
    )
    args = [
        "plugin" if plugin else "compose",
        proxy,
        host.proxy.admin,
        str(host.proxy.drain_timeout),
        str(nocheck),
        str(grace),
        key,
        run,
        str(len(services)),
    ]
    for svc in services:
        args += svc.args()
    net = proxy_networks[0] if proxy_networks else "net"
    dry = ["pid 0", "pinned"]
    for svc in services:
        n = len(svc.old) if plugin and svc.old else svc.target
        dry += [f"new {svc.name} <new-{svc.name}-{i + 1}> {net}=<ip-of-new-{svc.name}-{i + 1}>" for i in range(n)]
    dry += ["healthy after 0s", "switched", "drained after 0s, 0 in flight at most", "retired"]
    return host_program(
        "tier.sh",
        *args,
        *Compose(host).project_flags(),
        cwd=host.dir,
        stdin=Stdin("", "a conversation with zdd: pin/switch configs"),
        dry_run_output=tuple(dry),
    )


def restore(
    host: HostConfig, key: str, proxy: str, old: list[str], detach: bool, timeout: int, log: str = ""
) -> Command:
    """Once ``old`` containers are gone: reload the proxy's config file (detached: a job on
    the host does it and frees the lock), then remove ``log`` (the access log of zdd's configs)."""
    return dataclasses.replace(
        host_program(
            "restore.sh",
            "detach" if detach else "wait",
            key,
            proxy,
            host.proxy.config,
            str(timeout),
            log or "-",
            *old,
            cwd=host.dir,
            dry_run_output=("restore queued" if detach else f"restored {host.proxy.config}",),
        ),
        deadline=None if detach else timeout + 60,
    )


def signal_process(pid: str, sig: str = "TERM") -> Command:
    return Command(("kill", f"-{sig}", pid))


def tier_failure_detail(lines: list[str]) -> str:
    """The health log and last log lines the host sent for a failed tier, readable."""
    out: list[str] = []
    for line in lines:
        word, _, rest = line.partition(" ")
        if word == "detail-health":
            name, _, health = rest.partition(" ")
            out.append(f"--- {name.lstrip('/')}")
            try:
                h = json.loads(health) if health and health != "null" else None
            except json.JSONDecodeError:
                h = None
            if h:
                out.append(f"health: {h.get('Status')}, failing streak {h.get('FailingStreak')}")
                for entry in (h.get("Log") or [])[-3:]:
                    text = (entry.get("Output") or "").strip().replace("\n", " ")[:200]
                    out.append(f"  check exit {entry.get('ExitCode')}: {text}")
            out.append("last log lines:")
        elif word == "detail-log":
            out.append(f"  {rest.partition(' ')[2]}")
        elif word == "detail-rollout":
            out.append(f"  docker-rollout {rest}")
    return "\n".join(out[-80:])
