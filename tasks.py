"""Local tasks (Invoke): ``inv --list``.

``inv verify`` is the loop (HTTP requests and held websockets) that proves a deploy dropped
nothing; ``inv summary`` turns a deploy's JSON report into Markdown for a CI job summary; the
rest drive the local sandbox (scripts/sandbox.sh) and the tests.
"""

from __future__ import annotations

import shlex

from invoke import Collection, task
from invoke.exceptions import Exit

from fabfile import config as cfg
from fabfile import html_page, outcome
from fabfile import summary as run_summary
from fabfile import verify as vloop
from fabfile.config import DEFAULT_VERSION_REGEX


@task(
    iterable=["url", "ws"],
    help={
        "url": "an http(s) URL to hit (repeatable)",
        "ws": "a ws:// or wss:// URL to hold connections to; every disconnect is reported (repeatable)",
        "host": "use the verify URLs and settings of this host in hosts.toml (--url/--ws replace its lists)",
        "concurrency": "parallel requests (default 8, or the host's)",
        "rate": "total requests per second (default: as fast as possible, or the host's)",
        "duration": "seconds to run (default or 0: until Ctrl-C)",
        "timeout": "seconds before a request, or a websocket reply, counts as timed out (default 10)",
        "max_failures": "failures allowed before exiting non-zero (default 0)",
        "json": "write the full report, every failure included, to this file",
        "version_regex": f"regex finding the version in a body or websocket reply (default {DEFAULT_VERSION_REGEX})",
        "version_header": "read the version from this response header instead (HTTP)",
        "retry": "retry a GET once when the server closed an idle keep-alive connection without answering, "
        "as browsers do (default on; --no-retry counts it as a failure, like a client that never "
        "retries)",
        "ws_connections": "connections held open per ws URL (default 4, or the host's)",
        "max_ws_gap": "fail when a websocket probe went longer than this many seconds without a working "
        "connection (default: only report)",
        "report": "write a self-contained HTML page (a chart per URL, the verdict) to this file",
    },
)
def verify(
    c,
    url=None,
    ws=None,
    host=None,
    concurrency=None,
    rate=None,
    duration=None,
    timeout=None,
    max_failures=None,
    json=None,
    version_regex=None,
    version_header=None,
    retry=True,
    ws_connections=None,
    max_ws_gap=None,
    report=None,
):
    """Hit URLs and hold websockets in a loop, report every failure; exit 0 only if none failed."""
    try:
        overrides = {
            "concurrency": _number(int, concurrency),
            "rate": _number(float, rate),
            "duration": None if duration is None else (float(duration) or None),  # 0: until Ctrl-C
            "timeout": _number(float, timeout),
            "max_failures": _number(int, max_failures),
            "version_regex": version_regex,
            "version_header": version_header,
            "retry_stale": None if retry else False,
            "ws_connections": _number(int, ws_connections),
            "max_ws_gap": _number(float, max_ws_gap),
            "urls": list(url) if url else None,
            "ws_urls": list(ws) if ws else None,
        }
        if host:
            hc = cfg.load(c.config.get("hosts_file", "hosts.toml")).host(host)
            settings = vloop.settings_for_host(hc.verify, **overrides)
        else:
            if not (url or ws):
                raise Exit("verify: give --url or --ws (repeatable), or --host NAME", code=2)
            settings = vloop.VerifySettings(**{k: v for k, v in overrides.items() if v is not None})
    except cfg.ConfigError as e:
        raise Exit(f"config error: {e}", code=2) from None
    except ValueError as e:
        raise Exit(f"verify: {e}", code=2) from None
    try:
        result = vloop.run_and_print(settings, json)
        if report:
            html_page.write(report, outcome.document("verify", [outcome.verify_result(result, host or "")]))
    except OSError as e:
        raise Exit(f"verify: cannot write {e.filename}: {e.strerror}", code=2) from None
    if not result.ok:
        raise Exit(code=1)


def _number(kind: type, value: object) -> object:
    """A flag's value as int/float (ValueError names the bad text); None stays None."""
    return None if value is None else kind(value)


@task(help={"file": "the JSON file written by fab deploy --json"})
def summary(c, file):
    """Print a deploy's JSON report as Markdown (for a CI job summary: >> $GITHUB_STEP_SUMMARY)."""
    try:
        doc = outcome.read_json(file)
    except OSError as e:
        raise Exit(f"summary: cannot read {file}: {e.strerror}", code=2) from None
    except ValueError as e:
        raise Exit(f"summary: {e}", code=2) from None
    print(run_summary.markdown(doc), end="")


@task
def sandbox(c):
    """Set up (or check) the local sandbox: Docker, registry, sshd, demo stack (root)."""
    c.run("scripts/sandbox.sh up", pty=False)


@task(
    help={"service": "only these apps (repeatable; default all four)", "broken": "its healthcheck never passes"},
    iterable=["service"],
)
def publish(c, service=None, broken=False):
    """Publish a new version of the sandbox's app images under :latest."""
    args = (["--broken"] if broken else []) + list(service or [])
    c.run(shlex.join(["scripts/sandbox.sh", "publish", *args]), pty=False)


ns = Collection(verify, summary, sandbox, publish)
ns.configure({"hosts_file": "hosts.toml"})
