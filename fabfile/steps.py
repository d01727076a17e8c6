"""The deploy's steps, each a plain function of a :class:`~fabfile.session.Session`.

They read top to bottom as the plan does; ``deploy`` chains them on one connection. The
Fabric tasks in ``fabfile/tasks.py`` are thin wrappers around these.
"""

from __future__ import annotations

import os
import re
import socket

import paramiko
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from . import commands as cmds
from . import journal
from .engines import engine_for
from .plan import HostState, has_healthcheck, shared_mounts, ServicePlan, SurveyError, image_table, make_plan, normalize_ref, parse_survey
from .proxy import STREAM_CLOSE_DELAY_SINCE, caddy_version, without_stream_close_delay
from .rollout import Rollout
from .runner import BadInput, StepFailed
from .session import Session, secret


# --- validation ------------------------------------------------------------------------------

def survey(s: Session) -> HostState:
    """One read of the host: compose model, config hashes, containers, the proxy."""
    return read_survey(s, cmds.survey(s.host), lambda text: parse_survey(text, s.host.proxy.service),
                       "the host's compose project")


def read_survey(s: Session, cmd: cmds.Command, parse: Callable[[str], Any], what: str) -> Any:
    """Run a survey (sections ``=== NAME RC``) and parse it; BadInput when it is unreadable."""
    res = s.r.probe(cmd)
    if not res.ok and "===" not in res.stdout:
        raise BadInput(f"cannot read {what} in {s.host.dir}: {res.first_error_line()}")
    try:
        return parse(res.stdout)
    except SurveyError as e:
        raise BadInput(f"{e} (in {s.host.dir})") from None


def configured_services(h) -> list[str]:
    """Every service hosts.toml names for this host: apps, infra, the proxy."""
    return h.app_services + list(h.infra) + ([h.proxy.service] if h.proxy.service else [])


def preflight(state: HostState, s: Session, names: list[str]) -> list[str]:
    """Problems of app services that would make the overlap unsafe (the seed's checks);
    shared writable mounts are a note, not a problem."""
    problems = []
    for name in names:
        if name not in state.services:
            continue
        if not has_healthcheck(name, state) and s.host.service(name).no_healthcheck_wait is None:
            problems.append(f"{name} has no healthcheck, so nothing says when a new container is ready: add one, "
                            f"or set services.{name}.no_healthcheck_wait (seconds of running that count as ready)")
        mounts = shared_mounts(name, state)
        if mounts:
            s.notes.append(f"{name}: old and new containers share {', '.join(mounts)} while both run "
                           "(a database file there, e.g. SQLite, sees two writers)")
    return problems


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
        problems += preflight(state, s, [n for n in (s.host.app_services if only is None else only)
                                         if n in s.host.app_services])
        if only is None:
            registry_credentials(s)  # a missing token fails here, before anything changes
        if problems:
            raise BadInput(f"{len(problems)} problem(s) on the host: " + "; ".join(problems))
        rec.detail = f"{len(state.services)} services in the compose project"
        h = s.host
        if h.proxy.service and h.proxy.drain and h.app_services and not state.proxy and only is None:
            raise BadInput(f"the proxy {h.proxy.service} is not running, so old containers cannot be drained: "
                           f"start it (docker compose up -d {h.proxy.service}), or set proxy.drain = false")
        if h.proxy.service and h.proxy.drain and h.app_services and state.proxy:
            if state.proxy_config is None:
                raise BadInput(f"{state.proxy_config_error or 'cannot read the proxy config'}: fix "
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


# --- the deploy lock and the journal -------------------------------------------------------

LOCK_WAIT = 120  # seconds a deploy waits for the previous deploy's restore job on the host
_HOLDER = re.compile(r"^(?P<who>\S+)@(?P<host>\S+) pid (?P<pid>\d+) ")


@dataclass
class Held:
    """This run's hold of the host's lock, and its journal entry."""

    run: str
    kind: str
    holder: str
    started: float = field(default_factory=time.monotonic)
    handed_over: bool = False           # a job on the host holds the lock now (the restore)
    lines: list[str] = field(default_factory=list)  # journal lines to write with the next command
    images: dict[str, str] = field(default_factory=dict)  # service -> image it runs once done
    prune: bool = False


def _client_gone(holder: str) -> bool:
    """A holder that is a zdd on this machine whose process is gone (provably dead)."""
    m = _HOLDER.match(holder)
    if not m or m.group("host") != socket.gethostname():
        return False
    try:
        os.kill(int(m.group("pid")), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def acquire(s: Session, state: HostState, kind: str) -> Held:
    held = Held(journal.new_run_id(), kind, f"{journal.who()} pid {os.getpid()} {kind} since "
                                            f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')} (run {{run}})")
    held.holder = held.holder.format(run=held.run)
    start = (journal.line(journal.start_event(held.run, kind)),)
    res = s.r.change(cmds.lock(state.key, "acquire", held.holder, str(LOCK_WAIT), start, s.host.lock_stale),
                     check=False)
    if not res.ok:
        holder = res.first_error_line().removeprefix("locked by: ")
        if not _client_gone(holder):
            raise StepFailed(f"another deploy holds the lock ({res.first_error_line()}); "
                             f"if it is gone, run: fab -H {s.name} unlock")
        res = s.r.change(cmds.lock(state.key, "takeover", held.holder, holder, start), check=False)
        if not res.ok:
            raise StepFailed(f"could not take over the lock of a zdd that is gone: {res.first_error_line()}")
        s.notes.append(f"took over the lock of a zdd that is gone ({holder})")
    s.notes += res.stdout.strip().splitlines()[:-1]
    s.run = held.run
    return held


@contextmanager
def locked(s: Session, state: HostState, kind: str) -> Iterator[Held]:
    """Hold the project's lock while ``kind`` runs (one at a time), journaled: ``start``
    before anything changes, ``end`` with the result when it lets go (finish.sh)."""
    held = acquire(s, state, kind)
    result, error = "ok", ""
    try:
        yield held
    except KeyboardInterrupt:
        result = "interrupted"
        raise
    except BaseException as e:
        result, error = "failed", str(e)
        raise
    finally:
        finish(s, state, held, result, error)


def finish(s: Session, state: HostState, held: Held, result: str, error: str) -> None:
    """One command: the journal's end of this run, keep tags, prune, release the lock."""
    verify = s.stop_verify() if s.stop_verify else None
    steps = [{"name": r.name, "status": r.status, "seconds": round(r.seconds, 1), "detail": r.detail[:200]}
             for r in s.report.steps]
    end = journal.end_event(held.run, result, time.monotonic() - held.started, steps, verify, error)
    prune_now = held.prune and result == "ok" and s.host.prune
    keep = held.images if result == "ok" and held.prune else {}  # a run that rolled nothing takes no slot
    with s.report.step("finish") as rec:
        res = s.r.change(cmds.finish(state.key, "" if held.handed_over else held.holder, prune_now,
                                     s.host.keep_images, held.run if keep else "", keep,
                                     (*held.lines, journal.line(end))), check=False)
        rec.detail = "; ".join(res.stdout.strip().splitlines()) or ("" if res.ok else res.first_error_line())
        if not res.ok:
            rec.status = "failed"
            s.notes.append(f"could not release the deploy lock: fab -H {s.name} unlock")


def unlock(s: Session, read: Callable[[Session], Any] | None = None) -> None:
    """Free the lock whoever holds it; ``read`` is the engine's survey (the lock's key)."""
    with s.report.step("unlock") as rec:
        state = (read or survey)(s)
        line = journal.line({"run": journal.new_run_id(), "t": int(time.time()), "event": "unlock",
                             "who": journal.who(), "was": state.lock_holder})
        s.r.change(cmds.lock(state.key, "unlock", lines=(line,)), "releasing the lock")
        rec.detail = f"was locked by: {state.lock_holder}" if state.lock_holder else "was free"


def recover(s: Session, state: Any, read: Callable[[Session], Any] | None = None) -> Any:
    """Finish or undo what an interrupted run left half done (from the journal); the state
    read again afterwards (by ``read``, the engine's survey). Nothing to do: the same state,
    no round trip."""
    runs = [r for r in journal.parse(state.journal) if r.end is None and r.run != s.run]
    if not runs:
        return state
    for prev in runs:  # oldest first: a run that died while recovering leaves two
        with s.report.step("recover") as rec:
            tiers = [(t.pid, t.switched, t.services, t.old) for t in prev.tiers if not t.finished]
            res = s.r.change(cmds.recover(s.host, state.key, prev.run, tiers), "recovering", check=False)
            done = res.stdout.strip().splitlines()
            rec.detail = f"run {prev.run} ({prev.kind}, {prev.start.get('who', '?')}) was interrupted" + (
                "; " + "; ".join(done) if done else "; nothing was half done")
            if not res.ok:
                raise StepFailed(f"could not recover run {prev.run}: {res.first_error_line()}")
    return (read or survey)(s)


# --- install-plugin --------------------------------------------------------------------------

def install_plugin(s: Session, source: str | None = None) -> None:
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
            if not os.path.isfile(source):
                raise BadInput(f"--source {source}: no such file")
            upload = f".zdd-upload-docker-rollout-{os.getpid()}"
            if s.r.dry_run:
                s.r.note(f"would upload {source} to ~/{upload} over SFTP")
            else:
                try:
                    s.cxn.put(source, upload)
                except (paramiko.SSHException, OSError) as e:
                    raise BadInput(f"--source: cannot upload {source} over SFTP ({e or type(e).__name__}): "
                                   "the host offers no SFTP; copy the file there and install it by hand") from None
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
    login = (h.registry.server, creds[0], creds[1], h.registry.password_env) if creds else None
    res = s.r.change(cmds.pull(h, names, login, h.pull_timeout).and_then(*then), "docker compose pull", check=False)
    if not res.ok:
        raise StepFailed(f"pull failed: {res.first_error_line()}", (res.stdout + res.stderr).strip()[-2000:])
    if s.r.dry_run:  # nothing was pulled: plan with the images already on the host
        res = s.r.probe(cmds.image_ids().and_then(*then))
        s.notes.append("dry run: the plan compares with the images already on the host (nothing was pulled)")
    return res.stdout, next((ln + "; " for ln in res.stdout.splitlines() if ln.startswith("logged in")), "")


def pull(s: Session, state: HostState) -> dict[str, str]:
    """Log in if a registry is configured and pull every configured service, in one round
    trip; returns the image each reference names now (ref -> image ID)."""
    h = s.host
    names = [n for n in configured_services(h) if n in state.services]
    with s.report.step("pull") as rec:
        listing, logged = fetch_images(s, names)
        images = image_table(listing)
        changed = [n for n in names if images.get(normalize_ref(str(state.services[n].get("image", "")))) not in
                   (None, *{c.image for c in state.running(n)}) or
                   len({c.image for c in state.running(n)}) > 1]
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
    return planned(s, lambda: make_plan(names, state, images, force))


def planned(s: Session, decide: Callable[[], list]) -> list:
    """The plan step: ``decide()`` rolls or skips each service; a summary, then one line each."""
    with s.report.step("plan") as rec:
        plans = decide()
        rolling = [p for p in plans if p.roll]
        rec.detail = f"roll {len(rolling)} of {len(plans)}" + (
            f" in {sum(1 for t in s.host.rollout if any(p.name in t for p in rolling))} tier(s)" if rolling else "")
    for p in plans:
        print(f"[{s.name}]   {p.line()}", file=s.r.out)
    return plans


def note_plan(held: Held, state: HostState, plans: list[ServicePlan], images: dict[str, str]) -> None:
    """The plan goes to the journal before the first change it makes (with the first tier)."""
    event = journal.plan_event(held.run, state, plans, images)
    held.lines.append(journal.line(event))
    held.images = {n: v["after"] for n, v in event["services"].items() if v.get("after")}


def roll(s: Session, state: HostState, plans: list[ServicePlan], tiers: list[list[str]], held: Held,
         wait: bool) -> Rollout:
    """Each tier in order through the engine; then drain reports and the proxy restore."""
    engine = engine_for(s.host)
    rollout = Rollout(s, state, engine.name, plans, held.run, held.lines)
    held.prune = any(p.roll for p in plans)
    try:
        for tier in tiers:
            engine.roll_tier(rollout, list(tier))
    except BaseException as e:
        interrupted = isinstance(e, KeyboardInterrupt)
        if not interrupted:
            rollout.drain_reports()
        if rollout.needs_restore() or rollout.retiring:
            held.handed_over = rollout.restore(detach=interrupted)
        raise
    rollout.drain_reports(wait)
    if rollout.needs_restore():
        held.handed_over = rollout.restore(detach=not wait)
    if s.host.proxy.mode == "recreate" and any(p.roll for p in plans):
        reload_caddy(s)  # the plan's `--force-recreate caddy`, on request: an outage
    return rollout


def rollout_service(s: Session, name: str, state: HostState) -> None:
    """Replace one app service's containers (always, whatever the plan would say)."""
    with locked(s, state, f"rollout-service {name}") as held:
        state = recover(s, state)
        plans = make_plan([name], state, {}, force=True)
        note_plan(held, state, plans, {})
        roll(s, state, plans, [[name]], held, wait=True)


# --- reload-caddy ----------------------------------------------------------------------------

def reload_caddy(s: Session) -> None:
    p = s.host.proxy
    with s.report.step(f"reload-{p.service or 'proxy'}") as rec:
        if no_proxy_step(s, rec):
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
        reload_in(s, container)
        rec.detail = f"graceful reload of {p.config}"


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
    s.report.proxy_loads += 1


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
    """validate → lock → [recover] → [install-plugin] → pull → infra-up → plan → tiers →
    restore the proxy → finish (journal, keep images, prune, unlock)."""
    state = validate(s)
    with locked(s, state, "deploy") as held:
        state = recover(s, state)
        deploy_steps(s, state, held, force, wait)


def deploy_steps(s: Session, state: HostState, held: Held, force: bool = False, wait: bool = False,
                 images: dict[str, str] | None = None) -> None:
    engine = engine_for(s.host)
    if engine.name == "docker-rollout":
        install_plugin(s)
    engine.prepare(s.r)
    if images is None:
        images = pull(s, state)
    infra_up(s, state, images)
    plans = plan(s, state, images, s.host.app_services, force)
    note_plan(held, state, plans, images)
    if any(p.roll for p in plans) or state.proxy_pinned:
        roll(s, state, plans, [list(t) for t in s.host.rollout], held, wait)
    else:
        s.report.skip(f"reload-{s.host.proxy.service or 'proxy'}", "nothing rolled; the proxy runs its config file")


def recover_task(s: Session) -> None:
    """Only what the next deploy would do first: finish or undo an interrupted run, restore
    the proxy if it still routes by container address, free the lock."""
    state = validate(s)
    with locked(s, state, "recover") as held:
        state = recover(s, state)
        if state.proxy_pinned:
            rollout = Rollout(s, state, engine_for(s.host).name, [], held.run, held.lines)
            rollout.restore(detach=False)
        else:
            s.report.skip(f"reload-{s.host.proxy.service or 'proxy'}", "the proxy runs its config file")
