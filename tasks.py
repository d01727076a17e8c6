"""Local tasks (Invoke): ``inv --list``.

``inv verify`` is the HTTP loop that proves a deploy dropped nothing; the rest drive the
local sandbox (scripts/sandbox.sh) and the tests.
"""

from __future__ import annotations

import shlex

from invoke import Collection, task
from invoke.exceptions import Exit

from fabfile import config as cfg
from fabfile import verify as vloop


@task(
    iterable=["url"],
    help={
        "url": "a URL to hit (repeatable)",
        "host": "use the verify URLs and settings of this host in hosts.toml",
        "concurrency": "parallel requests (default 8, or the host's)",
        "rate": "total requests per second (default: as fast as possible, or the host's)",
        "duration": "seconds to run (default or 0: until Ctrl-C)",
        "timeout": "seconds before a request counts as a timeout (default 10)",
        "max_failures": "failures allowed before exiting non-zero (default 0)",
        "json": "write the full report, every failure included, to this file",
        "version_regex": r"regex finding the version in a body (default \bv\d+[\w.-]*)",
        "version_header": "read the version from this response header instead",
        "retry_stale": "retry a GET once when the server closed an idle keep-alive connection without "
                       "answering, as browsers do (default on; --no-retry-stale counts it as a failure)",
    },
)
def verify(c, url=None, host=None, concurrency=None, rate=None, duration=None, timeout=None,
           max_failures=None, json=None, version_regex=None, version_header=None, retry_stale=True):
    """Hit URLs in a loop and report every failed request; exit 0 only if none failed."""
    try:
        overrides = {
            "concurrency": None if concurrency is None else int(concurrency),
            "rate": None if rate is None else float(rate),
            "duration": None if duration is None else (float(duration) or None),  # 0: until Ctrl-C
            "timeout": None if timeout is None else float(timeout),
            "max_failures": None if max_failures is None else int(max_failures),
            "version_regex": version_regex,
            "version_header": version_header,
            "retry_stale": None if retry_stale else False,
        }
        if host:
            hc = cfg.load(c.config.get("hosts_file", "hosts.toml")).host(host)
            if url:
                overrides["urls"] = list(url)
            settings = vloop.settings_for_host(hc.verify, **overrides)
        else:
            if not url:
                raise Exit("verify: give --url (repeatable) or --host NAME", code=2)
            settings = vloop.VerifySettings(urls=list(url), **{k: v for k, v in overrides.items() if v is not None})
    except cfg.ConfigError as e:
        raise Exit(f"config error: {e}", code=2) from None
    except ValueError as e:
        raise Exit(f"verify: {e}", code=2) from None
    try:
        report = vloop.run_and_print(settings, json)
    except OSError as e:
        raise Exit(f"verify: cannot write {json}: {e.strerror}", code=2) from None
    if not report.ok:
        raise Exit(code=1)


@task
def sandbox(c):
    """Set up (or check) the local sandbox: Docker, registry, sshd, demo stack (root)."""
    c.run("scripts/sandbox.sh up", pty=False)


@task(help={"service": "only these apps (repeatable; default all four)", "broken": "its healthcheck never passes"},
      iterable=["service"])
def publish(c, service=None, broken=False):
    """Publish a new version of the sandbox's app images under :latest."""
    args = (["--broken"] if broken else []) + list(service or [])
    c.run(shlex.join(["scripts/sandbox.sh", "publish", *args]), pty=False)


ns = Collection(verify, sandbox, publish)
ns.configure({"hosts_file": "hosts.toml"})
