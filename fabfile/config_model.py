"""The typed settings of one host, as :mod:`fabfile.config` loads them from hosts.toml (whose
docstring documents every key). Frozen dataclasses: nothing changes them after loading."""

from __future__ import annotations

from dataclasses import dataclass, field

from .config_limits import DEFAULT_VERSION_REGEX


class ConfigError(Exception):
    """hosts.toml is missing, malformed or inconsistent (one line, names the key)."""


ENGINES = ("native", "docker-rollout", "swarm")
PROXY_MODES = ("reload", "recreate", "none")
# Compose service names: letters, digits, '.', '_', '-' (compose-spec).
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
    version_regex: str = DEFAULT_VERSION_REGEX
    version_header: str = ""
    max_failures: int = 0
    retry_stale: bool = True      # retry a GET once on a closed idle keep-alive connection, as browsers do
    ws_urls: tuple[str, ...] = ()  # ws:// or wss:// URLs whose connections must survive a deploy
    ws_connections: int = 4       # connections held open per ws URL
    max_ws_gap: float = 0.0       # seconds a websocket may be without a working connection; 0 = report only


@dataclass(frozen=True)
class HooksConfig:
    dir: str = ".zdd/hooks"       # executables pre-deploy, post-deploy...; relative to the hosts file
    timeout: float = 300.0        # seconds before a hook is killed (a pre-hook that times out stops the run)


@dataclass(frozen=True)
class NotifyConfig:
    grafana_url: str = ""         # POST /api/annotations
    grafana_token_env: str = ""   # the variable holding Grafana's token (sent as a Bearer token)
    sentry_url: str = "https://sentry.io"
    sentry_org: str = ""          # set: a Sentry release and deploy per run that rolled something
    sentry_project: tuple[str, ...] = ()  # a string or a list in hosts.toml
    sentry_token_env: str = ""
    webhook_url: str = ""         # chat: POST {"text": ...} (Slack, Mattermost; Discord: .../slack)
    webhook_url_env: str = ""     # or the variable holding it (a Slack webhook URL is a secret)
    environment: str = ""         # Sentry's environment; "" = the host's name
    report_url: str = ""          # a link for the chat message; {run} and {host} are filled in
    timeout: float = 5.0          # seconds per request; a notifier never fails a run

    @property
    def any(self) -> bool:
        return bool(self.grafana_url or self.sentry_org or self.webhook_url or self.webhook_url_env)


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
    hooks: HooksConfig = field(default_factory=HooksConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)

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
