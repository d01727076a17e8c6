"""hosts.toml: the one typed loader for per-host settings.

The file has a ``[defaults]`` table that every host inherits and one ``[hosts.NAME]``
table per host (NAME is the ssh alias given to ``fab -H``) that overrides it key by key;
nested tables (``proxy``, ``plugin``, ``registry``, ``services.X``, ``ssh``, ``verify``)
merge key by key too. The whole file is validated before any host is touched: every
problem is a :class:`ConfigError` whose message names the key.

Every key is documented in :mod:`fabfile.config_model`, beside the dataclass field that
holds it; the limits zdd sets itself are in :mod:`fabfile.config_limits`.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from .config_limits import (  # noqa: F401  (re-exported: the limits zdd sets itself)
    DEFAULT_VERSION_REGEX,
    DRAIN_MARGIN,
    HEALTH_MARGIN,
    JOURNAL_TAIL,
    LOCK_WAIT,
    PIN_WAIT,
    RESTORE_MARGIN,
    STOP_GRACE,
    SWARM_ANSWER_MARGIN,
    SWARM_TASK_MARGIN,
    SWITCH_WAIT,
    UNDO_WAIT,
)
from .config_model import (  # noqa: F401
    ENGINES,
    PROXY_MODES,
    CanaryConfig,
    ConfigError,
    HooksConfig,
    HostConfig,
    Inventory,
    NotifyConfig,
    PluginConfig,
    ProxyConfig,
    RegistryConfig,
    ResolvedService,
    ServiceConfig,
    SshConfig,
    VerifyConfig,
    WatchConfig,
)

_SERVICE_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]*$")


# --- schema ---------------------------------------------------------------------------------

_NESTED = {
    "proxy": ProxyConfig,
    "plugin": PluginConfig,
    "registry": RegistryConfig,
    "ssh": SshConfig,
    "verify": VerifyConfig,
    "hooks": HooksConfig,
    "notify": NotifyConfig,
    "canary": CanaryConfig,
    "watch": WatchConfig,
}


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
    if base == "tuple[int, ...]":
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{key} must be a list of integers")
        return tuple(value)
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
            table = raw[nk]
            if nk == "notify" and isinstance(table, dict) and isinstance(table.get("sentry_project"), str):
                table = {**table, "sentry_project": [table["sentry_project"]]}  # one project or a list
            nested[nk] = cls(**_table(f"{key}.{nk}", table, cls))
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
    if h.proxy.stream_close_delay and not re.fullmatch(
        r"(\d+(\.\d+)?(ns|us|µs|ms|s|m|h|d))+", h.proxy.stream_close_delay
    ):
        raise ConfigError(
            f'{key}.proxy.stream_close_delay must be a duration like "5m" or "", not {h.proxy.stream_close_delay!r}'
        )
    if h.proxy.mode not in PROXY_MODES:
        raise ConfigError(f"{key}.proxy.mode must be one of {', '.join(PROXY_MODES)}, not {h.proxy.mode!r}")
    if not h.dir:
        raise ConfigError(f"{key}.dir must not be empty")
    if h.lock_stale <= h.pull_timeout:
        raise ConfigError(
            f"{key}.lock_stale ({h.lock_stale} s) must be more than pull_timeout ({h.pull_timeout} s): "
            "a deploy renews its lock only once the pull is done"
        )
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
    _check_notify(f"{key}.notify", h)
    check_canary(f"{key}.canary", h.canary)
    _check_share(f"{key}.watch.max_error_rate", h.watch.max_error_rate)
    if h.watch.seconds and h.engine != "native":
        raise ConfigError(f'{key}.watch: a watch after the switch needs engine "native" (it keeps the old containers)')
    if h.hooks.timeout <= 0:
        raise ConfigError(f"{key}.hooks.timeout must be more than 0 seconds")
    if not h.hooks.dir:
        raise ConfigError(f"{key}.hooks.dir must not be empty (default .zdd/hooks)")


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_notify(key: str, h: HostConfig) -> None:
    n = h.notify
    for name in ("grafana_url", "sentry_url", "webhook_url"):
        value = getattr(n, name)
        if value and not re.match(r"^https?://[^/?#]+", value):
            raise ConfigError(f"{key}.{name}: {value!r} is not an http(s) URL")
    for name in ("grafana_token_env", "sentry_token_env", "webhook_url_env"):
        value = getattr(n, name)
        if value and not _ENV_NAME.match(value):
            raise ConfigError(
                f"{key}.{name} must name an environment variable (the token never goes in this file), not {value!r}"
            )
    if n.grafana_url and not n.grafana_token_env:
        raise ConfigError(f"{key}.grafana_token_env must name the variable holding Grafana's token")
    if n.sentry_org:
        if not n.sentry_project:
            raise ConfigError(f"{key}.sentry_project must name the Sentry project(s) of the release")
        if not n.sentry_token_env:
            raise ConfigError(f"{key}.sentry_token_env must name the variable holding Sentry's auth token")
        if not n.sentry_url:
            raise ConfigError(f"{key}.sentry_url must not be empty (default https://sentry.io)")
    elif n.sentry_project or n.sentry_token_env:
        raise ConfigError(f"{key}.sentry_org must be set for a Sentry release (sentry_project, sentry_token_env)")
    if n.webhook_url and n.webhook_url_env:
        raise ConfigError(f"{key}: webhook_url and webhook_url_env both set; keep one")
    if n.timeout <= 0:
        raise ConfigError(f"{key}.timeout must be more than 0 seconds")


def _check_share(key: str, value: float) -> None:
    if value > 1:
        raise ConfigError(f"{key} is a share of the answers (0.01 = 1 %), not {value}")


def check_canary(key: str, c: CanaryConfig) -> None:
    """The canary settings (also those of ``deploy --canary``): steps strictly rising, 1-99 %."""
    if any(not 0 < p < 100 for p in c.steps):
        raise ConfigError(f"{key}.steps must be percentages between 1 and 99 (100 is the switch), not {list(c.steps)}")
    if list(c.steps) != sorted(set(c.steps)):
        raise ConfigError(f"{key}.steps must rise, each step more than the one before, not {list(c.steps)}")
    if c.step_seconds < 1:
        raise ConfigError(f"{key}.step_seconds must be at least 1")
    _check_share(f"{key}.max_error_rate", c.max_error_rate)
    if 0 < c.max_latency_ratio <= 1:
        raise ConfigError(f"{key}.max_latency_ratio must be more than 1 (or 0 for off), not {c.max_latency_ratio}")


def _check_swarm(key: str, h: HostConfig) -> None:
    if not h.stack_name:
        raise ConfigError(f'{key}.stack_name must name the stack when engine is "swarm"')
    if not _SERVICE_RE.match(h.stack_name):
        raise ConfigError(f"{key}.stack_name: {h.stack_name!r} is not a valid stack name")
    if h.env_file:
        raise ConfigError(f"{key}.env_file: docker stack deploy reads no env file; export the variables instead")
    if h.proxy.mode == "recreate":
        raise ConfigError(f'{key}.proxy.mode "recreate" is not available with engine swarm (use reload or none)')
    if h.canary.steps:
        raise ConfigError(f"{key}.canary.steps: canary steps are not available with engine swarm (Swarm routes)")


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
            host = _build_host(name, _merge(defaults, raw), own_services=raw.get("services", {}))
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        hosts[name] = replace(host, hooks=replace(host.hooks, dir=_beside(path, host.hooks.dir)))
    return Inventory(path=path, hosts=hosts)


def _beside(path: str, d: str) -> str:
    """``d`` relative to the hosts file's directory (``~`` expanded), as an absolute path."""
    p = Path(os.path.expanduser(d))
    return str(p if p.is_absolute() else Path(os.path.expanduser(path)).resolve().parent / p)


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
