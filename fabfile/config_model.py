"""The typed settings of one host, as :mod:`fabfile.config` loads them from hosts.toml: frozen
dataclasses, whose defaults are the defaults of the file (nothing changes them after loading).

Keys (types and defaults in the dataclasses below):

* ``dir`` – project directory on the host; ``~/`` is the remote user's home.
* ``compose_files`` – compose files, relative to ``dir``. ``project_name``/``env_file``
  become ``-p``/``--env-file`` when not empty.
* ``engine`` – ``"native"`` (built in), ``"docker-rollout"`` (the CLI plugin) or ``"swarm"``
  (the host is a Docker Swarm manager and the compose files are a stack's: Swarm replaces
  the tasks, zdd plans, orders the tiers and waits; see fabfile/engines/swarm.py).
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
  login goes to a temporary Docker config removed after the pull, unless ``keep_login``
  (then it stays in ``~/.docker/config.json``). Engine swarm logs in the same way a second
  time for the ``docker service update`` and ``docker stack deploy`` that hand Swarm the
  login (``--with-registry-auth``: the nodes pull for their tasks with it): to a temporary
  config of swarm_tier.sh, the token on its stdin, removed when it ends; with ``keep_login``
  they use the login in ``~/.docker`` instead. Either way Swarm keeps the login it was
  handed in its own (encrypted) store, as long as a service's spec uses it.
* ``ssh`` – optional connection details for hosts without an ssh-config entry.
* ``verify`` – what the loop that proves a deploy dropped nothing hits: ``urls`` (http(s),
  requested in a loop) and ``ws_urls`` (ws:// or wss://; ``ws_connections`` connections
  are held open to each for the whole deploy, and every disconnect is reported), and how:
  ``concurrency``, ``rate``, ``timeout``, ``version_regex``/``version_header``,
  ``max_failures``, ``retry_stale`` (false: a request on a kept-alive connection that the
  server closed counts as failed), ``max_ws_gap`` (seconds a websocket may go without a
  working connection before the run fails; 0 = only report), ``enabled``, ``strict``.
* ``hooks`` – executables of the team's own, run where fab runs (never on the host) by
  ``deploy`` and ``rollback`` (see fabfile/hooks.py for the names and their ``ZDD_*``
  variables): ``dir`` (default ``.zdd/hooks``, relative to the hosts file's directory; a
  missing directory or file is no hook) and ``timeout`` (seconds, default 300: a hook still
  running then is killed and counts as failed). A pre-hook that fails stops the run before
  anything changes; a post-hook's failure is only reported. ``fab deploy --skip-hooks`` runs none.
* ``notify`` – release markers sent where fab runs once a ``deploy`` or ``rollback`` is over
  (see fabfile/notify.py for the payloads): ``grafana_url`` + ``grafana_token_env`` (an
  annotation spanning the run), ``sentry_org`` + ``sentry_project`` (a string or a list) +
  ``sentry_token_env`` (+ ``sentry_url``, default https://sentry.io; a release named after the
  new images and a deploy to ``environment``, default the host's name), ``webhook_url`` or
  ``webhook_url_env`` (a chat message ``{"text": ...}``; Slack and Mattermost take it,
  Discord at its webhook URL + ``/slack``), ``report_url`` (a link in that message; ``{run}``
  and ``{host}`` are filled in; in GitHub Actions the job's page by default) and ``timeout``
  (seconds per request, default 5). Tokens are read from the environment (or ``.env``) only,
  by the variable names given here, and travel only in the Authorization header; a notifier
  that is down or slow costs one warning line, never the run.
* ``canary`` – a guarded release (see fabfile/canary.py): once a tier's new containers are
  healthy, the proxy sends them ``steps`` (percentages, one step after another; ``[]`` = switch
  at once) of each rolling service's requests, the old containers the rest, each step for at
  least ``step_seconds``. The new containers' responses, as the proxy logged them per upstream,
  are judged every second: once they answered ``min_requests``, a share of 5xx (and proxy
  errors) over ``max_error_rate``, or (``max_latency_ratio`` > 0) a p95 latency over that many
  times the old containers', sends the tier back to its old containers and removes the new
  ones. A step whose new containers never answer ``min_requests`` within 3 × ``step_seconds``
  passes with a note (a quiet service is not a failure). Needs Caddy 2.8 or newer and
  ``proxy.drain``. ``fab deploy --canary 10,50`` / ``--no-canary`` override the steps for a run.
* ``watch`` – after the last tier's switch, ``seconds`` (0 = off) more of judging every service
  that rolled on what the proxy logs of its new containers, the old ones kept running out of
  rotation: once the new containers answered ``min_requests``, a share of 5xx over
  ``max_error_rate`` switches the traffic straight back to the old containers (one proxy load)
  and removes the new ones; the run fails ("rolled back"). After a clean watch the old
  containers are retired as usual. Engine native only; Caddy 2.8+. ``fab deploy --watch
  SECONDS`` overrides ``seconds`` for a run.
"""

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
    drain: bool = True  # route around old containers before stopping them (native engine)
    drain_timeout: int = 60  # seconds to wait for in-flight requests on old containers
    admin: str = "localhost:2019"  # Caddy's admin address, seen from inside the proxy container
    stream_grace: int = 5  # in-flight count flat this long while draining: the rest are streams
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
    keep_login: bool = False  # leave the login in ~/.docker/config.json (swarm: and hand Swarm that one)


@dataclass(frozen=True)
class SshConfig:
    hostname: str = ""
    port: int = 0
    user: str = ""
    identity_file: str = ""
    known_hosts: str = ""  # host keys to verify against; "" = ~/.ssh/known_hosts
    verify_host_key: bool = True


@dataclass(frozen=True)
class VerifyConfig:
    urls: tuple[str, ...] = ()
    enabled: bool = True  # run the loop during `deploy` when urls are set
    strict: bool = False  # a deploy that dropped requests exits non-zero
    concurrency: int = 8
    rate: float = 0.0  # requests/s in total; 0 = as fast as possible
    timeout: float = 10.0
    version_regex: str = DEFAULT_VERSION_REGEX
    version_header: str = ""
    max_failures: int = 0
    retry_stale: bool = True  # retry a GET once on a closed idle keep-alive connection, as browsers do
    ws_urls: tuple[str, ...] = ()  # ws:// or wss:// URLs whose connections must survive a deploy
    ws_connections: int = 4  # connections held open per ws URL
    max_ws_gap: float = 0.0  # seconds a websocket may be without a working connection; 0 = report only


@dataclass(frozen=True)
class HooksConfig:
    dir: str = ".zdd/hooks"  # executables pre-deploy, post-deploy...; relative to the hosts file
    timeout: float = 300.0  # seconds before a hook is killed (a pre-hook that times out stops the run)


@dataclass(frozen=True)
class NotifyConfig:
    grafana_url: str = ""  # POST /api/annotations
    grafana_token_env: str = ""  # the variable holding Grafana's token (sent as a Bearer token)
    sentry_url: str = "https://sentry.io"
    sentry_org: str = ""  # set: a Sentry release and deploy per run that rolled something
    sentry_project: tuple[str, ...] = ()  # a string or a list in hosts.toml
    sentry_token_env: str = ""
    webhook_url: str = ""  # chat: POST {"text": ...} (Slack, Mattermost; Discord: .../slack)
    webhook_url_env: str = ""  # or the variable holding it (a Slack webhook URL is a secret)
    environment: str = ""  # Sentry's environment; "" = the host's name
    report_url: str = ""  # a link for the chat message; {run} and {host} are filled in
    timeout: float = 5.0  # seconds per request; a notifier never fails a run

    @property
    def any(self) -> bool:
        return bool(self.grafana_url or self.sentry_org or self.webhook_url or self.webhook_url_env)


@dataclass(frozen=True)
class CanaryConfig:
    steps: tuple[int, ...] = ()  # % of a rolling service's requests to its new containers, step by step
    step_seconds: int = 30  # each step lasts at least this long
    min_requests: int = 20  # the new containers' answers before a step is judged
    max_error_rate: float = 0.01  # share of 5xx among the new containers' answers that aborts
    max_latency_ratio: float = 0.0  # new p95 / old p95 that aborts; 0 = off


@dataclass(frozen=True)
class WatchConfig:
    seconds: int = 0  # after the last switch, keep judging this long; 0 = off
    max_error_rate: float = 0.01  # share of 5xx among the new containers' answers that switches back
    min_requests: int = 20  # the new containers' answers before the watch judges


@dataclass(frozen=True)
class HostConfig:
    name: str
    dir: str = "~"
    compose_files: tuple[str, ...] = ("docker-compose.yaml",)
    project_name: str = ""
    env_file: str = ""
    engine: str = "docker-rollout"
    stack_name: str = ""  # engine swarm: the stack the compose files are deployed as
    rollout: tuple[tuple[str, ...], ...] = ()
    infra: tuple[str, ...] = ()
    health_timeout: int = 60
    no_healthcheck_wait: int = 10
    pull_timeout: int = 900  # seconds before a hung `docker compose pull` is killed
    pre_stop_hook: str = ""
    stop_timeout: int | None = None
    prune: bool = True
    keep_images: int = 3  # the images of the last N runs survive prune (for rollback)
    lock_stale: int = 1800  # a deploy's lock not renewed for this long is taken over
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    plugin: PluginConfig = field(default_factory=PluginConfig)
    registry: RegistryConfig | None = None
    services: dict[str, ServiceConfig] = field(default_factory=dict)
    ssh: SshConfig = field(default_factory=SshConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    hooks: HooksConfig = field(default_factory=HooksConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    canary: CanaryConfig = field(default_factory=CanaryConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)

    @property
    def app_services(self) -> list[str]:
        return [s for tier in self.rollout for s in tier]

    def service(self, name: str) -> ResolvedService:
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
