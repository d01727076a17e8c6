"""The deploy's steps, each a plain function of a :class:`~fabfile.session.Session`.

They read top to bottom as the plan does; ``deploy`` chains them on one connection. The
Fabric tasks in ``fabfile/tasks.py`` are thin wrappers around these.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from contextlib import contextmanager
from typing import Any, Iterator

from . import commands as cmds
from .engines import engine_for
from .plan import HostState, ServicePlan, SurveyError, image_table, make_plan, normalize_ref, parse_survey
from .proxy import STREAM_CLOSE_DELAY_SINCE, caddy_version, without_stream_close_delay
from .rollout import Rollout
from .runner import StepFailed
from .session import Session, secret


# --- validation ------------------------------------------------------------------------------

def survey(s: Session) -> HostState:
    """One read of the host: compose model, config hashes, containers, the proxy."""
    h = s.host
    res = s.r.probe(cmds.survey(h))
    if not res.ok and "===" not in res.stdout:
        raise StepFailed(f"cannot read the host's compose project in {h.dir}: {res.first_error_line()}")
    try:
        return parse_survey(res.stdout, h.proxy.service)
    except SurveyError as e:
        raise StepFailed(f"{e} (in {h.dir})") from None


def configured_services(h) -> list[str]:
    """Every service hosts.toml names for this host: apps, infra, the proxy."""
    return h.app_services + list(h.infra) + ([h.proxy.service] if h.proxy.service else [])


def check_compose(host_services: dict[str, Any], s: Session, only: list[str] | None = None) -> list[str]:
    """Problems that would make the deploy fail half-way, found before anything changes."""
    h = s.host
    problems = []
    wanted = list(only) if only is not None else configured_services(h)
    for name in wanted:
        if name not in host_services:
            problems.append(f"service {name!r} is not in the compose project on the host")
    for name in (only if only is not None else h.app_services):
        svc = host_services.get(name)
        if name not in h.app_services or not svc:
            continue
        if svc.get("container_name"):
            problems.append(f"{name} sets container_name, so it cannot run twice: remove it to roll it")
        if any(p.get("published") for p in svc.get("ports") or [] if isinstance(p, dict)):
            problems.append(f"{name} publishes host ports, so it cannot run twice: use expose and the proxy")
    return problems


def validate(s: Session, only: list[str] | None = None) -> HostState:
    """Check the host's compose project and the proxy config the rollout will rewrite
    against hosts.toml; nothing changes before this passes."""
    with s.report.step("validate") as rec:
        state = survey(s)
        problems = check_compose(state.services, s, only)
        if only is None:
            registry_credentials(s)  # a missing token fails here, before anything changes
        if problems:
            raise StepFailed(f"{len(problems)} problem(s) on the host: " + "; ".join(problems))
        rec.detail = f"{len(state.services)} services in the compose project"
        h = s.host
        if h.proxy.service and h.proxy.drain and h.app_services and state.proxy:
            if state.proxy_config is None:
                raise StepFailed(f"{state.proxy_config_error or 'cannot read the proxy config'}: fix "
                                 f"{h.proxy.config}, or set proxy.drain = false (a proxy that is not Caddy)")
            rec.detail += f"; {h.proxy.config} readable"
            if state.proxy_version:
                rec.detail += f" (Caddy {state.proxy_version})"
            streams_note(s, state)
        if state.proxy_pinned:
            s.notes.append(f"{h.proxy.service} was still routing to container addresses (an unfinished deploy): "
                           "this run restores its config file")
    return state


def streams_note(s: Session, state: HostState) -> None:
    """Say once what proxy reloads will do to websockets (NOTES 9)."""
    version = caddy_version(state.proxy_version)
    if version and version < STREAM_CLOSE_DELAY_SINCE:
        s.notes.append(f"Caddy {state.proxy_version} is older than 2.7: every proxy reload of this deploy closes "
                       "proxied websockets (no stream_close_delay)")
        return
    missing = without_stream_close_delay(state.proxy_config or {}, s.host.app_services)
    if missing:
        s.notes.append(f"{s.host.proxy.config} has no stream_close_delay on reverse_proxy for {', '.join(missing)}: "
                       "the final reload (restore) closes their websockets; zdd's own loads keep them")


# --- the deploy lock -------------------------------------------------------------------------

LOCK_WAIT = 120  # seconds a deploy waits for the previous deploy's restore job on the host


@contextmanager
def locked(s: Session, what: str) -> Iterator[dict]:
    """Hold the host's deploy lock for this project while ``what`` runs (one at a time).
    Set ``handed_over`` in the yielded dict when a host job took the lock over."""
    holder = f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()} {what} since " \
             f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
    res = s.r.change(cmds.lock(s.host, "acquire", holder, LOCK_WAIT), check=False)
    if not res.ok:
        raise StepFailed(f"another deploy holds the lock ({res.first_error_line()}); "
                         f"if it is gone, run: fab -H {s.name} unlock")
    for line in res.stdout.strip().splitlines()[:-1]:
        s.notes.append(line)
    state = {"handed_over": False}
    try:
        yield state
    finally:
        if not state["handed_over"]:
            try:
                s.r.change(cmds.lock(s.host, "release"), check=False)
            except Exception as e:
                s.notes.append(f"could not release the deploy lock ({e}): fab -H {s.name} unlock")


def unlock(s: Session) -> None:
    with s.report.step("unlock") as rec:
        shown = s.r.read(cmds.lock(s.host, "show"), "reading the lock").strip()
        s.r.change(cmds.lock(s.host, "release"), "releasing the lock")
        rec.detail = f"was {shown}"


# --- install-plugin --------------------------------------------------------------------------

def install_plugin(s: Session, source: str | None = None) -> None:
    p = s.host.plugin
    with s.report.step("install-plugin") as rec:
        have = s.r.probe(cmds.plugin_version_ok(p.version, p.sha256))
        if have.ok:
            rec.detail = f"already installed: {have.stdout.strip()}"
            return
        upload = None
        if source:
            if not os.path.isfile(source):
                raise StepFailed(f"--source {source}: no such file")
            upload = f".zdd-upload-docker-rollout-{os.getpid()}"
            if s.r.dry_run:
                s.r.note(f"would upload {source} to ~/{upload} over SFTP")
            else:
                s.cxn.put(source, upload)
        try:
            res = s.r.change(cmds.install_plugin(p.resolved_url, p.sha256, p.version, upload), check=False)
        finally:
            if upload and not s.r.dry_run:
                s.r.change(cmds.remove_file(upload), check=False)
        if not res.ok:
            raise StepFailed(f"install-plugin: {res.first_error_line()}")
        rec.detail = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else f"{p.version}"


# --- pull ------------------------------------------------------------------------------------

def registry_credentials(s: Session) -> tuple[str, str] | None:
    """(username, token) for ``docker login``, from the environment or .env; None without a registry."""
    reg = s.host.registry
    if reg is None:
        return None
    password = secret(reg.password_env)
    if not password:
        raise StepFailed(f"registry {reg.server}: ${reg.password_env} is not set (environment or .env)")
    username = reg.username or secret(reg.username_env) or ""
    if not username:
        raise StepFailed(f"registry {reg.server}: ${reg.username_env} is not set (environment or .env)")
    return username, password


def pull(s: Session, state: HostState) -> dict[str, str]:
    """Log in if a registry is configured and pull every configured service, in one round
    trip; returns the image each reference names now (ref -> image ID)."""
    h = s.host
    names = [n for n in configured_services(h) if n in state.services]
    with s.report.step("pull") as rec:
        creds = registry_credentials(s)
        login = (h.registry.server, creds[0], creds[1], h.registry.password_env) if creds else None
        res = s.r.change(cmds.pull(h, names, login, h.pull_timeout), "docker compose pull", check=False)
        if not res.ok:
            raise StepFailed(f"pull failed: {res.first_error_line()}", (res.stdout + res.stderr).strip()[-2000:])
        if s.r.dry_run:  # nothing was pulled: plan with the images already on the host
            res = s.r.probe(cmds.image_ids())
            s.notes.append("dry run: the plan compares with the images already on the host (nothing was pulled)")
        images = image_table(res.stdout)
        changed = [n for n in names if images.get(normalize_ref(str(state.services[n].get("image", "")))) not in
                   (None, *{c.image for c in state.running(n)}) or
                   len({c.image for c in state.running(n)}) > 1]
        logged = f"logged in to {h.registry.server}; " if creds else ""
        rec.detail = logged + (f"new image for {', '.join(changed)}" if changed else "no new images")
    if h.proxy.service in changed and h.proxy.mode == "reload":
        s.notes.append(f"{h.proxy.service} has a new image: a reload does not switch to it; "
                       "recreate it when an outage is acceptable (proxy.mode = recreate)")
    return images


# --- infra-up --------------------------------------------------------------------------------

def infra_up(s: Session, state: HostState | None = None, images: dict[str, str] | None = None) -> None:
    """``up -d`` the infra services; in a deploy, only those whose image or config changed."""
    with s.report.step("infra-up") as rec:
        infra = list(s.host.infra)
        if not infra:
            rec.status, rec.detail = "skipped", "no infra services configured"
            return
        if state is not None and images is not None:
            plans = make_plan([n for n in infra if n in state.services], state, images)
            infra = [p.name for p in plans if p.roll]
            if not infra:
                rec.status, rec.detail = "skipped", "unchanged: " + ", ".join(p.name for p in plans)
                return
        s.r.change(cmds.Compose(s.host).up(infra), "docker compose up (infra)")
        rec.detail = ", ".join(infra)


# --- the plan and the rollout ----------------------------------------------------------------

def plan(s: Session, state: HostState, images: dict[str, str], names: list[str], force: bool) -> list[ServicePlan]:
    """Roll or skip each app service, with the reason: one line each."""
    with s.report.step("plan") as rec:
        plans = make_plan(names, state, images, force)
        rolling = [p for p in plans if p.roll]
        rec.detail = f"roll {len(rolling)} of {len(plans)}" + (
            f" in {sum(1 for t in s.host.rollout if any(p.name in t for p in rolling))} tier(s)" if rolling else "")
    for p in plans:
        print(f"[{s.name}]   {p.line()}", file=s.r.out)
    return plans


def roll(s: Session, state: HostState, plans: list[ServicePlan], tiers: list[list[str]], lock: dict,
         wait: bool) -> Rollout:
    """Each tier in order through the engine; then drain reports and the proxy restore."""
    engine = engine_for(s.host)
    rollout = Rollout(s, state, engine.name, plans)
    try:
        for tier in tiers:
            engine.roll_tier(rollout, list(tier))
    except BaseException as e:
        interrupted = isinstance(e, KeyboardInterrupt)
        if not interrupted:
            rollout.drain_reports()
        if rollout.needs_restore() or rollout.retiring:
            lock["handed_over"] = rollout.restore(detach=interrupted)
        raise
    rollout.drain_reports()
    if rollout.needs_restore():
        lock["handed_over"] = rollout.restore(detach=not wait)
    if s.host.proxy.mode == "recreate" and any(p.roll for p in plans):
        reload_caddy(s)  # the plan's `--force-recreate caddy`, on request: an outage
    return rollout


def rollout_service(s: Session, name: str, state: HostState) -> None:
    """Replace one app service's containers (always, whatever the plan would say)."""
    with locked(s, f"rollout-service {name}") as lock:
        plans = make_plan([name], state, {}, force=True)
        roll(s, state, plans, [[name]], lock, wait=True)


# --- reload-caddy ----------------------------------------------------------------------------

def reload_caddy(s: Session) -> None:
    p = s.host.proxy
    with s.report.step(f"reload-{p.service or 'proxy'}") as rec:
        if not p.service or p.mode == "none":
            rec.status, rec.detail = "skipped", "no proxy step configured"
            return
        compose = cmds.Compose(s.host)
        if p.mode == "recreate":
            s.r.note(f"proxy.mode = recreate: {p.service} is force-recreated, its ports are closed meanwhile "
                     "(an outage; see NOTES)")
            s.r.change(compose.recreate(p.service), f"recreating {p.service}")
            rec.detail = "recreated (outage while it restarted)"
            return
        ids = s.r.read(compose.ids(p.service), f"finding the {p.service} container").split()
        container = ids[0][:12] if ids else None
        if container is None:
            s.r.change(compose.up([p.service]), f"starting {p.service}")
            rec.detail = "was not running: started"
            return
        s.r.change(cmds.caddy_validate(container, p.config), f"validating {p.config}")
        s.r.change(cmds.caddy_reload(container, p.config, force=True), f"reloading {p.service}")
        s.report.proxy_loads += 1
        rec.detail = f"graceful reload of {p.config}"


# --- prune -----------------------------------------------------------------------------------

def prune(s: Session) -> None:
    with s.report.step("prune") as rec:
        if not s.host.prune:
            rec.status, rec.detail = "skipped", "prune = false"
            return
        res = s.r.change(cmds.image_prune(), "docker image prune")
        last = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
        rec.detail = last or "done"


# --- deploy ----------------------------------------------------------------------------------

def deploy(s: Session, force: bool = False, wait: bool = False) -> None:
    """validate → lock → [install-plugin] → pull → infra-up → plan → tiers → reload-caddy → prune."""
    state = validate(s)
    with locked(s, "deploy") as lock:
        deploy_steps(s, state, lock, force, wait)


def deploy_steps(s: Session, state: HostState, lock: dict, force: bool = False, wait: bool = False) -> None:
    engine = engine_for(s.host)
    if engine.name == "docker-rollout":
        install_plugin(s)
    engine.prepare(s.r)
    images = pull(s, state)
    infra_up(s, state, images)
    plans = plan(s, state, images, s.host.app_services, force)
    rolling = [p for p in plans if p.roll]
    if rolling or state.proxy_pinned:
        roll(s, state, plans, [list(t) for t in s.host.rollout], lock, wait)
    else:
        s.report.skip(f"reload-{s.host.proxy.service or 'proxy'}", "nothing rolled; the proxy runs its config file")
    if rolling:
        prune(s)
    else:
        s.report.skip("prune", "nothing rolled: no image was freed")
