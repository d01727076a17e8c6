"""hosts.toml: the one typed loader for per-host settings.

The file has a ``[defaults]`` table that every host inherits and one ``[hosts.NAME]``
table per host (NAME is the ssh alias given to ``fab -H``) that overrides it key by key;
nested tables (``proxy``, ``plugin``, ``registry``, ``services.X``, ``ssh``, ``verify``)
merge key by key too. The whole file is validated before any host is touched: every
problem is a :class:`ConfigError` whose message names the key.

Keys (types and defaults are in the ``*Config`` dataclasses below):

* ``dir`` – project directory on the host; ``~/`` is the remote user's home.
* ``compose_files`` – compose files, relative to ``dir``. ``project_name``/``env_file``
  become ``-p``/``--env-file`` when not empty.
* ``engine`` – ``"native"`` (built in), ``"docker-rollout"`` (the CLI plugin) or ``"swarm"``
  (the host is a Docker Swarm manager and the compose files are a stack's: Swarm replaces
  the tasks, zdd plans, orders the tiers and waits; see fabfile/swarm.py).
* ``stack_name`` – engine swarm only, and required there: the stack (``docker stack deploy
  ... STACK``) whose services are ``STACK_SERVICE``. ``env_file`` is not read by ``docker
  stack deploy``, so it must stay empty with engine swarm.
* ``rollout`` – app services in dependency tiers, rolled one tier after the other.
* ``infra`` – services that are only ever ``up -d``.
* ``health_timeout``, ``pre_stop_hook``, ``stop_timeout`` – rollout settings, overridable
  per service in ``[defaults.services.NAME]``/``[hosts.X.services.NAME]``. An app service
  without a healthcheck is refused unless its ``services.NAME.no_healthcheck_wait`` says how
  many seconds of running count as ready.
* ``prune`` – run ``docker image prune -f`` at the end of a deploy that rolled something.
* ``keep_images`` – the images of the last N runs are tagged ``zdd-keep/...`` so that
  ``prune`` keeps them and ``rollback`` finds them after ``:latest`` moved (default 3).
* ``lock_stale`` – seconds after which a deploy's lock that was not renewed is taken over
  (its holder's machine or connection is gone; tier.sh renews it while it works); keep it
  above ``pull_timeout`` (default 1800).
* ``pull_timeout`` – seconds before a hung pull is killed on the host (the lock is freed).
* ``proxy`` – the reverse proxy (Caddy) service, how to refresh it and whether to drain
  old containers at the proxy before stopping them. ``stream_grace`` (seconds; per service
  too): while draining, once the count of requests in flight to the old containers has stopped
  falling for this long, the rest are taken for long-lived streams (websockets, SSE), which end
  when the old containers stop. ``stream_close_delay`` (a Caddy duration, "" for none) is set on
  every ``reverse_proxy`` of the configs zdd loads when Caddy is 2.7 or newer, so its reloads
  keep websockets open. ``reload_on_deploy`` (engine swarm): reload the proxy gracefully
  after the tiers; Swarm itself needs no proxy step, so only set it for a proxy config that
  changes with your deploys. ``mode = "recreate"`` is not available with engine swarm.
* ``plugin`` – the docker-rollout version, download URL and sha256.
* ``registry`` – ``docker login`` before pulling; the password is read from the
  environment variable named by ``password_env`` (or ``.env``), never from this file. The
  login goes to a temporary Docker config removed after the pull, unless ``keep_login``.
  Engine swarm requires ``keep_login = true`` (its ``--with-registry-auth`` passes the login
  of ``~/.docker/config.json`` to the nodes that pull for their tasks).
* ``ssh`` – optional connection details for hosts without an ssh-config entry.
* ``verify`` – what the loop that proves a deploy dropped nothing hits: ``urls`` (http(s),
  requested in a loop) and ``ws_urls`` (ws:// or wss://; ``ws_connections`` connections
  are held open to each for the whole deploy, and every disconnect is reported), and how:
  ``concurrency``, ``rate``, ``timeout``, ``version_regex``/``version_header``,
  ``max_failures``, ``retry_stale`` (false: a request on a kept-alive connection that the
  server closed counts as failed), ``max_ws_gap`` (seconds a websocket may go without a
  working connection before the run fails; 0 = only report), ``enabled``, ``strict``.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """hosts.toml is missing, malformed or inconsistent (one line, names the key)."""


ENGINES = ("native", "docker-rollout", "swarm")
PROXY_MODES = ("reload", "recreate", "none")
# Compose service names: letters, digits, '.', '_', '-' (compose-spec).
_SERVICE_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]*$")


JOURNAL_TAIL = 5000  # lines of a project's journal read from the host (the survey, the history)

@dataclass(frozen=True)
class ServiceConfig:
    """Per-service rollout settings (``services.NAME``); unset keys inherit the host's."""

    health_timeout: int | None = None
    pre_stop_hook: str | None = None
    stop_timeout: int | None = None
    drain: bool | None = None
    stream_grace: int | None = None
    no_healthcheck_wait: int | None = None  # a service without healthcheck: seconds running = ready


@dataclass(frozen=True)
class ProxyConfig:
    service: str = "caddy"
    mode: str = "reload"
    config: str = "/etc/caddy/Caddyfile"
    drain: bool = True            # route around old containers before stopping them (native engine)
    drain_timeout: int = 60       # seconds to wait for in-flight requests on old containers
    admin: str = "localhost:2019"  # Caddy's admin address, seen from inside the proxy container
    stream_grace: int = 5         # in-flight count flat this long while draining: the rest are streams
    stream_close_delay: str = "5m"  # set on reverse_proxy in the configs zdd loads (Caddy >= 2.7); "" = not
    reload_on_deploy: bool = False  # engine swarm: a graceful reload after the tiers (Swarm needs none)


@dataclass(frozen=True)
class PluginConfig:
    version: str = "v0.13"
    url: str = "https://raw.githubusercontent.com/wowu/docker-rollout/{version}/docker-rollout"
    sha256: str = "fa0df004de84747142cb627c55210aaa914bbae76666e7b95a2ac46805d81a84"

    @property
    def resolved_url(self) -> str:
        return self.url.format(version=self.version)


@dataclass(frozen=True)
class RegistryConfig:
    server: str = ""
    username: str = ""
    username_env: str = ""
    password_env: str = ""
    keep_login: bool = False      # leave the login in ~/.docker/config.json (Swarm's --with-registry-auth)


@dataclass(frozen=True)
class SshConfig:
    hostname: str = ""
    port: int = 0
    user: str = ""
    identity_file: str = ""
    known_hosts: str = ""         # host keys to verify against; "" = ~/.ssh/known_hosts
    verify_host_key: bool = True


@dataclass(frozen=True)
class VerifyConfig:
    urls: tuple[str, ...] = ()
    enabled: bool = True          # run the loop during `deploy` when urls are set
    strict: bool = False          # a deploy that dropped requests exits non-zero
    concurrency: int = 8
    rate: float = 0.0             # requests/s in total; 0 = as fast as possible
    timeout: float = 10.0
    version_regex: str = r"\bv\d+[\w.-]*"
    version_header: str = ""
    max_failures: int = 0
    retry_stale: bool = True      # retry a GET once on a closed idle keep-alive connection, as browsers do
    ws_urls: tuple[str, ...] = ()  # ws:// or wss:// URLs whose connections must survive a deploy
    ws_connections: int = 4       # connections held open per ws URL
    max_ws_gap: float = 0.0       # seconds a websocket may be without a working connection; 0 = report only


@dataclass(frozen=True)
class HostConfig:
    name: str
    dir: str = "~"
    compose_files: tuple[str, ...] = ("docker-compose.yaml",)
    project_name: str = ""
    env_file: str = ""
    engine: str = "docker-rollout"
    stack_name: str = ""          # engine swarm: the stack the compose files are deployed as
    rollout: tuple[tuple[str, ...], ...] = ()
    infra: tuple[str, ...] = ()
    health_timeout: int = 60
    no_healthcheck_wait: int = 10
    pull_timeout: int = 900       # seconds before a hung `docker compose pull` is killed
    pre_stop_hook: str = ""
    stop_timeout: int | None = None
    prune: bool = True
    keep_images: int = 3          # the images of the last N runs survive prune (for rollback)
    lock_stale: int = 1800        # a deploy's lock not renewed for this long is taken over
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    plugin: PluginConfig = field(default_factory=PluginConfig)
    registry: RegistryConfig | None = None
    services: dict[str, ServiceConfig] = field(default_factory=dict)
    ssh: SshConfig = field(default_factory=SshConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)

    @property
    def app_services(self) -> list[str]:
        return [s for tier in self.rollout for s in tier]

    def service(self, name: str) -> "ResolvedService":
        """The rollout settings of one service, host defaults filled in."""
        o = self.services.get(name, ServiceConfig())
        return ResolvedService(
            name=name,
            health_timeout=o.health_timeout if o.health_timeout is not None else self.health_timeout,
            pre_stop_hook=o.pre_stop_hook if o.pre_stop_hook is not None else self.pre_stop_hook,
            stop_timeout=o.stop_timeout if o.stop_timeout is not None else self.stop_timeout,
            drain=o.drain if o.drain is not None else self.proxy.drain,
            stream_grace=o.stream_grace if o.stream_grace is not None else self.proxy.stream_grace,
            no_healthcheck_wait=o.no_healthcheck_wait,
        )


@dataclass(frozen=True)
class ResolvedService:
    name: str
    health_timeout: int
    pre_stop_hook: str
    stop_timeout: int | None
    drain: bool
    stream_grace: int = 5
    no_healthcheck_wait: int | None = None


@dataclass(frozen=True)
class Inventory:
    path: str
    hosts: dict[str, HostConfig]

    def host(self, name: str) -> HostConfig:
        try:
            return self.hosts[name]
        except KeyError:
            known = ", ".join(sorted(self.hosts)) or "none"
            raise ConfigError(f"{self.path}: unknown host {name!r} (known: {known})") from None


# --- schema ---------------------------------------------------------------------------------

_NESTED = {"proxy": ProxyConfig, "plugin": PluginConfig, "registry": RegistryConfig,
           "ssh": SshConfig, "verify": VerifyConfig}


def _check_scalar(key: str, value: Any, expected: str) -> Any:
    """Check one value against a dataclass field's annotation (as a string)."""
    optional = "None" in expected
    base = expected.replace(" | None", "").strip()
    if value is None and optional:
        return None
    if base == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, not {value!r}")
        return value
    if base == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, not {value!r}")
        return value
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, not {value!r}")
        if value < 0:
            raise ConfigError(f"{key} must not be negative ({value})")
        return value
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, not {value!r}")
        if value < 0:
            raise ConfigError(f"{key} must not be negative ({value})")
        return float(value)
    if base == "tuple[str, ...]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a list of strings")
        return tuple(value)
    raise AssertionError(f"no check for {expected}")  # pragma: no cover - schema bug


def _table(key: str, raw: Any, cls: type, extra_ok: tuple[str, ...] = ()) -> dict[str, Any]:
    """Validate a TOML table against a dataclass: unknown keys and wrong types fail."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{key} must be a table")
    known = {f.name: f for f in fields(cls)}
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k in extra_ok:
            continue
        if k not in known or k == "name":
            raise ConfigError(f"{key}.{k}: unknown key (known: {', '.join(sorted(n for n in known if n != 'name'))})")
        out[k] = _check_scalar(f"{key}.{k}", v, str(known[k].type))
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def _services(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ConfigError(f"{key} must be a list of service names")
    for s in value:
        if not _SERVICE_RE.match(s):
            raise ConfigError(f"{key}: {s!r} is not a valid compose service name")
    return tuple(value)


def _build_host(name: str, raw: dict[str, Any], own_services: Any = None) -> HostConfig:
    key = f"hosts.{name}"
    nested_keys = tuple(_NESTED) + ("services", "rollout", "infra")
    top = _table(key, raw, HostConfig, extra_ok=nested_keys)

    rollout_raw = raw.get("rollout", [])
    if not isinstance(rollout_raw, list):
        raise ConfigError(f"{key}.rollout must be a list of tiers (lists of service names)")
    tiers = []
    for i, tier in enumerate(rollout_raw):
        if isinstance(tier, str):  # a flat list of services: one tier each
            tier = [tier]
        t = _services(f"{key}.rollout[{i}]", tier)
        if not t:
            raise ConfigError(f"{key}.rollout[{i}] is an empty tier")
        tiers.append(t)
    infra = _services(f"{key}.infra", raw.get("infra", []))

    seen: set[str] = set()
    for tier in tiers:
        for s in tier:
            if s in seen:
                raise ConfigError(f"{key}.rollout: {s!r} is listed twice")
            seen.add(s)
    for s in infra:
        if s in seen:
            raise ConfigError(f"{key}: {s!r} is in both rollout and infra")
    if len(set(infra)) != len(infra):
        raise ConfigError(f"{key}.infra lists a service twice")

    nested: dict[str, Any] = {}
    for nk, cls in _NESTED.items():
        if nk in raw:
            nested[nk] = cls(**_table(f"{key}.{nk}", raw[nk], cls))
    services = {}
    raw_services = raw.get("services", {})
    if not isinstance(raw_services, dict):
        raise ConfigError(f"{key}.services must be a table of service tables")
    for sname, sraw in raw_services.items():
        services[sname] = ServiceConfig(**_table(f"{key}.services.{sname}", sraw, ServiceConfig))

    host = HostConfig(name=name, rollout=tuple(tiers), infra=infra, services=services, **top, **nested)
    _check_host(key, host)
    # services.NAME must name an app service: checked where it is written (a host that
    # narrows `rollout` may inherit overrides from [defaults] for services it does not roll).
    written = raw_services if own_services is None else own_services
    for sname in written if isinstance(written, dict) else {}:
        if sname not in host.app_services:
            raise ConfigError(f"{key}.services.{sname}: not a service in rollout")
    return host


def _check_host(key: str, h: HostConfig) -> None:
    if h.engine not in ENGINES:
        raise ConfigError(f"{key}.engine must be one of {', '.join(ENGINES)}, not {h.engine!r}")
    if h.engine == "swarm":
        _check_swarm(key, h)
    if h.proxy.stream_close_delay and not re.fullmatch(r"(\d+(\.\d+)?(ns|us|µs|ms|s|m|h|d))+",
                                                        h.proxy.stream_close_delay):
        raise ConfigError(f"{key}.proxy.stream_close_delay must be a duration like \"5m\" or \"\", "
                          f"not {h.proxy.stream_close_delay!r}")
    if h.proxy.mode not in PROXY_MODES:
        raise ConfigError(f"{key}.proxy.mode must be one of {', '.join(PROXY_MODES)}, not {h.proxy.mode!r}")
    if not h.dir:
        raise ConfigError(f"{key}.dir must not be empty")
    if not h.compose_files:
        raise ConfigError(f"{key}.compose_files must name at least one file")
    if h.proxy.service:
        if not _SERVICE_RE.match(h.proxy.service):
            raise ConfigError(f"{key}.proxy.service: {h.proxy.service!r} is not a valid service name")
        if h.proxy.service in h.app_services:
            raise ConfigError(f"{key}.proxy.service {h.proxy.service!r} must not be rolled (it is in rollout)")
    if h.registry is not None:
        r = h.registry
        if not r.server:
            raise ConfigError(f"{key}.registry.server must be set when [registry] is present")
        if not r.password_env:
            raise ConfigError(f"{key}.registry.password_env must name the environment variable holding the token")
        if not (r.username or r.username_env):
            raise ConfigError(f"{key}.registry needs username or username_env")
    if (h.plugin.sha256 or h.engine == "docker-rollout") and not re.fullmatch(r"[0-9a-f]{64}", h.plugin.sha256):
        raise ConfigError(f"{key}.plugin.sha256 must be 64 lowercase hex digits (the docker-rollout file's sha256)")
    if h.proxy.service and h.proxy.service in h.infra:
        raise ConfigError(f"{key}.infra lists the proxy {h.proxy.service!r}: infra-up would recreate it (an outage)")
    if h.ssh.port > 65535:
        raise ConfigError(f"{key}.ssh.port must be a TCP port (1-65535), not {h.ssh.port}")
    if h.verify.timeout <= 0:
        raise ConfigError(f"{key}.verify.timeout must be more than 0 seconds")
    if h.verify.concurrency < 1:
        raise ConfigError(f"{key}.verify.concurrency must be at least 1")
    if h.verify.version_regex:
        try:
            re.compile(h.verify.version_regex)
        except re.error as e:
            raise ConfigError(f"{key}.verify.version_regex is not a valid regex: {e}") from None
    for u in h.verify.urls:
        if not re.match(r"^https?://[^/?#]+", u):
            raise ConfigError(f"{key}.verify.urls: {u!r} is not an http(s) URL")
    if h.verify.ws_connections < 1:
        raise ConfigError(f"{key}.verify.ws_connections must be at least 1")
    for u in h.verify.ws_urls:
        if not re.match(r"^wss?://[^/?#]+", u):
            raise ConfigError(f"{key}.verify.ws_urls: {u!r} is not a ws:// or wss:// URL")


def _check_swarm(key: str, h: HostConfig) -> None:
    if not h.stack_name:
        raise ConfigError(f"{key}.stack_name must name the stack when engine is \"swarm\"")
    if not _SERVICE_RE.match(h.stack_name):
        raise ConfigError(f"{key}.stack_name: {h.stack_name!r} is not a valid stack name")
    if h.env_file:
        raise ConfigError(f"{key}.env_file: docker stack deploy reads no env file; export the variables instead")
    if h.proxy.mode == "recreate":
        raise ConfigError(f"{key}.proxy.mode \"recreate\" is not available with engine swarm (use reload or none)")
    if h.registry is not None and not h.registry.keep_login:
        raise ConfigError(f"{key}.registry.keep_login must be true with engine swarm: --with-registry-auth hands "
                          "Swarm the login of ~/.docker/config.json, so the pull's login must stay there")


def parse(text: str, path: str = "hosts.toml") -> Inventory:
    """Parse and validate the text of a hosts file."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    unknown = set(data) - {"defaults", "hosts"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key {sorted(unknown)[0]!r} (known: defaults, hosts)")
    defaults = data.get("defaults", {})
    hosts_raw = data.get("hosts", {})
    if not isinstance(defaults, dict) or not isinstance(hosts_raw, dict):
        raise ConfigError(f"{path}: [defaults] and [hosts.NAME] must be tables")
    # Validate [defaults] on its own too, so an error there names 'defaults', not a host.
    if defaults:
        try:
            _build_host("defaults", defaults)
        except ConfigError as e:
            raise ConfigError(f"{path}: {str(e).replace('hosts.defaults', 'defaults', 1)}") from None
    hosts = {}
    for name, raw in hosts_raw.items():
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: hosts.{name} must be a table")
        try:
            hosts[name] = _build_host(name, _merge(defaults, raw), own_services=raw.get("services", {}))
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    return Inventory(path=path, hosts=hosts)


def load(path: str | os.PathLike[str]) -> Inventory:
    """Read and validate a hosts file; a missing or invalid file is a ConfigError."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such hosts file (set hosts_file, e.g. FABRIC_HOSTS_FILE=…)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    return parse(text, str(path))
