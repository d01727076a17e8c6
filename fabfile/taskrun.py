"""Running one task on one host: the session, the engine, the verify loop around the run, the
exit code and the summary. Every Fabric task in :mod:`fabfile.tasks` goes through
:func:`run_on_host` (or :func:`run_steps`, which exits non-zero on a failure).

Expected failures end in one line and an exit code: 2 bad input (nothing changed), 1 a step
failed, 130 interrupted (Ctrl-C or SIGTERM), 3 requests failed under ``--strict``.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import paramiko
from invoke.exceptions import Exit

from . import verify as vloop
from .engines import Engine, engine_for
from .interrupts import sigterm_interrupts
from .locking import Verdict
from .outcome import HostResult
from .runner import BadInput, StepFailed
from .session import Session, host_name, open_session, secrets

Body = Callable[[Session, Engine, Verdict], None]


class VerifyRun:
    """The verify loop running from here for the whole of a task; :meth:`verdict` stops it
    (once) and returns what goes to the host's journal with the run's end."""

    def __init__(self, loop: Any, name: str):
        self.loop, self.name = loop, name
        self.report: Any = None
        self.stopped = False

    def verdict(self) -> dict | None:
        if not self.stopped:
            self.stopped = True
            try:
                self.report = self.loop.stop()
            except Exception as e:
                print(f"[{self.name}]   verify loop failed: {e}", file=sys.stdout)
        r = self.report
        return (
            None
            if r is None
            else {
                "verdict": r.verdict(),
                "total": r.total,
                "failures": r.failures,
                "failures_without_retry": r.failures_without_retry,
            }
        )


@contextmanager
def verify_loop(settings: Any, name: str) -> Iterator[VerifyRun | None]:
    """Hit the verify URLs (and hold the ws URLs) of ``settings`` while the body runs (none:
    no loop); stopped at the latest when the body is over."""
    if settings is None:
        yield None
        return
    probe = VerifyRun(vloop.BackgroundLoop(settings, finish_in_flight=True).start(), name)
    try:
        yield probe
    finally:
        probe.verdict()


def verifying(host: Any, asked: bool) -> bool:
    """Does a run hit the host's verify targets (asked for, enabled, something to hit)?"""
    vc = host.verify
    return asked and vc.enabled and has_targets(vc)


def has_targets(vc: Any) -> bool:
    """The host's verify table names something to hit: http(s) URLs or ws URLs."""
    return bool(vc.urls or vc.ws_urls)


def run_steps(c: Any, title: str, body: Body, *args: Any, **kw: Any) -> HostResult:
    """Run ``body`` on the host (:func:`run_on_host`, same arguments); expected failures exit non-zero."""
    result = run_on_host(c, title, body, *args, **kw)
    if not result.ok:
        raise Exit(result.message, code=result.exit_code)
    return result


def run_on_host(
    c: Any,
    title: str,
    body: Body,
    dry_run: bool = False,
    summary: bool = True,
    verify: bool = False,
    strict: bool | None = None,
) -> HostResult:
    """Open a session, run ``body(session, engine, verdict)``, print the summary; return what
    happened (an expected failure is a failed result with its one-line error, never an
    exception). With ``verify`` the verify loop runs meanwhile and its verdict ends the
    summary; ``strict`` (or ``verify.strict``) fails a run that dropped any request (or
    whose websockets broke the run's ``max_ws_gap``)."""
    name = host_name(c)
    try:
        s = open_session(c, dry_run=dry_run)
    except Exit as e:  # config error, cannot connect: nothing was touched
        now = time.time()
        return HostResult(name, title, started_at=now, ended_at=now).fail(
            str(e.message).removeprefix(f"[{name}] "), e.code
        )
    engine = engine_for(s.host)
    result = HostResult(
        name,
        title,
        started_at=s.report.started_at,
        steps=s.report.steps,
        timeline=s.report.timeline,
        notes=s.notes,
        dry_run=dry_run,
        secrets=_secrets(s),
    )
    settings = None
    if verifying(s.host, verify) and not dry_run:
        try:
            settings = vloop.settings_for_host(s.host.verify)
        except ValueError as e:
            result.ended_at = time.time()
            return result.fail(f"verify: {e}", 2)
    failure: StepFailed | None = None
    interrupted = False
    probe: VerifyRun | None = None
    try:
        with verify_loop(settings, s.name) as probe, sigterm_interrupts():
            body(s, engine, probe.verdict if probe else _none)
    except KeyboardInterrupt:
        interrupted = True
        failure = StepFailed(engine.interrupted)
    except StepFailed as e:
        failure = e
        if e.detail:
            print("\n".join(f"[{s.name}]   {ln}" for ln in e.detail.splitlines()), file=sys.stdout)
    except (paramiko.SSHException, OSError) as e:  # the connection broke mid-way
        failure = StepFailed(
            f"lost the ssh connection: {e} (if a rollout was under way, check the proxy: "
            f"`fab -H {s.name} reload-caddy` routes by service name again)"
        )
    except Exception as e:  # a bug: still one line (ZDD_TRACE=1 shows where)
        if os.environ.get("ZDD_TRACE"):
            traceback.print_exc()
        failure = StepFailed(f"internal error: {type(e).__name__}: {e}")
    report = probe.report if probe else None
    result.ended_at, result.verify = time.time(), report
    if not dry_run:
        result.cost = {"remote_commands": s.r.remote_commands, "proxy_loads": s.report.proxy_loads}
    _print_summary(s, title, result, summary)
    if failure is not None:
        code = 130 if interrupted else 2 if isinstance(failure, BadInput) else 1
        return result.fail(f"{title} failed: {failure}", code, "interrupted" if interrupted else "failed")
    if report is not None and (bool(strict) or s.host.verify.strict) and not report.ok:
        what = f"{report.failures:,} request(s) failed" if not report.http_ok else report.ws_verdict()
        return result.fail(f"{title}: {what} during the deploy (strict)", 3)
    return result


def _none() -> None:
    return None


def _print_summary(s: Session, title: str, result: HostResult, summary: bool) -> None:
    """The host's step table (or only its notes), then cost and the verify verdict."""
    report = result.verify
    extra = list(s.notes)
    if result.cost:
        extra.append(
            f"cost: {result.cost['remote_commands']} remote commands, {result.cost['proxy_loads']} proxy loads"
        )
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
    """What must not appear in a report: the registry token, the notify tokens."""
    return secrets(s.host)
