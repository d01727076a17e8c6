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
from .proxy import proxy_container, read_config
from .runner import StepFailed
from .session import Session, secret


# --- validation ------------------------------------------------------------------------------

def compose_services(s: Session) -> dict[str, Any]:
    raw = s.r.read(cmds.Compose(s.host).config_json(), "docker compose config")
    try:
        return json.loads(raw).get("services", {})
    except json.JSONDecodeError:
        raise StepFailed("docker compose config did not print JSON") from None


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


def validate(s: Session, only: list[str] | None = None) -> dict[str, Any]:
    """Check the host's compose project (and the proxy config the drain will rewrite)
    against hosts.toml; nothing changes before this passes."""
    with s.report.step("validate") as rec:
        services = compose_services(s)
        problems = check_compose(services, s, only)
        if only is None:
            registry_credentials(s)  # a missing token fails here, before anything changes
        if problems:
            raise StepFailed(f"{len(problems)} problem(s) on the host: " + "; ".join(problems))
        rec.detail = f"{len(services)} services in the compose project"
        h = s.host
        if h.proxy.service and h.proxy.drain and h.app_services:  # both engines drain at the proxy
            container = proxy_container(s.r, h)
            if container:
                read_config(s.r, h, container)
                rec.detail += f"; {h.proxy.config} readable"
    return services


# --- the deploy lock -------------------------------------------------------------------------

@contextmanager
def locked(s: Session, what: str) -> Iterator[None]:
    """Hold the host's deploy lock for this project while ``what`` runs (one at a time)."""
    holder = f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()} {what} since " \
             f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
    res = s.r.change(cmds.lock(s.host, "acquire", holder), check=False)
    if not res.ok:
        raise StepFailed(f"another deploy holds the lock ({res.first_error_line()}); "
                         f"if it is gone, run: fab -H {s.name} unlock")
    try:
        yield
    finally:
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

def normalize_ref(ref: str) -> str:
    """An image reference as ``docker image ls`` names it (repo:tag, docker.io implied)."""
    name = ref.partition("@")[0]
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        name += ":latest"
    for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/library/", "index.docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    if name.startswith("library/"):
        name = name[len("library/"):]
    return name


def image_table(text: str) -> dict[str, str]:
    table = {}
    for line in text.splitlines():
        ref, _, iid = line.strip().partition(" ")
        if iid:
            table[ref] = iid
    return table


def changed_images(services: dict[str, Any], names: list[str], before: dict[str, str], after: dict[str, str]) -> list[str]:
    changed = []
    for name in names:
        image = (services.get(name) or {}).get("image")
        if not image:
            continue
        ref = normalize_ref(image)
        if after.get(ref) and before.get(ref) != after.get(ref):
            changed.append(name)
    return changed


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


def login(s: Session) -> str:
    creds = registry_credentials(s)
    if creds is None:
        return ""
    reg = s.host.registry
    s.r.change(cmds.login(reg.server, creds[0], creds[1], reg.password_env), f"docker login {reg.server}")
    return f"logged in to {reg.server}; "


def pull(s: Session, services: dict[str, Any] | None = None) -> list[str]:
    """Log in if a registry is configured, pull every configured service, report what changed."""
    h = s.host
    names = configured_services(h)
    with s.report.step("pull") as rec:
        services = services if services is not None else compose_services(s)
        names = [n for n in names if n in services]
        logged = login(s)
        before = image_table(s.r.read(cmds.image_ids(), "listing images"))
        s.r.change(cmds.Compose(h).pull(names), "docker compose pull")
        after = image_table(s.r.read(cmds.image_ids(), "listing images")) if not s.r.dry_run else before
        changed = changed_images(services, names, before, after)
        rec.detail = logged + (f"new image for {', '.join(changed)}" if changed else "no new images")
    return changed


# --- infra-up --------------------------------------------------------------------------------

def infra_up(s: Session) -> None:
    with s.report.step("infra-up") as rec:
        if not s.host.infra:
            rec.status, rec.detail = "skipped", "no infra services configured"
            return
        s.r.change(cmds.Compose(s.host).up(list(s.host.infra)), "docker compose up (infra)")
        rec.detail = ", ".join(s.host.infra)


# --- rollout-service -------------------------------------------------------------------------

def rollout_service(s: Session, name: str, engine=None) -> None:
    engine = engine or engine_for(s.host)
    with s.report.step(f"rollout {name}") as rec:
        rec.detail = engine.rollout(s.r, s.host.service(name))


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
        container = proxy_container(s.r, s.host)
        if container is None:
            s.r.change(compose.up([p.service]), f"starting {p.service}")
            rec.detail = "was not running: started"
            return
        s.r.change(cmds.caddy_validate(container, p.config), f"validating {p.config}")
        s.r.change(cmds.caddy_reload(container, p.config, force=True), f"reloading {p.service}")
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

def deploy(s: Session) -> None:
    """validate → lock → [install-plugin] → pull → infra-up → tiers → reload-caddy → prune."""
    services = validate(s)
    with locked(s, "deploy"):
        deploy_steps(s, services)


def deploy_steps(s: Session, services: dict[str, Any]) -> None:
    engine = engine_for(s.host)
    if engine.name == "docker-rollout":
        install_plugin(s)
    with s.report.step("engine") as rec:
        engine.prepare(s.r)
        rec.detail = engine.name
    changed = pull(s, services)
    if s.host.proxy.service in changed and s.host.proxy.mode == "reload":
        s.notes.append(f"{s.host.proxy.service} has a new image: a reload does not switch to it; "
                       "recreate it when an outage is acceptable (proxy.mode = recreate)")
    infra_up(s)
    for tier in s.host.rollout:
        for name in tier:
            rollout_service(s, name, engine)
    reload_caddy(s)
    prune(s)
