"""Steps and pieces of steps that every engine uses, each a plain function of a
:class:`~fabfile.session.Session`: reading a survey, the registry login and pull, the plan's
lines, a graceful proxy reload, prune, install-plugin. The engines (``fabfile/engines/``)
build their steps from these; nothing here knows which engine runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from typing import Any

import paramiko

from . import commands as cmds
from .plan import SurveyError
from .runner import BadInput, StepFailed
from .session import Session, secret


def read_survey(s: Session, cmd: cmds.Command, parse: Callable[[str], Any], what: str) -> Any:
    """Run a survey (sections ``=== NAME RC``) and parse it; BadInput when it is unreadable."""
    res = s.r.probe(cmd)
    if not res.ok and "===" not in res.stdout:
        raise BadInput(f"cannot read {what} in {s.host.dir}: {res.first_error_line()}")
    try:
        return parse(res.stdout)
    except SurveyError as e:
        raise BadInput(f"{e} (in {s.host.dir})") from None


def configured_services(h: Any) -> list[str]:
    """Every service hosts.toml names for this host: apps, infra, the proxy."""
    return h.app_services + list(h.infra) + ([h.proxy.service] if h.proxy.service else [])


def registry_credentials(s: Session) -> tuple[str, str] | None:
    """(username, token) for ``docker login``, from the environment or .env; None without a registry."""
    reg = s.host.registry
    if reg is None:
        return None
    password = secret(reg.password_env)
    if not password:
        raise BadInput(f"registry {reg.server}: ${reg.password_env} is not set (environment or .env)")
    username = reg.username or secret(reg.username_env) or ""
    if not username:
        raise BadInput(f"registry {reg.server}: ${reg.username_env} is not set (environment or .env)")
    return username, password


def fetch_images(s: Session, names: list[str], then: tuple[cmds.Command, ...] = ()) -> tuple[str, str]:
    """Log in if a registry is configured and pull ``names``, then list the images (and run
    ``then``), in one round trip: that listing's text, and what to say of the login."""
    h = s.host
    creds = registry_credentials(s)
    login = (h.registry.server, creds[0], creds[1], h.registry.password_env) if creds and h.registry else None
    res = s.r.change(cmds.pull(h, names, login, h.pull_timeout).and_then(*then), "docker compose pull", check=False)
    if not res.ok:
        raise StepFailed(f"pull failed: {res.first_error_line()}", (res.stdout + res.stderr).strip()[-2000:])
    if s.r.dry_run:  # nothing was pulled: plan with the images already on the host
        res = s.r.probe(cmds.image_ids().and_then(*then))
        s.notes.append("dry run: the plan compares with the images already on the host (nothing was pulled)")
    return res.stdout, next((ln + "; " for ln in res.stdout.splitlines() if ln.startswith("logged in")), "")


def rolls_in_tiers(s: Session, plans: list) -> str:
    """The plan step's summary: how many services roll, in how many of the host's tiers."""
    rolling = [p for p in plans if p.roll]
    tiers = sum(1 for t in s.host.rollout if any(p.name in t for p in rolling))
    return f"roll {len(rolling)} of {len(plans)}" + (f" in {tiers} tier(s)" if rolling else "")


def planned(s: Session, decide: Callable[[], list], summary: Callable[[list], str] | None = None) -> list:
    """The plan step: ``decide()`` rolls or skips each service; a summary (``summary(plans)``, by
    default how many roll in how many of the host's tiers), then one line each."""
    with s.report.step("plan") as rec:
        plans = decide()
        rec.detail = (summary or partial(rolls_in_tiers, s))(plans)
    for p in plans:
        print(f"[{s.name}]   {p.line()}", file=s.r.out)
    return plans


def proxy_step(s: Session) -> str:
    """The name of the proxy's step (``reload-caddy``)."""
    return f"reload-{s.host.proxy.service or 'proxy'}"


def no_proxy_step(s: Session, rec: Any) -> bool:
    """Skip the proxy step, saying so, when hosts.toml configures none."""
    if s.host.proxy.service and s.host.proxy.mode != "none":
        return False
    rec.status, rec.detail = "skipped", "no proxy step configured"
    return True


def reload_in(s: Session, container: str) -> None:
    """``caddy validate`` and a graceful ``caddy reload --force`` of the proxy's config file."""
    p = s.host.proxy
    s.r.change(cmds.caddy_validate(container, p.config), f"validating {p.config}")
    s.r.change(cmds.caddy_reload(container, p.config, force=True), f"reloading {p.service}")
    s.report.proxy_loaded()


def prune(s: Session) -> None:
    with s.report.step("prune") as rec:
        if not s.host.prune:
            rec.status, rec.detail = "skipped", "prune = false"
            return
        res = s.r.change(cmds.image_prune(), "docker image prune")
        last = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
        rec.detail = last or "done"


def install_plugin(s: Session, source: str | None = None) -> None:
    """docker-rollout at the pinned version and sha256, unless exactly that is installed."""
    p = s.host.plugin
    with s.report.step("install-plugin") as rec:
        if source and not os.path.isfile(source):
            raise BadInput(f"--source {source}: no such file")
        have = s.r.probe(cmds.plugin_version_ok(p.version, p.sha256))
        if have.ok:
            rec.detail = f"already installed: {have.stdout.strip()}"
            return
        upload = None
        if source:
            upload = f".zdd-upload-docker-rollout-{os.getpid()}"
            if s.r.dry_run:
                s.r.note(f"would upload {source} to ~/{upload} over SFTP")
            else:
                try:
                    s.cxn.put(source, upload)
                except (paramiko.SSHException, OSError) as e:
                    raise BadInput(
                        f"--source: cannot upload {source} over SFTP ({e or type(e).__name__}): "
                        "the host offers no SFTP; copy the file there and install it by hand"
                    ) from None
        try:
            res = s.r.change(cmds.install_plugin(p.resolved_url, p.sha256, p.version, upload), check=False)
        finally:
            if upload and not s.r.dry_run:
                s.r.change(cmds.remove_file(upload), check=False)
        if not res.ok:
            raise StepFailed(f"install-plugin: {res.first_error_line()}")
        rec.detail = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else f"{p.version}"


def recreate_proxy(s: Session) -> None:
    """``proxy.mode = "recreate"``: the plan's ``up --force-recreate`` of the proxy, an outage."""
    p = s.host.proxy
    with s.report.step(proxy_step(s)) as rec:
        s.r.note(
            f"proxy.mode = recreate: {p.service} is force-recreated, its ports are closed meanwhile "
            "(an outage; see NOTES)"
        )
        s.r.change(cmds.Compose(s.host).recreate(p.service), f"recreating {p.service}")
        rec.detail = "recreated (outage while it restarted)"
