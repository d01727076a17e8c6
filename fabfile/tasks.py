"""Fabric tasks: ``fab -H HOST TASK``. Each is a thin wrapper around a step in steps.py."""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from contextlib import contextmanager
from typing import Any, Callable

import paramiko
from fabric import task
from invoke.exceptions import Exit

from . import history, hosts_run, html_report, outcome, steps, swarm
from . import summary as run_summary
from . import verify as vloop
from .outcome import HostResult
from .rollout import Interrupted
from .runner import BadInput, StepFailed
from .session import Session, host_name, load_host, open_session, secret


@contextmanager
def sigterm_interrupts():
    """SIGTERM (a CI runner cancelling the job, `kill`) unwinds like Ctrl-C: undo, exit 130."""
    def handler(signum, frame):
        raise Interrupted()
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def steps_for(s: Session) -> Any:
    """The steps of this host's engine: fabfile/swarm.py for a Swarm stack, else fabfile/steps.py
    (both have survey, validate, pull, infra_up, rollout_service, reload_caddy, deploy, recover_task)."""
    return swarm if s.host.engine == "swarm" else steps


DRY_RUN_HELP = "print the commands this would run on the host (secrets masked) and change nothing"


def run_steps(c: Any, title: str, body: Callable[[Session], None], dry_run: bool = False,
              summary: bool = True, verify: bool = False, strict: bool | None = None) -> HostResult:
    """Run ``body`` on the host (see :func:`run_on_host`); expected failures exit non-zero."""
    result = run_on_host(c, title, body, dry_run, summary, verify, strict)
    if not result.ok:
        raise Exit(result.message, code=result.exit_code)
    return result


def run_on_host(c: Any, title: str, body: Callable[[Session], None], dry_run: bool = False,
                summary: bool = True, verify: bool = False, strict: bool | None = None) -> HostResult:
    """Open a session, run ``body``, print the summary; return what happened (an expected
    failure is a failed result with its one-line error, never an exception).

    With ``verify``, the host's verify URLs are hit (and its ws URLs held open) from here for
    the whole run and the verdict ends the summary; ``strict`` (or ``verify.strict``) fails a
    run that dropped any request (or whose websockets broke the run's ``max_ws_gap``).
    """
    name = host_name(c)
    try:
        s = open_session(c, dry_run=dry_run)
    except Exit as e:  # config error, cannot connect: nothing was touched
        now = time.time()
        return HostResult(name, title, started_at=now, ended_at=now).fail(
            str(e.message).removeprefix(f"[{name}] "), e.code)
    result = HostResult(name, title, started_at=s.report.started_at, steps=s.report.steps, notes=s.notes,
                        dry_run=dry_run, secrets=_secrets(s))
    loop = None
    if _verifying(s, verify) and not dry_run:
        try:
            settings = vloop.settings_for_host(s.host.verify)
        except ValueError as e:
            result.ended_at = time.time()
            return result.fail(f"verify: {e}", 2)
        loop = vloop.BackgroundLoop(settings, finish_in_flight=True).start()
    stopped: dict[str, Any] = {}

    def stop_verify() -> dict | None:
        """Stop the loop (once) so its verdict can go to the host's journal with the run."""
        if "report" not in stopped:
            try:
                stopped["report"] = loop.stop()
            except Exception as e:
                stopped["report"] = None
                print(f"[{s.name}]   verify loop failed: {e}", file=sys.stdout)
        r = stopped["report"]
        return None if r is None else {"verdict": r.verdict(), "total": r.total, "failures": r.failures,
                                       "failures_without_retry": r.failures_without_retry}
    s.stop_verify = stop_verify if loop is not None else None
    failure: StepFailed | None = None
    interrupted = False
    try:
        with sigterm_interrupts():
            body(s)
    except KeyboardInterrupt:
        interrupted = True
        failure = StepFailed("interrupted: what carried no traffic yet was removed; the proxy restore "
                             "finishes on the host" if s.host.engine != "swarm" else "interrupted")
    except StepFailed as e:
        failure = e
        if e.detail:
            print("\n".join(f"[{s.name}]   {ln}" for ln in e.detail.splitlines()), file=sys.stdout)
    except (paramiko.SSHException, OSError) as e:  # the connection broke mid-way
        failure = StepFailed(f"lost the ssh connection: {e} (if a rollout was under way, check the proxy: "
                             f"`fab -H {s.name} reload-caddy` routes by service name again)")
    except Exception as e:  # a bug: still one line (ZDD_TRACE=1 shows where)
        if os.environ.get("ZDD_TRACE"):
            traceback.print_exc()
        failure = StepFailed(f"internal error: {type(e).__name__}: {e}")
    finally:
        report = None
        if loop is not None:
            stop_verify()
            report = stopped["report"]
    result.ended_at, result.verify = time.time(), report
    if not dry_run:
        result.cost = {"remote_commands": s.r.remote_commands, "proxy_loads": s.report.proxy_loads}
    _print_summary(s, title, result, summary)
    if failure is not None:
        code = 130 if interrupted else 2 if isinstance(failure, BadInput) else 1
        return result.fail(f"{title} failed: {failure}", code, "interrupted" if interrupted else "failed")
    strict = bool(strict) or s.host.verify.strict
    if report is not None and strict and not report.ok:
        what = f"{report.failures:,} request(s) failed" if not report.http_ok else report.ws_verdict()
        return result.fail(f"{title}: {what} during the deploy (strict)", 3)
    return result


def _print_summary(s: Session, title: str, result: HostResult, summary: bool) -> None:
    """The host's step table (or only its notes), then cost and the verify verdict."""
    report = result.verify
    extra = list(s.notes)
    if result.cost:
        extra.append(f"cost: {result.cost['remote_commands']} remote commands, {result.cost['proxy_loads']} "
                     "proxy loads")
    if report is not None:
        if not report.ok:
            print(report.render(), file=sys.stdout)
        extra.append(f"verify: {report.verdict()}")
        for url, versions in report.switches().items():
            seen = ", ".join(f"{v} {x.first:.1f}–{x.last:.1f}s" for v, x in versions.items())
            extra.append(f"  {url}: {seen}")
    if result.dry_run:
        extra.append("dry run: nothing was changed on the host")
    if summary:
        s.report.summary(title, extra)
    elif extra:
        print("\n".join(extra))


def _secrets(s: Session) -> tuple[str, ...]:
    """What must not appear in a report: the registry token."""
    reg = s.host.registry
    token = secret(reg.password_env) if reg is not None and reg.password_env else None
    return (token,) if token else ()


def _verifying(s: Session, verify: bool) -> bool:
    """Does the run hit the host's verify targets (asked for, enabled, something to hit)?"""
    return verify and s.host.verify.enabled and _has_targets(s.host.verify)


def _has_targets(vc: Any) -> bool:
    """The host's verify table names something to hit: http(s) URLs or ws URLs."""
    return bool(vc.urls or vc.ws_urls)


@task(help={"dry_run": DRY_RUN_HELP,
            "verify": "hit the host's verify URLs during the deploy and report (default on; --no-verify)",
            "strict": "exit non-zero when the verification saw any failed request (also verify.strict)",
            "force": "roll every app service, changed or not",
            "wait": "wait until the old containers are gone and the proxy routes by name again "
                    "(default: only while verifying; otherwise a job on the host finishes that)",
            "json": "write the whole summary (every host, step, note, the verify report) to this JSON file",
            "report": "write a self-contained HTML page (charts per URL, steps, verdict) to this file"})
def deploy(c, dry_run=False, verify=True, strict=False, force=False, wait=False, json=None, report=None):
    """Pull, bring infra up, roll the app services that changed, refresh the proxy, prune.

    With several hosts (-H a,b) one after the other, stopping at the first failure."""
    def body(s: Session) -> None:
        verifying = _verifying(s, verify)
        steps_for(s).deploy(s, force=force, wait=wait or verifying)
    result = run_on_host(c, "deploy", body, dry_run, verify=verify, strict=strict)
    run = hosts_run.record(result)
    if run is not None:
        finish_run(run.title, run.everyone(), json, report, across=len(run.hosts) > 1)
    if not result.ok:
        raise Exit(result.message, code=result.exit_code)


def finish_run(title: str, results: list[HostResult], json_path: str | None, html_path: str | None,
           across: bool = False) -> None:
    """The end of a run: the summary across hosts (when there were several) and the files."""
    doc = outcome.document(title, results)
    if across:
        print(run_summary.text(doc), flush=True)
    for path, write in ((json_path, outcome.write_json), (html_path, html_report.write)):
        if not path:
            continue
        try:
            write(path, doc)
        except OSError as e:
            message = f"{title}: cannot write {path}: {e.strerror}"
            if doc["result"] != "ok":  # the run's own failure is the exit message
                print(message, file=sys.stderr)
            else:
                raise Exit(message, code=2) from None


@task(help={"duration": "seconds to run (default 30; 0 = until Ctrl-C)",
            "json": "write the full report, every failure included, to this file",
            "max_failures": "failures allowed before exiting non-zero (default: verify.max_failures)"})
def verify_zero_downtime(c, duration=30.0, json=None, max_failures=None):
    """Hit this host's verify URLs (and hold its ws URLs) from here and report every failure."""
    name = host_name(c)
    host = load_host(c, name)
    if not _has_targets(host.verify):
        raise Exit(f"[{name}] no verify.urls or verify.ws_urls in hosts.toml for this host", code=2)
    try:
        settings = vloop.settings_for_host(host.verify, duration=float(duration) or None,
                                           max_failures=None if max_failures is None else int(max_failures))
        report = vloop.run_and_print(settings, json)
    except ValueError as e:
        raise Exit(f"[{name}] verify: {e}", code=2) from None
    except OSError as e:
        raise Exit(f"[{name}] verify: cannot write {json}: {e.strerror}", code=2) from None
    if not report.ok:
        raise Exit(f"[{name}] verify: {report.verdict()}", code=1)


@task(help={"source": "upload this local copy over SFTP instead of downloading (hosts without internet)",
            "dry_run": DRY_RUN_HELP})
def install_plugin(c, source=None, dry_run=False):
    """Install the pinned docker-rollout CLI plugin (checksum verified); no-op when present."""
    run_steps(c, "install-plugin", lambda s: steps.install_plugin(s, source), dry_run, summary=False)


@task(help={"dry_run": DRY_RUN_HELP})
def pull(c, dry_run=False):
    """Log in to the registry (token on stdin) and pull; report which services got new images."""
    run_steps(c, "pull", lambda s: steps_for(s).pull(s, steps_for(s).survey(s)), dry_run, summary=False)


@task(help={"dry_run": DRY_RUN_HELP})
def infra_up(c, dry_run=False):
    """docker compose up -d the infra services (never rolled)."""
    run_steps(c, "infra-up", lambda s: steps_for(s).infra_up(s), dry_run, summary=False)


@task(help={"service": "the app service to roll", "dry_run": DRY_RUN_HELP})
def rollout_service(c, service, dry_run=False):
    """Replace one app service's containers: new beside old, healthy, drain, remove old."""
    def body(s: Session) -> None:
        if service not in s.host.app_services:
            raise BadInput(f"{service!r} is not an app service of {s.name} "
                             f"(rollout: {', '.join(s.host.app_services) or 'none'})")
        state = steps_for(s).validate(s, only=[service])
        steps_for(s).rollout_service(s, service, state)
    run_steps(c, f"rollout-service {service}", body, dry_run, summary=False)


@task(help={"dry_run": DRY_RUN_HELP})
def reload_caddy(c, dry_run=False):
    """Validate and gracefully reload the proxy's config (or recreate it, if so configured)."""
    run_steps(c, "reload-caddy", lambda s: steps_for(s).reload_caddy(s), dry_run, summary=False)


@task(help={"dry_run": DRY_RUN_HELP})
def recover(c, dry_run=False):
    """Finish or undo what an interrupted deploy left half done, restore the proxy, free the lock."""
    run_steps(c, "recover", lambda s: steps_for(s).recover_task(s), dry_run)


@task(help={"to": "the run to go back to (an id from `fab history`; default: the successful run before "
                  "the last)", "dry_run": DRY_RUN_HELP, "wait": "wait until the old containers are gone",
            "verify": "hit the host's verify URLs meanwhile (default on)"})
def rollback(c, to=None, dry_run=False, wait=False, verify=True):
    """Deploy the images of an earlier successful run again, with zero downtime (engine swarm:
    every app service back to Swarm's previous spec)."""
    def body(s: Session) -> None:
        verifying = _verifying(s, verify)
        if s.host.engine == "swarm":
            swarm.rollback(s, to)
        else:
            history.rollback(s, to, wait=wait or verifying)
    run_steps(c, "rollback", body, dry_run, verify=verify)


@task(help={"n": "how many runs (default 10)"})
def history_(c, n=10):
    """Past runs from the host's journal: when, who, what changed, result, failed requests."""
    run_steps(c, "history", lambda s: history.history(s, int(n), steps_for(s).validate), summary=False)


@task
def status(c):
    """What runs now: containers, images, health, proxy routing, the lock, the last run
    (engine swarm: the stack's services and tasks, the lock, the last run)."""
    run_steps(c, "status", lambda s: (swarm.status if s.host.engine == "swarm" else history.status)(s),
              summary=False)


@task(help={"dry_run": DRY_RUN_HELP})
def unlock(c, dry_run=False):
    """Release the host's deploy lock left by a deploy that died (shows who held it)."""
    run_steps(c, "unlock", lambda s: steps.unlock(s, steps_for(s).survey), dry_run, summary=False)


@task(help={"dry_run": DRY_RUN_HELP})
def prune(c, dry_run=False):
    """docker image prune -f."""
    run_steps(c, "prune", steps.prune, dry_run, summary=False)
