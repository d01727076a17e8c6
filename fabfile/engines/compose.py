"""The Compose engines: a project run by ``docker compose`` on one host, behind Caddy.

Both read the host the same way (``remote/survey.sh``), plan the same way (image, config hash,
count; :mod:`fabfile.plan`) and replace a tier the same way (:mod:`.compose_rollout`); they
differ only in how the new containers start and the old ones stop:

* :class:`ComposeEngine` (``native``): ``docker compose up --no-recreate --scale`` beside the
  old containers, which are stopped and removed once drained;
* :class:`DockerRolloutEngine` (``docker-rollout``): one ``docker rollout`` per service, its
  pre-stop hook holding the old containers until zdd has switched and drained them.
"""

from __future__ import annotations

import time
from typing import Any

from .. import commands as cmds
from .. import journal, locking, steps
from ..config_model import CanaryConfig, WatchConfig
from ..history import journal_lines, rollback_target, short_id
from ..locking import Held
from ..plan import HostState, has_healthcheck, image_table, make_plan, normalize_ref, parse_survey, shared_mounts
from ..proxy import (
    CANARY_SINCE,
    STREAM_CLOSE_DELAY_SINCE,
    caddy_version,
    mixed,
    upstream_hosts,
    without_stream_close_delay,
)
from ..runner import BadInput
from ..session import Session
from .base import Release
from .compose_rollout import ComposeRollout


class ComposeEngine:
    name = "native"
    plugin = False  # the new containers start with compose --scale, not docker-rollout
    interrupted = "interrupted: what carried no traffic yet was removed; the proxy restore finishes on the host"

    def __init__(self, host: Any):
        self.host = host

    # --- reading the host ----------------------------------------------------------------
    def survey(self, s: Session) -> HostState:
        """One read of the host: compose model, config hashes, containers, the proxy."""
        return steps.read_survey(
            s, cmds.survey(s.host), lambda text: parse_survey(text, s.host.proxy.service), "the host's compose project"
        )

    def validate(self, s: Session, only: list[str] | None = None) -> HostState:
        """Check the host's compose project and the proxy config the rollout will rewrite
        against hosts.toml; nothing changes before this passes."""
        h = s.host
        with s.report.step("validate") as rec:
            state = self.survey(s)
            problems = check_compose(state.services, s, only)
            problems += preflight(
                state, s, [n for n in (h.app_services if only is None else only) if n in h.app_services]
            )
            if only is None:
                steps.registry_credentials(s)  # a missing token fails here, before anything changes
            if problems:
                raise BadInput(f"{len(problems)} problem(s) on the host: " + "; ".join(problems))
            rec.detail = f"{len(state.services)} services in the compose project"
            if h.proxy.service and h.proxy.drain and h.app_services and not state.proxy and only is None:
                raise BadInput(
                    f"the proxy {h.proxy.service} is not running, so old containers cannot be drained: "
                    f"start it (docker compose up -d {h.proxy.service}), or set proxy.drain = false"
                )
            if h.proxy.service and h.proxy.drain and h.app_services and state.proxy:
                if state.proxy_config is None:
                    raise BadInput(
                        f"{state.proxy_config_error or 'cannot read the proxy config'}: fix "
                        f"{h.proxy.config}, or set proxy.drain = false (a proxy that is not Caddy)"
                    )
                aliased = alias_problems(state, h, only)
                if aliased:
                    raise BadInput(f"{len(aliased)} problem(s) on the host: " + "; ".join(aliased))
                rec.detail += f"; {h.proxy.config} readable"
                if state.proxy_version:
                    rec.detail += f" (Caddy {state.proxy_version})"
                streams_note(s, state)
            if state.proxy_edited:
                s.notes.append(
                    f"{h.proxy.service} runs another config than {h.proxy.config} (edited, not reloaded?): "
                    "zdd's loads are made from the file, so that edit goes live with this deploy"
                )
            if state.proxy_pinned:
                s.notes.append(
                    f"{h.proxy.service} was still routing to container addresses (an unfinished "
                    "deploy): this run restores its config file"
                )
        return state

    def check_guard(self, s: Session, state: HostState, canary: CanaryConfig, watch: WatchConfig) -> None:
        """Canary steps and a watch need the proxy's routing (drain), Caddy 2.8+ and a
        reverse_proxy per service; a watch keeps the old containers, which docker-rollout stops."""
        if not canary.steps and not watch.seconds:
            return
        what = "canary steps" if canary.steps else "a watch"
        h = s.host
        if watch.seconds and self.plugin:
            raise BadInput('a watch after the switch needs engine "native": docker-rollout stops the old containers')
        if not (h.proxy.service and h.proxy.drain and state.proxy and state.proxy_config is not None):
            raise BadInput(f"{what} need the proxy to route the app services (proxy.service, proxy.drain)")
        if caddy_version(state.proxy_version) < CANARY_SINCE:
            raise BadInput(
                f"{what} need Caddy {'.'.join(map(str, CANARY_SINCE))} or newer (log_append): "
                f"{h.proxy.service} runs {state.proxy_version or 'an unknown version'}"
            )
        shared = [n for n in h.app_services if mixed(state.proxy_config, n)]
        if shared:
            raise BadInput(
                f"{what}: a reverse_proxy in {h.proxy.config} dials {', '.join(shared)} together with "
                "other upstreams, so the weights could not be theirs alone"
            )

    # --- getting ready -------------------------------------------------------------------
    def prepare(self, s: Session) -> None:
        return None

    def pull(self, s: Session, state: HostState) -> dict[str, str]:
        """Log in if a registry is configured and pull every configured service, in one round
        trip; returns the image each reference names now (ref -> image ID)."""
        h = s.host
        names = [n for n in steps.configured_services(h) if n in state.services]
        with s.report.step("pull") as rec:
            listing, logged = steps.fetch_images(s, names)
            images = image_table(listing)
            changed = [
                n
                for n in names
                if images.get(normalize_ref(str(state.services[n].get("image", ""))))
                not in (None, *{c.image for c in state.running(n)})
                or len({c.image for c in state.running(n)}) > 1
            ]
            rec.detail = logged + (f"new image for {', '.join(changed)}" if changed else "no new images")
        if h.proxy.service in changed and h.proxy.mode == "reload":
            s.notes.append(
                f"{h.proxy.service} has a new image: a reload does not switch to it; "
                "recreate it when an outage is acceptable (proxy.mode = recreate)"
            )
        return images

    def infra_up(self, s: Session, state: HostState | None = None, images: dict[str, str] | None = None) -> Any:
        """``up -d`` the infra services; in a deploy, only those whose image or config changed."""
        with s.report.step("infra-up") as rec:
            infra = list(s.host.infra)
            if not infra:
                rec.status, rec.detail = "skipped", "no infra services configured"
                return state
            if state is not None and images is not None:
                plans = make_plan([n for n in infra if n in state.services], state, images)
                infra = [p.name for p in plans if p.roll]
                if not infra:
                    rec.status, rec.detail = "skipped", "unchanged: " + ", ".join(p.name for p in plans)
                    return state
            s.r.change(cmds.Compose(s.host).up(infra), "docker compose up (infra)")
            rec.detail = ", ".join(infra)
        return state

    # --- what rolls, and rolling it ------------------------------------------------------
    def images_named(self, s: Session, state: HostState) -> dict[str, str]:
        return {n: str(state.services[n].get("image") or "") for n in s.host.app_services if n in state.services}

    def plan(self, s: Session, state: HostState, images: dict[str, str], names: list[str], force: bool) -> list:
        return steps.planned(s, lambda: make_plan(names, state, images, force))

    def plan_event(self, run: str, state: HostState, release: Release) -> dict:
        return journal.plan_event(run, state, release.plans, release.images)

    def tiers(self, s: Session, state: HostState, release: Release, held: Held) -> ComposeRollout:
        return ComposeRollout(s, state, release.plans, held, self.plugin, release.canary, release.watch, release.wait)

    def one_service(self, s: Session, state: HostState, name: str) -> Release:
        return Release(make_plan([name], state, {}, force=True), {}, [[name]])

    def recover(self, s: Session, state: HostState, own: str) -> HostState:
        return locking.recover(s, state, own, self.survey)

    # --- rollback ------------------------------------------------------------------------
    def rollback_target(self, s: Session, state: HostState, to: str | None) -> tuple[str, Any]:
        """The images of the run before the last successful one (or ``to``), still on the host."""
        target = rollback_target(locking.read_runs(s, state), to)
        # each service's image reference as the compose files name it NOW (a tag pinned in .env
        # may have moved since that run): the kept image is tagged as that, so the plan rolls it
        named = {name: str(svc.get("image", "")) for name, svc in state.services.items() if svc.get("image")}
        refs = {name: normalize_ref(ref) for name, ref in named.items()}
        by_digest = sorted(n for n, r in named.items() if "@" in r and n in target.images_after())
        if by_digest:
            raise BadInput(
                f"{', '.join(by_digest)}: the compose files name the image by digest, and a rollback tags "
                "the kept image: name it by a tag (e.g. image: app:${TAG}) to roll back"
            )
        wanted = {
            name: image
            for name, image in target.images_after().items()
            if name in s.host.app_services and refs.get(name)
        }
        present = s.r.probe(cmds.image_inspect_ids(list(wanted.values())))
        have = set(present.stdout.split())
        gone = [f"{n} ({short_id(i)})" for n, i in wanted.items() if i not in have]
        if gone:
            raise BadInput(
                f"the images of run {target.run} are gone for {', '.join(gone)}: "
                f"prune keeps those of the last {s.host.keep_images} runs (keep_images)"
            )
        return f"rollback to {target.run}", (target.run, {n: (refs[n], i) for n, i in wanted.items()})

    def rollback_release(self, s: Session, state: HostState, target: Any) -> Release:
        """Tag the kept images as each service's image again; then they roll like a deploy."""
        run, wanted = target
        with s.report.step("retag") as rec:
            tags = [cmds.tag(image, ref) for ref, image in wanted.values()]
            if tags:
                s.r.change(tags[0].and_then(*tags[1:]), "docker tag")
            rec.detail = f"{', '.join(ref for ref, _ in wanted.values())} → the images of run {run}"
        images = {normalize_ref(ref): image for ref, image in wanted.values()}
        self.prepare(s)
        state = self.infra_up(s, state, images)
        plans = self.plan(s, state, images, s.host.app_services, False)
        return Release(plans, images, [list(t) for t in s.host.rollout])

    # --- nodes ---------------------------------------------------------------------------
    def node_target(self, s: Session, state: HostState, node: str) -> Any:
        raise BadInput(f"drain-node {node}: engine compose runs on this one host, which has no nodes to drain")

    def drain_release(self, s: Session, state: HostState, target: Any) -> Release:
        raise BadInput("drain-node: engine compose has no nodes")

    # --- the proxy and what runs ---------------------------------------------------------
    def reload_proxy(self, s: Session) -> None:
        p = s.host.proxy
        if p.mode == "recreate":
            steps.recreate_proxy(s)
            return
        with s.report.step(steps.proxy_step(s)) as rec:
            if steps.no_proxy_step(s, rec):
                return
            compose = cmds.Compose(s.host)
            ids = s.r.read(compose.ids(p.service), f"finding the {p.service} container").split()
            if not ids:
                s.r.change(compose.up([p.service]), f"starting {p.service}")
                rec.detail = "was not running: started"
                return
            steps.reload_in(s, ids[0][:12])
            rec.detail = f"graceful reload of {p.config}"

    def status(self, s: Session) -> list[str]:
        state = self.validate(s, only=[])
        return status_lines(s, state, locking.read_runs(s, state))


class DockerRolloutEngine(ComposeEngine):
    name = "docker-rollout"
    plugin = True

    def prepare(self, s: Session) -> None:
        """docker-rollout at the pinned version (installed when missing; a dry run says so)."""
        steps.install_plugin(s)


# --- validation ------------------------------------------------------------------------------


def preflight(state: HostState, s: Session, names: list[str]) -> list[str]:
    """Problems of app services that would make the overlap unsafe (the seed's checks);
    shared writable mounts are a note, not a problem."""
    problems = []
    for name in names:
        if name not in state.services:
            continue
        if not has_healthcheck(name, state) and s.host.service(name).no_healthcheck_wait is None:
            problems.append(
                f"{name} has no healthcheck, so nothing says when a new container is ready: add one, "
                f"or set services.{name}.no_healthcheck_wait (seconds of running that count as ready)"
            )
        mounts = shared_mounts(name, state)
        if mounts:
            s.notes.append(
                f"{name}: old and new containers share {', '.join(mounts)} while both run "
                "(a database file there, e.g. SQLite, sees two writers)"
            )
    return problems


def check_compose(host_services: dict[str, Any], s: Session, only: list[str] | None = None) -> list[str]:
    """Problems that would make the deploy fail half-way, found before anything changes."""
    h = s.host
    problems = []
    wanted = list(only) if only is not None else steps.configured_services(h)
    for name in wanted:
        if name not in host_services:
            problems.append(f"service {name!r} is not in the compose project on the host")
    for name in only if only is not None else h.app_services:
        svc = host_services.get(name)
        if name not in h.app_services or not svc:
            continue
        if svc.get("container_name"):
            problems.append(f"{name} sets container_name, so it cannot run twice: remove it to roll it")
        if any(p.get("published") for p in svc.get("ports") or [] if isinstance(p, dict)):
            problems.append(f"{name} publishes host ports, so it cannot run twice: use expose and the proxy")
    return problems


def alias_problems(state: HostState, h: Any, only: list[str] | None = None) -> list[str]:
    """App services the proxy config reaches through a network alias: zdd pins, switches and
    drains only upstreams that dial the service by its name, so these would be neither drained
    nor switched (their old containers stopped with requests in flight)."""
    dialled = upstream_hosts(state.proxy_config or {})
    problems = []
    for name in only if only is not None else h.app_services:
        if not h.service(name).drain:
            continue
        for net, spec in ((state.services.get(name) or {}).get("networks") or {}).items():
            for alias in (spec or {}).get("aliases") or [] if isinstance(spec, dict) else []:
                if alias in dialled and alias != name:
                    problems.append(
                        f"{h.proxy.config} reaches {name} through its network alias {alias!r} "
                        f"({net}): zdd drains only upstreams that name the service; dial {name}:PORT, "
                        f"or set services.{name}.drain = false"
                    )
    return problems


def streams_note(s: Session, state: HostState) -> None:
    """Say once what proxy reloads will do to websockets (NOTES 9)."""
    version = caddy_version(state.proxy_version)
    if version and version < STREAM_CLOSE_DELAY_SINCE:
        s.notes.append(
            f"Caddy {state.proxy_version} is older than 2.7: every proxy reload of this deploy closes "
            "proxied websockets (no stream_close_delay)"
        )
        return
    missing = without_stream_close_delay(state.proxy_config or {}, s.host.app_services)
    if missing:
        s.notes.append(
            f"{s.host.proxy.config} has no stream_close_delay on reverse_proxy for {', '.join(missing)}: "
            "the final reload (restore) closes their websockets; zdd's own loads keep them"
        )


def status_lines(s: Session, state: HostState, runs: list[journal.Run]) -> list[str]:
    """Per service its containers (id, state, health, image, age), the proxy's routing, the
    lock and the last run."""
    lines = []
    now = time.time()
    for name in steps.configured_services(s.host):
        cs = [c for c in state.containers if c.service == name]
        if not cs:
            lines.append(f"{name}: no container")
        for c in cs:
            age = f"{int(now - c.started_at)}s" if c.started_at else "?"
            lines.append(f"{name}: {c.id} {c.state} {c.health} image {short_id(c.image)} up {age}")
    if state.proxy:
        routing = (
            "pinned to container addresses by an unfinished run"
            if state.proxy_pinned
            else "by service name (its config file)"
        )
        lines.append(f"proxy {s.host.proxy.service}: routes {routing}")
    return lines + journal_lines(state, runs)
