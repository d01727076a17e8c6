"""Fabric tasks: ``fab -H HOST TASK``. Each is a thin wrapper around a step in steps.py."""

from __future__ import annotations

import sys
from typing import Any, Callable

from fabric import task
from invoke.exceptions import Exit

from . import steps
from .runner import StepFailed
from .session import Session, open_session

DRY_RUN_HELP = "print the commands this would run on the host (secrets masked) and change nothing"


def run_steps(c: Any, title: str, body: Callable[[Session], None], dry_run: bool = False,
              summary: bool = True) -> Session:
    """Open a session, run ``body``, print the summary; expected failures exit non-zero."""
    s = open_session(c, dry_run=dry_run)
    failure: StepFailed | None = None
    try:
        body(s)
    except StepFailed as e:
        failure = e
        if e.detail:
            print("\n".join(f"[{s.name}]   {ln}" for ln in e.detail.splitlines()), file=sys.stdout)
    if summary:
        extra = list(s.notes)
        if dry_run:
            extra.append("dry run: nothing was changed on the host")
        s.report.summary(title, extra)
    if failure is not None:
        raise Exit(f"[{s.name}] {title} failed: {failure}", code=1)
    return s


@task(help={"dry_run": DRY_RUN_HELP})
def deploy(c, dry_run=False):
    """Pull, bring infra up, roll every app service, refresh the proxy, prune."""
    run_steps(c, "deploy", steps.deploy, dry_run)


@task(help={"source": "upload this local copy over SFTP instead of downloading (hosts without internet)",
            "dry_run": DRY_RUN_HELP})
def install_plugin(c, source=None, dry_run=False):
    """Install the pinned docker-rollout CLI plugin (checksum verified); no-op when present."""
    run_steps(c, "install-plugin", lambda s: steps.install_plugin(s, source), dry_run, summary=False)


@task(help={"dry_run": DRY_RUN_HELP})
def pull(c, dry_run=False):
    """Log in to the registry (token on stdin) and pull; report which services got new images."""
    run_steps(c, "pull", lambda s: steps.pull(s), dry_run, summary=False)


@task(help={"dry_run": DRY_RUN_HELP})
def infra_up(c, dry_run=False):
    """docker compose up -d the infra services (never rolled)."""
    run_steps(c, "infra-up", steps.infra_up, dry_run, summary=False)


@task(help={"service": "the app service to roll", "dry_run": DRY_RUN_HELP})
def rollout_service(c, service, dry_run=False):
    """Replace one app service's containers: new beside old, healthy, drain, remove old."""
    def body(s: Session) -> None:
        if service not in s.host.app_services:
            raise StepFailed(f"{service!r} is not an app service of {s.name} "
                             f"(rollout: {', '.join(s.host.app_services) or 'none'})")
        steps.validate(s, only=[service])
        steps.rollout_service(s, service)
    run_steps(c, f"rollout-service {service}", body, dry_run, summary=False)


@task(help={"dry_run": DRY_RUN_HELP})
def reload_caddy(c, dry_run=False):
    """Validate and gracefully reload the proxy's config (or recreate it, if so configured)."""
    run_steps(c, "reload-caddy", steps.reload_caddy, dry_run, summary=False)


@task(help={"dry_run": DRY_RUN_HELP})
def prune(c, dry_run=False):
    """docker image prune -f."""
    run_steps(c, "prune", steps.prune, dry_run, summary=False)
