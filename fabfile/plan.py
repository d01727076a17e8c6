"""What a deploy will do, decided before anything changes.

:func:`parse_survey` turns the one read of the host (``fabfile/remote/survey.sh``) into a
:class:`HostState`; :func:`make_plan` decides for each service whether to *roll* it or
*skip* it, with the reason. Both are pure, so the plan is unit-tested without a host and a
dry run prints exactly what a real run would do.

A service rolls when (first reason wins):

* no container of it is running (it is started);
* it is forced (``deploy --force``, or ``rollout-service NAME``);
* the image its reference names now (after the pull) is not the image its containers run;
* ``docker compose config --hash`` differs from its containers' ``config-hash`` label
  (the compose file changed: environment, command, labels, ...);
* the number of running containers differs from the number the compose file declares
  (``deploy.replicas`` or ``scale``); without a declared number the running count is kept.

Otherwise it is skipped. Infra services use the same test, to skip ``infra-up`` when
nothing there changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .proxy import HOLD_ROUTE_ID

HASH_LABEL = "com.docker.compose.config-hash"
SERVICE_LABEL = "com.docker.compose.service"
ONEOFF_LABEL = "com.docker.compose.oneoff"  # "True" on a `docker compose run` container: never a replica
HOOK_LABEL = "docker-rollout.pre-stop-hook"


class SurveyError(Exception):
    """The host's answer could not be read (one line, says which part)."""


@dataclass(frozen=True)
class Container:
    id: str  # short (12 hex digits)
    service: str
    state: str  # running, exited, restarting, ...
    health: str  # healthy, unhealthy, starting, none
    image: str  # image ID (sha256:...)
    config_hash: str
    networks: dict[str, str]  # network name -> IP address
    labels: dict[str, str] = field(default_factory=dict)
    name: str = ""
    mounts: tuple[str, ...] = ()
    started_at: float = 0.0  # epoch seconds (State.StartedAt)
    healthcheck: bool = False  # the container has a healthcheck (compose's or its image's)

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass
class HostState:
    services: dict[str, Any]  # docker compose config --format json: services
    hashes: dict[str, str]  # service -> config hash it would get now
    containers: list[Container]  # the services' replicas (no one-off `compose run` containers)
    proxy: str | None = None  # the proxy container (short id), when running
    proxy_networks: tuple[str, ...] = ()
    proxy_config: dict | None = None  # its config file, as Caddy JSON
    proxy_config_error: str = ""
    proxy_running: dict | None = None  # the config it runs now (admin API)
    proxy_version: str = ""
    key: str = "project"  # the project's resolved directory: names its lock, journal
    lock_holder: str = ""  # who holds the deploy lock now ("" = free)
    journal: str = ""  # the journal's recent lines
    oneoff: list[Container] = field(default_factory=list)  # `docker compose run` containers (jobs)

    def running(self, service: str) -> list[Container]:
        return [c for c in self.containers if c.service == service and c.running]

    @property
    def proxy_pinned(self) -> bool:
        """Does the proxy run a config of zdd's (pinned by an unfinished deploy: it holds the
        drained addresses in zdd's hold route) instead of its file?"""
        return (
            self.proxy_config is not None
            and self.proxy_running is not None
            and self.proxy_running != self.proxy_config
            and HOLD_ROUTE_ID in json.dumps(self.proxy_running)
        )

    @property
    def proxy_edited(self) -> bool:
        """Does the proxy run another config than its file that is not zdd's (the file edited,
        not reloaded)?"""
        return (
            self.proxy_config is not None
            and self.proxy_running is not None
            and self.proxy_running != self.proxy_config
            and not self.proxy_pinned
        )


def sections(text: str) -> dict[str, tuple[int, str]]:
    """A survey's answer, ``=== NAME EXIT_STATUS`` lines each followed by the text, as NAME -> (rc, text)."""
    out: dict[str, tuple[int, str]] = {}
    name, rc, lines = None, 0, []
    for line in text.splitlines():
        if line.startswith("=== "):
            if name is not None:
                out[name] = (rc, "\n".join(lines))
            parts = line.split()
            name, rc, lines = parts[1], int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 1, []
        elif name is not None:
            lines.append(line)
    if name is not None:
        out[name] = (rc, "\n".join(lines))
    return out


def section_json(section: str, rc_text: tuple[int, str] | None, what: str) -> Any:
    """One section's JSON; SurveyError naming ``what`` when it failed or is not JSON."""
    if rc_text is None:
        raise SurveyError(f"{what}: no answer from the host")
    rc, text = rc_text
    if rc != 0:
        last = [ln for ln in text.strip().splitlines() if ln.strip()]
        raise SurveyError(f"{what} failed: {last[-1][:300] if last else f'exit status {rc}'}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        near = text[max(0, e.pos - 60) : e.pos + 60]
        raise SurveyError(f"{what} did not print JSON ({e.msg}, line {e.lineno} column {e.colno}): {near!r}") from None


def _container(raw: dict) -> Container:
    cfg = raw.get("Config") or {}
    labels = cfg.get("Labels") or {}
    state = raw.get("State") or {}
    nets = (raw.get("NetworkSettings") or {}).get("Networks") or {}
    mounts = tuple(m.get("Name") or m.get("Source") or "" for m in raw.get("Mounts") or [] if m.get("RW", True))
    return Container(
        id=str(raw.get("Id", ""))[:12],
        service=labels.get(SERVICE_LABEL, ""),
        state=state.get("Status", "unknown"),
        health=(state.get("Health") or {}).get("Status", "none"),
        image=raw.get("Image", ""),
        config_hash=labels.get(HASH_LABEL, ""),
        networks={n: (v or {}).get("IPAddress", "") for n, v in nets.items()},
        labels=labels,
        name=str(raw.get("Name", "")).lstrip("/"),
        mounts=mounts,
        started_at=_epoch(state.get("StartedAt", "")),
        healthcheck=bool((cfg.get("Healthcheck") or {}).get("Test"))
        and (cfg.get("Healthcheck") or {}).get("Test") != ["NONE"],
    )


def _epoch(stamp: str) -> float:
    """Docker's RFC 3339 time (nanoseconds, Z) as epoch seconds; 0 when unknown."""
    import calendar
    import time as _time

    try:
        head = stamp.split(".")[0].rstrip("Z")
        return float(calendar.timegm(_time.strptime(head, "%Y-%m-%dT%H:%M:%S")))
    except (ValueError, TypeError):
        return 0.0


def read_head(sec: dict[str, tuple[int, str]], state: Any) -> None:
    """survey.sh's first sections onto ``state`` (any engine's): the project's key, the lock's
    holder, the journal's recent lines."""
    state.key = sec.get("key", (0, ""))[1].strip() or state.key
    state.lock_holder = sec.get("lock", (0, ""))[1].strip()
    state.journal = sec.get("journal", (0, ""))[1]


def parse_survey(text: str, proxy_service: str = "") -> HostState:
    """The survey's sections as a HostState; SurveyError when the compose project is unreadable."""
    sec = sections(text)
    compose = section_json("compose", sec.get("compose"), "docker compose config")
    hashes: dict[str, str] = {}
    rc, raw_hashes = sec.get("hashes", (1, ""))
    if rc == 0:
        for line in raw_hashes.splitlines():
            name, _, h = line.strip().partition(" ")
            if h:
                hashes[name] = h.strip()
    raw = section_json("containers", sec.get("containers", (0, "[]")), "docker inspect")
    every = [_container(c) for c in raw]
    # a `docker compose run` job (cron, a migration) is no replica: never counted, pinned or stopped
    containers = [c for c in every if c.labels.get(ONEOFF_LABEL) != "True"]
    state = HostState(
        services=compose.get("services") or {},
        hashes=hashes,
        containers=containers,
        oneoff=[c for c in every if c.labels.get(ONEOFF_LABEL) == "True"],
    )
    read_head(sec, state)
    proxy_id = sec.get("proxy-container", (0, ""))[1].strip()[:12]
    if proxy_service and proxy_id:
        state.proxy = proxy_id
        proxy = next((c for c in containers if c.id == proxy_id), None)
        state.proxy_networks = tuple(proxy.networks) if proxy else ()
        try:
            state.proxy_config = section_json("proxy-config", sec.get("proxy-config"), "reading the proxy config")
        except SurveyError as e:
            state.proxy_config_error = str(e)
        try:
            state.proxy_running = section_json("proxy-running", sec.get("proxy-running"), "the proxy's running config")
        except SurveyError:
            state.proxy_running = None  # no wget in the proxy image: unknown
        rc, version = sec.get("proxy-version", (1, ""))
        state.proxy_version = version.strip().split()[0] if rc == 0 and version.strip() else ""
    return state


# --- the plan ---------------------------------------------------------------------------------


def declared_count(service: dict[str, Any]) -> int | None:
    """``deploy.replicas`` or ``scale`` from the compose model, when the file sets one."""
    deploy = service.get("deploy") or {}
    for value in (deploy.get("replicas"), service.get("scale")):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.isdigit():
            return int(value)
    return None


def normalize_ref(ref: str) -> str:
    """An image reference as ``docker image ls`` names it (repo:tag, docker.io implied)."""
    name, at, _ = ref.partition("@")
    last = name.rsplit("/", 1)[-1]
    if at and ":" not in last:
        return ""  # pinned by digest only: listed as <none>; the config hash sees a new digest
    if ":" not in last:
        name += ":latest"
    for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/library/", "index.docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    if name.startswith("library/"):
        name = name[len("library/") :]
    return name


def image_table(text: str) -> dict[str, str]:
    """``docker image ls --format '{{.Repository}}:{{.Tag}} {{.ID}}'`` as ref -> image ID."""
    table = {}
    for line in text.splitlines():
        ref, _, iid = line.strip().partition(" ")
        if iid.startswith("sha256:"):
            table[ref] = iid
    return table


@dataclass(frozen=True)
class ServicePlan:
    name: str
    roll: bool
    reason: str
    old: tuple[Container, ...] = ()
    target: int = 1  # containers it has once rolled

    def line(self) -> str:
        what = "roll" if self.roll else "skip"
        count = f" ({len(self.old)} → {self.target})" if self.roll else ""
        return f"{self.name}: {what}{count}, {self.reason}"


def short_image(image: str) -> str:
    """An image ID or digest as 12 hex digits."""
    return image.removeprefix("sha256:")[:12] or "?"


def plan_service(name: str, state: HostState, images: dict[str, str], force: bool = False) -> ServicePlan:
    """Roll or skip one service, and why."""
    svc = state.services.get(name) or {}
    running = tuple(state.running(name))
    declared = declared_count(svc)
    target = declared if declared is not None else max(len(running), 1)
    if not running and declared == 0:
        return ServicePlan(name, False, "scaled to 0", running, 0)
    if not running:
        return ServicePlan(name, True, "not running: start it", running, target)
    if force:
        return ServicePlan(name, True, "forced", running, target)
    ref = normalize_ref(svc["image"]) if svc.get("image") else ""
    want = images.get(ref) if ref else None
    have = {c.image for c in running}
    if want and have != {want}:
        was = ", ".join(sorted(short_image(i) for i in have))
        return ServicePlan(name, True, f"new image {was} → {short_image(want)}", running, target)
    wanted_hash = state.hashes.get(name)
    if wanted_hash and {c.config_hash for c in running} != {wanted_hash}:
        return ServicePlan(name, True, "compose config changed", running, target)
    if declared is not None and len(running) != declared:
        return ServicePlan(name, True, f"{len(running)} running, {declared} declared", running, target)
    return ServicePlan(name, False, f"unchanged (image {short_image(next(iter(have)))})", running, target)


def make_plan(names: list[str], state: HostState, images: dict[str, str], force: bool = False) -> list[ServicePlan]:
    return [plan_service(n, state, images, force) for n in names]


def has_healthcheck(name: str, state: HostState) -> bool:
    """Does the service have a healthcheck: in the compose file, or in its running image?"""
    hc = (state.services.get(name) or {}).get("healthcheck") or {}
    if hc.get("disable"):
        return False
    return bool(hc.get("test")) or any(c.healthcheck for c in state.running(name))


def shared_mounts(name: str, state: HostState) -> list[str]:
    """Volumes and bind mounts a service's containers write: old and new share them during
    the overlap."""
    out = []
    for v in (state.services.get(name) or {}).get("volumes") or []:
        if isinstance(v, dict) and v.get("type") in ("volume", "bind") and not v.get("read_only"):
            out.append(str(v.get("source") or v.get("target")))
    return out
