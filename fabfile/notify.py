"""Release markers: once a ``deploy`` or ``rollback`` is over, tell Grafana, Sentry and the
team's chat what it shipped and how it ended (``[hosts.NAME.notify]``; sent from where fab
runs). The payloads are pure functions of the run's facts (:class:`~fabfile.release.RunFacts`)
and the settings; :func:`mark` sends them.

* **Grafana** (``grafana_url``): ``POST /api/annotations``, one region annotation per run::

      {"time": START_MS, "timeEnd": END_MS, "tags": ["deploy", HOST, SERVICE..., (COMMAND), (RESULT)],
       "text": "[HOST] deploy: ok in 22.9s\\n..."}

  tagged ``deploy``, the host and each service that rolled; a rollback adds ``rollback``, a run
  that did not end ``ok`` adds its result (``failed``, ``aborted``, ``rolled-back``).
* **Sentry** (``sentry_org``; only for a run that ended ``ok`` and rolled something):
  ``POST /api/0/organizations/ORG/releases/`` ``{"version": RELEASE, "projects": [...],
  "dateReleased": END}`` (an existing release is fine), then
  ``POST /api/0/organizations/ORG/releases/RELEASE/deploys/`` ``{"environment": ENV, "name":
  "deploy RUN", "projects": [...], "dateStarted": START, "dateFinished": END}`` (+ ``"url"``, the
  report link, when there is one). RELEASE is :func:`fabfile.release.release_name`.
* **Chat** (``webhook_url`` or ``webhook_url_env``): ``POST {"text": "..."}``: the result line,
  what rolled, the verify verdict, the error, the report link.

Tokens are read from the environment (or ``.env``) by the variable names in hosts.toml and sent
only as ``Authorization: Bearer ...``; they are never printed. Each request has
``notify.timeout`` seconds (default 5), the notifiers are sent side by side, and whatever fails
is said in one warning line (a ``warned`` ``notify`` step): a marker never fails a run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

import httpx

from .config import NotifyConfig
from .outcome import redact
from .release import RunFacts
from .session import Session, secret, secrets


@dataclass(frozen=True)
class Message:
    """One request of one notifier."""

    notifier: str  # grafana | sentry | chat
    url: str  # "" when it is read from url_env
    body: dict[str, Any] = field(default_factory=dict)
    token_env: str = ""  # sent as "Authorization: Bearer $token_env"
    url_env: str = ""  # the variable holding the URL (a chat webhook that is a secret)

    def describe(self) -> str:
        where = self.url or f"${self.url_env}"
        return f"POST {where}" + (f" (Authorization: Bearer ${self.token_env})" if self.token_env else "")


def iso(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


def headline(f: RunFacts) -> str:
    """The result line, as the summary says it: ``[HOST] deploy: ok in 22.9s``."""
    return f"[{f.host}] {f.command}: {f.result or 'running'} in {f.runtime:.1f}s"


def details(f: RunFacts) -> list[str]:
    """What rolled, who, the verdict and the error: the lines after the headline."""
    if f.planned and f.services:
        what = f"{', '.join(f.services)} → release {f.release}"
    elif f.planned:
        what = "nothing rolled (every service was unchanged)"
    else:
        what = f"stopped before the plan (configured: {', '.join(f.services) or 'none'})"
    lines = [what, f"run {f.run} by {f.performer}"]
    if f.verdict:
        lines.append(f"verify: {f.verdict}")
    if f.error:
        lines.append(f"error: {f.error}")
    return lines


def annotation(f: RunFacts, n: NotifyConfig) -> Message:
    tags = ["deploy", f.host, *f.services]
    if f.command != "deploy":
        tags.append(f.command)
    if f.result != "ok":
        tags.append(f.result)
    body = {
        "time": int(f.started * 1000),
        "timeEnd": int((f.ended or f.started) * 1000),
        "tags": tags,
        "text": "\n".join([headline(f), *details(f)]),
    }
    return Message("grafana", n.grafana_url.rstrip("/") + "/api/annotations", body, n.grafana_token_env)


def sentry(f: RunFacts, n: NotifyConfig, link: str = "") -> list[Message]:
    """The release and its deploy; none unless the run ended ``ok`` and rolled something."""
    version = f.release
    if f.result != "ok" or not version:
        return []
    base = f"{n.sentry_url.rstrip('/')}/api/0/organizations/{quote(n.sentry_org, safe='')}/releases/"
    projects = list(n.sentry_project)
    end = iso(f.ended or f.started)
    deploy: dict[str, Any] = {
        "environment": n.environment or f.host,
        "name": f"{f.command} {f.run}",
        "projects": projects,
        "dateStarted": iso(f.started),
        "dateFinished": end,
    }
    if link:
        deploy["url"] = link
    return [
        Message("sentry", base, {"version": version, "projects": projects, "dateReleased": end}, n.sentry_token_env),
        Message("sentry", f"{base}{quote(version, safe='')}/deploys/", deploy, n.sentry_token_env),
    ]


def chat(f: RunFacts, n: NotifyConfig, link: str = "") -> Message:
    lines = [headline(f), *details(f)] + ([f"report: {link}"] if link else [])
    return Message("chat", n.webhook_url, {"text": "\n".join(lines)}, url_env=n.webhook_url_env)


def link(f: RunFacts, n: NotifyConfig, environ: dict[str, str] | None = None) -> str:
    """Where the run's report is: ``report_url`` ({run}, {host} filled in), else in GitHub
    Actions the job's page (its artifact holds deploy.html), else none."""
    env = os.environ if environ is None else environ
    if n.report_url:
        return n.report_url.replace("{run}", f.run).replace("{host}", f.host)
    if env.get("GITHUB_RUN_ID") and env.get("GITHUB_REPOSITORY"):
        server = env.get("GITHUB_SERVER_URL") or "https://github.com"
        return f"{server}/{env['GITHUB_REPOSITORY']}/actions/runs/{env['GITHUB_RUN_ID']}"
    return ""


def messages(f: RunFacts, n: NotifyConfig, environ: dict[str, str] | None = None) -> list[Message]:
    """Every request the run's end sends, in order: Grafana, Sentry (release, deploy), chat."""
    where = link(f, n, environ)
    out: list[Message] = []
    if n.grafana_url:
        out.append(annotation(f, n))
    if n.sentry_org:
        out += sentry(f, n, where)
    if n.webhook_url or n.webhook_url_env:
        out.append(chat(f, n, where))
    return out


Post = Callable[[str, dict[str, str], dict[str, Any]], int]  # (url, headers, body) -> HTTP status


def send(
    msgs: list[Message], lookup: Callable[[str], str | None], timeout: float, post: Post | None = None
) -> list[str]:
    """Send the messages, each notifier beside the others (a notifier's own requests in order,
    stopping at its first failure); what failed, one short phrase per notifier."""
    if post is None:

        def post(url: str, headers: dict[str, str], body: dict[str, Any]) -> int:
            return httpx.post(url, json=body, headers=headers, timeout=timeout).status_code

    def one(notifier: str) -> str:
        for m in (m for m in msgs if m.notifier == notifier):
            url = m.url or (lookup(m.url_env) or "")
            if not url:
                return f"{notifier}: {m.url_env} is not set"
            headers = {}
            if m.token_env:
                token = lookup(m.token_env)
                if not token:
                    return f"{notifier}: {m.token_env} is not set"
                headers["Authorization"] = f"Bearer {token}"
            try:
                status = post(url, headers, m.body)
            except httpx.TimeoutException:
                return f"{notifier}: no answer within {timeout:g}s"
            except httpx.HTTPError as e:
                return f"{notifier}: {type(e).__name__}: {e}"
            if not 200 <= status < 300:
                return f"{notifier}: HTTP {status} from {m.describe().split(' ')[1]}"
        return ""

    notifiers = list(dict.fromkeys(m.notifier for m in msgs))
    if not notifiers:
        return []
    with ThreadPoolExecutor(max_workers=len(notifiers)) as pool:
        return [r for r in pool.map(one, notifiers) if r]


def mark(s: Session, f: RunFacts) -> None:
    """Send the release markers of a finished run (a dry run lists them); one ``notify`` step,
    ``warned`` (one line) when something was not sent."""
    n = s.host.notify
    if not n.any:
        return
    hidden = set(secrets(s.host))
    msgs = [replace(m, body=redact(m.body, hidden)) for m in messages(f, n)]
    if s.r.dry_run:
        for m in msgs:
            print(f"[{s.name}] would send: {m.describe()} ({m.notifier})", file=s.r.out)
        s.report.skip("notify", "dry run: would send to " + ", ".join(dict.fromkeys(m.notifier for m in msgs)))
        return
    t0 = time.monotonic()
    failed = [redact(x, hidden) for x in send(msgs, secret, n.timeout)]
    sent = [x for x in dict.fromkeys(m.notifier for m in msgs) if not any(y.startswith(x + ":") for y in failed)]
    said = ", ".join(_said(x, f, n) for x in sent)
    if failed:
        s.report.record(
            "notify",
            "warned",
            "not sent: " + "; ".join(failed) + (f" (sent: {said})" if said else ""),
            time.monotonic() - t0,
        )
    else:
        s.report.record("notify", "ok", said or "nothing to send", time.monotonic() - t0)


def _said(notifier: str, f: RunFacts, n: NotifyConfig) -> str:
    if notifier == "sentry":
        return f"sentry release {f.release} deployed to {n.environment or f.host}"
    return {"grafana": "grafana annotation", "chat": "chat message"}[notifier]
