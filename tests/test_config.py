"""Unit tests for fabfile.config: the shipped hosts.toml and the loader's validation."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fabfile.config import (
    ConfigError,
    HostConfig,
    ProxyConfig,
    ResolvedService,
    ServiceConfig,
    load,
    parse,
)
from fabfile.verify import settings_for_host

HOSTS_TOML = Path(__file__).resolve().parent.parent / "hosts.toml"

BASE = """
[defaults]
dir = "~/app"
rollout = [["server", "property"], ["identity"]]
infra = ["redis"]
"""


def host(extra: str, name: str = "h", base: str = BASE) -> HostConfig:
    text = base + f"\n[hosts.{name}]\n" + extra + "\n"
    return parse(text).host(name)


def error(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse(text)
    return str(e.value)


# --- the shipped hosts.toml ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def inv():
    return load(HOSTS_TOML)


@pytest.fixture(scope="module")
def raw():
    return tomllib.loads(HOSTS_TOML.read_text())


def test_shipped_file_loads_with_its_hosts(inv):
    assert {"reminet-staging", "reminet-prod", "sandbox"} <= set(inv.hosts)
    assert inv.path == str(HOSTS_TOML)


def test_staging_values(inv):
    h = inv.host("reminet-staging")
    assert h.name == "reminet-staging"
    assert h.dir == "~/remilia/staging"
    assert h.compose_files == ("docker-compose.yaml", "infra/staging/docker-compose.override.yaml")
    assert h.infra == ("mongodb", "redis", "keycloak-postgres", "keycloak", "node-exporter", "cadvisor", "alloy")
    assert h.rollout == (("server", "property"), ("identity",), ("profile-server",))
    assert h.app_services == ["server", "property", "identity", "profile-server"]
    assert h.engine == "docker-rollout"
    assert h.registry is not None
    assert (h.registry.server, h.registry.username_env, h.registry.password_env) == (
        "ghcr.io",
        "GH_ACTOR",
        "GH_PACKAGES_TOKEN",
    )


def test_prod_values(inv):
    h = inv.host("reminet-prod")
    assert h.dir == "~/remilia/production"
    assert h.compose_files == ("docker-compose.yaml", "infra/production/docker-compose.override.yaml")
    assert h.infra == ("redis", "node-exporter", "cadvisor", "alloy")
    assert "mongodb" not in h.infra
    assert h.engine == "docker-rollout"
    assert h.registry.password_env == "GH_PACKAGES_TOKEN"


def test_sandbox_values(inv):
    h = inv.host("sandbox")
    assert h.dir == "~/remilia"
    assert h.compose_files == ("docker-compose.yaml",)  # from [defaults]
    assert h.infra == ("mongodb", "redis")  # from [defaults]
    assert h.engine == "native"
    assert h.health_timeout == 30
    r = h.registry
    assert (r.server, r.username, r.username_env, r.password_env) == (
        "127.0.0.1:15000",
        "zdd",
        "",
        "ZDD_SANDBOX_REGISTRY_PASSWORD",
    )
    assert h.ssh.hostname == "127.0.0.1" and h.ssh.port == 22022 and h.ssh.user == "zddsbx"
    assert h.verify.urls and all(u.startswith("http://127.0.0.1:18080/") for u in h.verify.urls)


@pytest.mark.parametrize("name", ["reminet-staging", "reminet-prod", "sandbox"])
def test_every_host_gets_the_merged_defaults(inv, raw, name):
    d = raw["defaults"]
    h = inv.host(name)
    assert h.proxy.service == d["proxy"]["service"] == "caddy"
    assert h.proxy.mode == d["proxy"]["mode"] == "reload"
    assert h.proxy.config == d["proxy"]["config"]
    assert h.proxy.drain is d["proxy"]["drain"]
    assert h.proxy.drain_timeout == d["proxy"]["drain_timeout"]
    assert h.plugin.version == d["plugin"]["version"]
    assert h.plugin.sha256 == d["plugin"]["sha256"]
    assert h.plugin.resolved_url == d["plugin"]["url"].format(version=d["plugin"]["version"])
    assert "{version}" not in h.plugin.resolved_url
    assert h.prune is d["prune"]
    assert h.pre_stop_hook == d["pre_stop_hook"]


def test_shipped_file_values_match_the_raw_toml(inv, raw):
    """Whatever a [hosts.X] table sets wins over [defaults]; the rest is inherited."""
    for name, table in raw["hosts"].items():
        h = inv.host(name)
        for key in ("dir", "engine", "health_timeout", "project_name", "env_file"):
            want = table.get(key, raw["defaults"].get(key))
            if want is not None:
                assert getattr(h, key) == want, (name, key)
        want_files = table.get("compose_files", raw["defaults"]["compose_files"])
        assert list(h.compose_files) == want_files


# --- merging -------------------------------------------------------------------------------------

MERGE_BASE = (
    BASE
    + """
[defaults.proxy]
service = "edge"
mode = "reload"
config = "/srv/Caddyfile"
drain_timeout = 15

[defaults.registry]
server = "ghcr.io"
username_env = "GH_ACTOR"
password_env = "GH_TOKEN"

[defaults.services.server]
health_timeout = 120
"""
)


def test_host_overrides_a_scalar_and_keeps_the_rest():
    h = host('dir = "~/other"\nhealth_timeout = 5', base=MERGE_BASE)
    assert h.dir == "~/other"
    assert h.health_timeout == 5
    assert h.infra == ("redis",)
    assert h.rollout == (("server", "property"), ("identity",))


def test_nested_table_merges_key_by_key():
    h = host('[hosts.h.proxy]\nmode = "none"', base=MERGE_BASE)
    assert h.proxy.mode == "none"
    assert h.proxy.service == "edge"  # kept from defaults
    assert h.proxy.config == "/srv/Caddyfile"
    assert h.proxy.drain_timeout == 15
    assert h.proxy.admin == ProxyConfig().admin  # dataclass default


def test_registry_merges_key_by_key():
    h = host('[hosts.h.registry]\npassword_env = "OTHER_TOKEN"', base=MERGE_BASE)
    assert (h.registry.server, h.registry.username_env, h.registry.password_env) == (
        "ghcr.io",
        "GH_ACTOR",
        "OTHER_TOKEN",
    )


def test_lists_are_replaced_not_appended():
    h = host('compose_files = ["a.yaml", "b.yaml"]\ninfra = []', base=MERGE_BASE)
    assert h.compose_files == ("a.yaml", "b.yaml")
    assert h.infra == ()


def test_services_tables_merge_per_key():
    h = host('[hosts.h.services.server]\npre_stop_hook = "sleep 2"', base=MERGE_BASE)
    assert h.services["server"] == ServiceConfig(health_timeout=120, pre_stop_hook="sleep 2")


def test_defaults_are_not_mutated_between_hosts():
    inv = parse(MERGE_BASE + '[hosts.a.proxy]\nmode = "none"\n[hosts.b]\n')
    assert inv.host("a").proxy.mode == "none"
    assert inv.host("b").proxy.mode == "reload"


def test_flat_rollout_list_is_one_tier_each():
    h = host('rollout = ["server", ["property", "identity"]]')
    assert h.rollout == (("server",), ("property", "identity"))


def test_host_without_registry_has_none():
    assert host("").registry is None


# --- HostConfig.service ------------------------------------------------------------------------


def test_service_resolves_overrides_over_host_defaults():
    h = host("""
health_timeout = 40
pre_stop_hook = "true"
stop_timeout = 7
[hosts.h.proxy]
drain = true
[hosts.h.services.server]
health_timeout = 90
drain = false
[hosts.h.services.identity]
pre_stop_hook = "sleep 1"
stop_timeout = 30
""")
    assert h.service("server") == ResolvedService("server", 90, "true", 7, False)
    assert h.service("identity") == ResolvedService("identity", 40, "sleep 1", 30, True)
    assert h.service("property") == ResolvedService("property", 40, "true", 7, True)


def test_service_zero_override_is_not_treated_as_unset():
    h = host(
        'health_timeout = 40\n[hosts.h.services.server]\nhealth_timeout = 0\npre_stop_hook = ""',
        base=BASE.replace("[defaults]", '[defaults]\npre_stop_hook = "x"'),
    )
    s = h.service("server")
    assert s.health_timeout == 0
    assert s.pre_stop_hook == ""


# --- validation errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, needles",
    [
        # unknown keys
        ('colour = "red"', ["hosts.h.colour", "unknown key"]),
        ('[hosts.h.proxy]\nmoed = "reload"', ["hosts.h.proxy.moed", "unknown key"]),
        ('[hosts.h.plugin]\nchecksum = "x"', ["hosts.h.plugin.checksum", "unknown key"]),
        ("[hosts.h.services.server]\ntimeout = 3", ["hosts.h.services.server.timeout", "unknown key"]),
        ('name = "x"', ["hosts.h.name", "unknown key"]),
        # wrong types
        ('health_timeout = "60"', ["hosts.h.health_timeout", "must be an integer"]),
        ("health_timeout = true", ["hosts.h.health_timeout", "must be an integer"]),
        ("health_timeout = 1.5", ["hosts.h.health_timeout", "must be an integer"]),
        ("health_timeout = -1", ["hosts.h.health_timeout", "negative"]),
        ("[hosts.h.proxy]\ndrain_timeout = true", ["hosts.h.proxy.drain_timeout", "must be an integer"]),
        ('[hosts.h.services.server]\nhealth_timeout = "9"', ["hosts.h.services.server.health_timeout", "integer"]),
        ("compose_files = 3", ["hosts.h.compose_files", "list of strings"]),
        ('compose_files = "docker-compose.yaml"', ["hosts.h.compose_files", "list of strings"]),
        ("compose_files = []", ["hosts.h.compose_files", "at least one"]),
        ("infra = 3", ["hosts.h.infra", "list"]),
        ("rollout = 3", ["hosts.h.rollout", "list"]),
        ("prune = 1", ["hosts.h.prune", "true or false"]),
        ("dir = 5", ["hosts.h.dir", "must be a string"]),
        ('dir = ""', ["hosts.h.dir", "empty"]),
        ('proxy = "caddy"', ["hosts.h.proxy", "table"]),
        ('[hosts.h.ssh]\nport = "22"', ["hosts.h.ssh.port", "integer"]),
        ("[hosts.h.verify]\nrate = true", ["hosts.h.verify.rate", "number"]),
        # consistency
        ('infra = ["redis", "server"]', ["hosts.h", "'server'", "both rollout and infra"]),
        ('rollout = [["server"], []]', ["hosts.h.rollout[1]", "empty tier"]),
        ('rollout = [["server"], ["property", "server"]]', ["hosts.h.rollout", "'server'", "twice"]),
        ('infra = ["redis", "redis"]', ["hosts.h.infra", "twice"]),
        ('rollout = [["bad name"]]', ["hosts.h.rollout[0]", "'bad name'"]),
        ('engine = "kubectl"', ["hosts.h.engine", "native", "docker-rollout", "'kubectl'"]),
        ('[hosts.h.proxy]\nmode = "restart"', ["hosts.h.proxy.mode", "reload", "'restart'"]),
        ('[hosts.h.proxy]\nservice = "server"', ["hosts.h.proxy.service", "rollout"]),
        ('[hosts.h.registry]\nserver = "ghcr.io"\nusername = "u"', ["hosts.h.registry.password_env"]),
        ('[hosts.h.registry]\nusername = "u"\npassword_env = "T"', ["hosts.h.registry.server"]),
        ('[hosts.h.registry]\nserver = "ghcr.io"\npassword_env = "T"', ["hosts.h.registry", "username"]),
        ("[hosts.h.services.mongodb]\nhealth_timeout = 5", ["hosts.h.services.mongodb", "not a service in rollout"]),
        ('[hosts.h.plugin]\nsha256 = "abc"', ["hosts.h.plugin.sha256", "64"]),
        ('[hosts.h.plugin]\nsha256 = "' + "A" * 64 + '"', ["hosts.h.plugin.sha256"]),
        ('[hosts.h.verify]\nurls = ["ftp://x"]', ["hosts.h.verify.urls", "ftp://x"]),
        ("[hosts.h.verify]\nconcurrency = 0", ["hosts.h.verify.concurrency"]),
        ('[hosts.h.verify]\nws_urls = ["http://x/ws"]', ["hosts.h.verify.ws_urls", "'http://x/ws'", "ws://"]),
        ('[hosts.h.verify]\nws_urls = ["ws://"]', ["hosts.h.verify.ws_urls", "'ws://'"]),
        ('[hosts.h.verify]\nws_urls = "ws://x/ws"', ["hosts.h.verify.ws_urls", "list of strings"]),
        ("[hosts.h.verify]\nws_connections = 0", ["hosts.h.verify.ws_connections", "at least 1"]),
        ("[hosts.h.verify]\nws_connections = 2.5", ["hosts.h.verify.ws_connections", "integer"]),
        ("[hosts.h.verify]\nmax_ws_gap = -1", ["hosts.h.verify.max_ws_gap", "negative"]),
    ],
)
def test_validation_error_names_the_key(extra, needles):
    msg = error(BASE + "\n[hosts.h]\n" + extra + "\n")
    assert msg.startswith("hosts.toml: "), msg
    for n in needles:
        assert n in msg, (n, msg)
    assert "\n" not in msg


def test_error_in_defaults_names_defaults():
    msg = error(BASE.replace("[defaults]", '[defaults]\nhealth_timeout = "x"') + "\n[hosts.h]\n")
    assert "defaults.health_timeout" in msg and "hosts.defaults" not in msg


def test_error_in_defaults_nested_table_names_defaults():
    msg = error(BASE + '\n[defaults.proxy]\nmoed = "x"\n[hosts.h]\n')
    assert "defaults.proxy.moed: unknown key" in msg


def test_unknown_top_level_key():
    msg = error("host = {}\n" + BASE)
    assert "unknown top-level key 'host'" in msg


def test_host_table_must_be_a_table():
    assert "hosts.h must be a table" in error(BASE + "\n[hosts]\nh = 3\n")


def test_unknown_key_lists_the_known_ones():
    msg = error(BASE + '\n[hosts.h.proxy]\nmoed = "x"\n')
    assert "known:" in msg and "mode" in msg and "drain_timeout" in msg


def test_valid_sha256_accepted_and_empty_only_without_the_plugin():
    assert host('[hosts.h.plugin]\nsha256 = "' + "0f" * 32 + '"').plugin.sha256 == "0f" * 32
    assert host('engine = "native"\n[hosts.h.plugin]\nsha256 = ""').plugin.sha256 == ""
    assert "hosts.h.plugin.sha256 must be 64 lowercase hex digits" in error(
        BASE + '\n[hosts.h]\n[hosts.h.plugin]\nsha256 = ""'
    )


def test_proxy_in_infra_port_range_and_verify_timeout_are_checked():
    assert "hosts.h.infra lists the proxy 'caddy'" in error(BASE + '\n[hosts.h]\ninfra = ["redis", "caddy"]')
    assert "hosts.h.ssh.port must be a TCP port" in error(BASE + "\n[hosts.h]\n[hosts.h.ssh]\nport = 99999")
    assert "hosts.h.verify.timeout must be more than 0" in error(BASE + "\n[hosts.h]\n[hosts.h.verify]\ntimeout = 0")
    assert "is not an http(s) URL" in error(BASE + '\n[hosts.h]\n[hosts.h.verify]\nurls = ["http://"]')


def test_unknown_host_lists_known_hosts(inv):
    with pytest.raises(ConfigError) as e:
        inv.host("reminet-dev")
    msg = str(e.value)
    assert "unknown host 'reminet-dev'" in msg
    assert "reminet-prod" in msg and "reminet-staging" in msg and "sandbox" in msg
    assert str(HOSTS_TOML) in msg


def test_unknown_host_in_empty_inventory():
    with pytest.raises(ConfigError, match=r"known: none"):
        parse(BASE).host("x")


def test_invalid_toml():
    msg = error('[defaults]\ndir = "unterminated\n')
    assert msg.startswith("hosts.toml: not valid TOML")


def test_invalid_toml_in_a_file_names_the_file(tmp_path):
    p = tmp_path / "broken.toml"
    p.write_text("[hosts.h\n")
    with pytest.raises(ConfigError) as e:
        load(p)
    assert str(p) in str(e.value) and "not valid TOML" in str(e.value)


def test_missing_file(tmp_path):
    p = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as e:
        load(p)
    assert str(p) in str(e.value) and "no such hosts file" in str(e.value)


def test_load_reads_a_file(tmp_path):
    p = tmp_path / "hosts.toml"
    p.write_text(BASE + '\n[hosts.one]\nengine = "native"\n')
    inv = load(p)
    assert inv.path == str(p)
    assert inv.host("one").engine == "native"


def test_verify_websocket_keys_are_typed_and_inherited():
    defaults = BASE + "[defaults.verify]\nws_connections = 6\nmax_ws_gap = 2\n"
    h = host('[hosts.h.verify]\nws_urls = ["ws://127.0.0.1:18080/ws", "wss://example.test/live"]', base=defaults)
    assert h.verify.ws_urls == ("ws://127.0.0.1:18080/ws", "wss://example.test/live")
    assert (h.verify.ws_connections, h.verify.max_ws_gap) == (6, 2.0)
    plain = host("").verify
    assert (plain.ws_urls, plain.ws_connections, plain.max_ws_gap) == ((), 4, 0.0)


def test_verify_settings_for_host_carry_the_websocket_keys():
    vc = host('[hosts.h.verify]\nws_urls = ["ws://127.0.0.1:18080/ws"]\nws_connections = 2').verify
    s = settings_for_host(vc)
    assert (s.urls, s.ws_urls, s.ws_connections, s.max_ws_gap) == ([], ["ws://127.0.0.1:18080/ws"], 2, None)
    assert settings_for_host(vc, ws_connections=7, max_ws_gap=1.5).ws_connections == 7


def test_lock_stale_must_outlast_the_pull():
    assert "h.lock_stale (900 s) must be more than pull_timeout (900 s)" in error(
        BASE + "\n[hosts.h]\nlock_stale = 900\npull_timeout = 900\n"
    )
    assert host("lock_stale = 901\npull_timeout = 900").lock_stale == 901
