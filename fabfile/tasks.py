"""Fabric tasks: ``fab -H HOST TASK``. Each is a thin wrapper: it names the step or sequence
to run (:mod:`fabfile.sequence` for the runs that change what serves, the engine's own
methods for the single steps) and :mod:`fabfile.taskrun` runs it on the host."""

from __future__ import annotations

import sys
from dataclasses import replace

from fabric import task
from invoke.exceptions import Exit

from . import hosts_run, html_page, outcome, sequence, steps
from . import summary as run_summary
from . import verify as vloop
from .config import CanaryConfig, ConfigError, WatchConfig, check_canary
from .history import history_lines
from .locking import read_runs
from .locking import unlock as unlock_step
from .outcome import HostResult
from .runner import BadInput
from .session import host_name, load_host
from .taskrun import has_targets, run_on_host, run_steps, verifying

DRY_RUN_HELP = "print the commands this would run on the host (secrets masked) and change nothing"
SKIP_HOOKS_HELP = "run none of the hooks in hooks.dir (pre-deploy, post-deploy...): for incidents"


@task(
    help={
        "dry_run": DRY_RUN_HELP,
        "verify": "hit the host's verify URLs during the deploy and report (default on; --no-verify)",
        "strict": "exit non-zero when the verification saw any failed request (also verify.strict)",
        "force": "roll every app service, changed or not",
        "wait": "wait until the old containers are gone and the proxy routes by name again "
        "(default: only while verifying; otherwise a job on the host finishes that)",
        "json": "write the whole summary (every host, step, note, the verify report) to this JSON file",
        "report": "write a self-contained HTML page (charts per URL, steps, verdict) to this file",
        "skip_hooks": SKIP_HOOKS_HELP,
        "canary": "canary steps for this run, e.g. 10,50 (% of each rolling service's requests to its new "
        "containers, judged before the switch; default: the host's canary.steps)",
        "no_canary": "switch each tier at once, without the host's canary steps",
        "watch": "after the last switch, judge the new containers this many seconds, switching straight back "
        "to the old ones on a breach (0 = no watch; default: the host's watch.seconds)",
    }
)
def deploy(
    c,
    dry_run=False,
    verify=True,
    strict=False,
    force=False,
    wait=False,
    json=None,
    report=None,
    skip_hooks=False,
    canary=None,
    no_canary=False,
    watch=None,
):
    """Pull, bring infra up, roll the app services that changed, refresh the proxy, prune.

    With several hosts (-H a,b) one after the other, stopping at the first failure."""

    def body(s, engine, verdict):
        sequence.deploy(
            s,
            engine,
            force=force,
            wait=wait or verifying(s.host, verify),
            verdict=verdict,
            hooks=not skip_hooks,
            canary=canary_of(s.host.canary, canary, no_canary),
            watch=watch_of(s.host.watch, watch),
        )

    result = run_on_host(c, "deploy", body, dry_run, verify=verify, strict=strict)
    run = hosts_run.record(result)
    if run is not None:
        finish_run(run.title, run.everyone(), json, report, across=len(run.hosts) > 1)
    if not result.ok:
        raise Exit(result.message, code=result.exit_code)


def canary_of(host: CanaryConfig, steps: str | None, off: bool) -> CanaryConfig:
    """The run's canary: the host's, with ``--canary 10,50`` or ``--no-canary`` for its steps."""
    if off and steps:
        raise BadInput("--canary and --no-canary: choose one")
    if off:
        return replace(host, steps=())
    if not steps:
        return host
    try:
        chosen = replace(host, steps=tuple(int(p) for p in str(steps).split(",") if p.strip()))
        check_canary("--canary", chosen)
    except (ValueError, ConfigError) as e:
        raise BadInput(f"--canary takes rising percentages like 10,50 ({e})") from None
    return chosen


def watch_of(host: WatchConfig, seconds: str | None) -> WatchConfig:
    """The run's watch: the host's, with ``--watch SECONDS`` (0 = none) for its length."""
    if seconds is None or seconds == "":
        return host
    if not str(seconds).isdigit():
        raise BadInput(f"--watch takes a number of seconds (0 = no watch), not {seconds!r}")
    return replace(host, seconds=int(seconds))


def finish_run(
    title: str, results: list[HostResult], json_path: str | None, html_path: str | None, across: bool = False
) -> None:
    """The end of a run: the summary across hosts (when there were several) and the files."""
    doc = outcome.document(title, results)
    if across:
        print(run_summary.text(doc), flush=True)
    for path, write in ((json_path, outcome.write_json), (html_path, html_page.write)):
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


@task(
    help={
        "duration": "seconds to run (default 30; 0 = until Ctrl-C)",
        "json": "write the full report, every failure included, to this file",
        "max_failures": "failures allowed before exiting non-zero (default: verify.max_failures)",
    }
)
def verify_zero_downtime(c, duration=30.0, json=None, max_failures=None):
    """Hit this host's verify URLs (and hold its ws URLs) from here and report every failure."""
    name = host_name(c)
    host = load_host(c, name)
    if not has_targets(host.verify):
        raise Exit(f"[{name}] no verify.urls or verify.ws_urls in hosts.toml for this host", code=2)
    try:
        settings = vloop.settings_for_host(
            host.verify,
            duration=float(duration) or None,
            max_failures=None if max_failures is None else int(max_failures),
        )
        report = vloop.run_and_print(settings, json)
    except ValueError as e:
        raise Exit(f"[{name}] verify: {e}", code=2) from None
    except OSError as e:
        raise Exit(f"[{name}] verify: cannot write {json}: {e.strerror}", code=2) from None
    if not report.ok:
        raise Exit(f"[{name}] verify: {report.verdict()}", code=1)


@task(
    help={
        "source": "upload this local copy over SFTP instead of downloading (hosts without internet)",
        "dry_run": DRY_RUN_HELP,
    }
)
def install_plugin(c, source=None, dry_run=False):
    """Install the pinned docker-rollout CLI plugin (checksum verified); no-op when present."""
    run_steps(c, "install-plugin", lambda s, engine, _: steps.install_plugin(s, source), dry_run, summary=False)


@task(help={"dry_run": DRY_RUN_HELP})
def pull(c, dry_run=False):
    """Log in to the registry (token on stdin) and pull; report which services got new images."""
    run_steps(c, "pull", lambda s, engine, _: engine.pull(s, engine.survey(s)), dry_run, summary=False)


@task(help={"dry_run": DRY_RUN_HELP})
def infra_up(c, dry_run=False):
    """docker compose up -d the infra services (never rolled)."""
    run_steps(c, "infra-up", lambda s, engine, _: engine.infra_up(s), dry_run, summary=False)


@task(help={"service": "the app service to roll", "dry_run": DRY_RUN_HELP})
def rollout_service(c, service, dry_run=False):
    """Replace one app service's containers: new beside old, healthy, drain, remove old."""

    def body(s, engine, _):
        if service not in s.host.app_services:
            raise BadInput(
                f"{service!r} is not an app service of {s.name} (rollout: {', '.join(s.host.app_services) or 'none'})"
            )
        sequence.rollout_service(s, engine, service)

    run_steps(c, f"rollout-service {service}", body, dry_run, summary=False)


@task(help={"dry_run": DRY_RUN_HELP})
def reload_caddy(c, dry_run=False):
    """Validate and gracefully reload the proxy's config (or recreate it, if so configured)."""
    run_steps(c, "reload-caddy", lambda s, engine, _: engine.reload_proxy(s), dry_run, summary=False)


@task(help={"dry_run": DRY_RUN_HELP})
def recover(c, dry_run=False):
    """Finish or undo what an interrupted deploy left half done, restore the proxy, free the lock."""
    run_steps(c, "recover", lambda s, engine, _: sequence.recover(s, engine), dry_run)


@task(
    help={
        "to": "the run to go back to (an id from `fab history`; default: the successful run before the last)",
        "dry_run": DRY_RUN_HELP,
        "wait": "wait until the old containers are gone",
        "verify": "hit the host's verify URLs meanwhile (default on)",
        "skip_hooks": SKIP_HOOKS_HELP,
    }
)
def rollback(c, to=None, dry_run=False, wait=False, verify=True, skip_hooks=False):
    """Deploy the images of an earlier successful run again, with zero downtime (engine swarm:
    every app service back to Swarm's previous spec)."""

    def body(s, engine, verdict):
        sequence.rollback(s, engine, to, wait=wait or verifying(s.host, verify), verdict=verdict, hooks=not skip_hooks)

    run_steps(c, "rollback", body, dry_run, verify=verify)


@task(
    help={
        "node": "the node to empty and drain: its hostname or ID (docker node ls)",
        "dry_run": DRY_RUN_HELP,
        "verify": "hit the host's verify URLs meanwhile (default on)",
    }
)
def drain_node(c, node, dry_run=False, verify=True):
    """Engine swarm: move a node's tasks elsewhere, each new one healthy first, then drain it.

    Swarm's own drain (docker node update --availability drain) stops them first."""

    def body(s, engine, verdict):
        sequence.drain_node(s, engine, node, verdict)

    run_steps(c, f"drain-node {node}", body, dry_run, verify=verify)


@task(help={"n": "how many runs (default 10)"})
def history_(c, n=10):
    """Past runs from the host's journal: when, who, what changed, result, failed requests."""

    def body(s, engine, _):
        runs = read_runs(s, engine.survey(s))
        print(f"[{s.name}] {len(runs)} run(s) in the journal (failed: retrying client / never retrying)")
        for line in history_lines(runs, int(n)):
            print(f"  {line}")

    run_steps(c, "history", body, summary=False)


@task
def status(c):
    """What runs now: containers, images, health, proxy routing, the lock, the last run
    (engine swarm: the stack's services and tasks, the lock, the last run)."""

    def body(s, engine, _):
        for line in engine.status(s):
            print(f"[{s.name}]   {line}", file=s.r.out)

    run_steps(c, "status", body, summary=False)


@task(help={"dry_run": DRY_RUN_HELP})
def unlock(c, dry_run=False):
    """Release the host's deploy lock left by a deploy that died (shows who held it)."""
    run_steps(c, "unlock", lambda s, engine, _: unlock_step(s, engine.survey(s)), dry_run, summary=False)


@task(help={"dry_run": DRY_RUN_HELP})
def prune(c, dry_run=False):
    """docker image prune -f."""
    run_steps(c, "prune", lambda s, engine, _: steps.prune(s), dry_run, summary=False)
