"""Unit tests for fabfile.proxy: Caddy JSON upstream rewriting, the drain hold route and Routing."""

from __future__ import annotations

import copy
import json

import pytest

from fabfile.proxy import HOLD_ROUTE_ID, Routing, hold_upstreams, rewrite_upstreams, upstream_ports
from tests.fakes import PROXY_NETWORK, caddy_config, reverse_proxy_route, sandbox_caddy_config


def dials(config: dict) -> list[list[str]]:
    """The dial lists of every reverse_proxy handler, in document order."""
    out = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("handler") == "reverse_proxy":
                out.append([u["dial"] for u in node.get("upstreams") or []])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(config)
    return out


# Verbatim shape of `caddy adapt` for:  :80 { handle_path /server/* { reverse_proxy server:8080 } }
ADAPTED_HANDLE_PATH = json.loads("""
{
  "apps": {
    "http": {
      "servers": {
        "srv0": {
          "listen": [":80"],
          "routes": [
            {
              "match": [{"path": ["/server/*"]}],
              "handle": [
                {
                  "handler": "subroute",
                  "routes": [
                    {"handle": [{"handler": "rewrite", "strip_path_prefix": "/server"}]},
                    {"handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": "server:8080"}]}]}
                  ]
                }
              ]
            }
          ]
        }
      }
    }
  }
}
""")


# --- upstream_ports -------------------------------------------------------------------------------


def test_upstream_ports_in_nested_subroute():
    assert upstream_ports(ADAPTED_HANDLE_PATH, "server") == ["8080"]


def test_upstream_ports_sandbox_config():
    cfg = sandbox_caddy_config()
    for s in ("server", "property", "identity", "profile-server"):
        assert upstream_ports(cfg, s) == ["8080"], s


def test_upstream_ports_not_proxied_service():
    cfg = sandbox_caddy_config()
    assert upstream_ports(cfg, "mongodb") == []
    assert upstream_ports(cfg, "serv") == []  # no prefix match
    assert upstream_ports(cfg, "profile") == []
    assert upstream_ports({}, "server") == []


def test_upstream_ports_several_ports_deduplicated_in_order():
    cfg = caddy_config(
        reverse_proxy_route("/api", "server:8080", "other:8080"),
        reverse_proxy_route("/metrics", "server:9090"),
        reverse_proxy_route("/api2", "server:8080"),
    )
    assert upstream_ports(cfg, "server") == ["8080", "9090"]
    assert upstream_ports(cfg, "other") == ["8080"]


def test_upstream_ports_ignores_placeholders_and_portless_dials():
    cfg = caddy_config(
        reverse_proxy_route("/a", "{http.request.host}:8080"),
        reverse_proxy_route("/b", "server"),
        reverse_proxy_route("/c", "server:{env.PORT}"),
    )
    assert upstream_ports(cfg, "server") == []


def test_upstream_ports_network_prefixed_dial():
    cfg = caddy_config(reverse_proxy_route("/a", "tcp/server:8080"))
    assert upstream_ports(cfg, "server") == ["8080"]


# --- rewrite_upstreams -------------------------------------------------------------------------


def test_rewrite_nested_subroute():
    new = rewrite_upstreams(ADAPTED_HANDLE_PATH, "server", ["172.18.0.7"])
    handler = new["apps"]["http"]["servers"]["srv0"]["routes"][0]["handle"][0]["routes"][1]["handle"][0]
    assert handler == {"handler": "reverse_proxy", "upstreams": [{"dial": "172.18.0.7:8080"}]}
    # everything else is untouched
    rewrite = new["apps"]["http"]["servers"]["srv0"]["routes"][0]["handle"][0]["routes"][0]
    assert rewrite == {"handle": [{"handler": "rewrite", "strip_path_prefix": "/server"}]}
    assert new["apps"]["http"]["servers"]["srv0"]["routes"][0]["match"] == [{"path": ["/server/*"]}]


def test_rewrite_only_the_matching_upstream_among_several():
    cfg = caddy_config(
        reverse_proxy_route("/mixed", "other:8080", "server:8080", "server-2:8080", "server:9090"),
        reverse_proxy_route("/profile-server", "profile-server:8080"),
    )
    new = rewrite_upstreams(cfg, "server", ["10.0.0.2", "10.0.0.3"])
    assert dials(new) == [
        ["other:8080", "10.0.0.2:8080", "10.0.0.3:8080", "server-2:8080", "10.0.0.2:9090", "10.0.0.3:9090"],
        ["profile-server:8080"],
    ]


def test_rewrite_sandbox_other_services_untouched():
    cfg = sandbox_caddy_config()
    new = rewrite_upstreams(cfg, "server", ["172.18.0.5"])
    assert dials(new) == [["172.18.0.5:8080"], ["property:8080"], ["identity:8080"], ["profile-server:8080"]]
    # everything but the upstreams is the same
    assert _without_upstreams(new) == _without_upstreams(cfg)


def _without_upstreams(node):
    if isinstance(node, dict):
        return {k: _without_upstreams(v) for k, v in node.items() if k != "upstreams"}
    if isinstance(node, list):
        return [_without_upstreams(v) for v in node]
    return node


def _handlers(cfg):
    return cfg["apps"]["http"]["servers"]["srv0"]["routes"][0]["handle"][0]["routes"]


def test_rewrite_does_not_mutate_the_input():
    cfg = sandbox_caddy_config()
    before = copy.deepcopy(cfg)
    new = rewrite_upstreams(cfg, "server", ["1.2.3.4"])
    assert cfg == before
    assert new != cfg
    # nor share mutable parts with it
    new["apps"]["http"]["servers"]["srv0"]["listen"].append(":81")
    assert cfg == before


def test_rewrite_keeps_other_upstream_keys():
    cfg = caddy_config(
        {"handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": "server:8080", "max_requests": 5}]}]}
    )
    new = rewrite_upstreams(cfg, "server", ["10.0.0.9", "10.0.0.10"])
    ups = _handlers(new)[0]["handle"][0]["upstreams"]
    assert ups == [{"dial": "10.0.0.9:8080", "max_requests": 5}, {"dial": "10.0.0.10:8080", "max_requests": 5}]


def test_rewrite_service_not_proxied_is_identity():
    cfg = sandbox_caddy_config()
    assert rewrite_upstreams(cfg, "mongodb", ["10.0.0.1"]) == cfg


def test_rewrite_is_json_serialisable_and_round_trips():
    new = rewrite_upstreams(sandbox_caddy_config(), "identity", ["172.18.0.9"])
    assert json.loads(json.dumps(new)) == new


def test_rewrite_without_addresses_refuses():
    with pytest.raises(ValueError):
        rewrite_upstreams(sandbox_caddy_config(), "server", [])


def test_rewrite_twice_back_to_new_ips():
    """Pin to old, then switch to new: the switch starts from the original config."""
    cfg = sandbox_caddy_config()
    pinned = rewrite_upstreams(cfg, "server", ["10.0.0.1"])
    switched = rewrite_upstreams(cfg, "server", ["10.0.0.2"])
    assert dials(pinned)[0] == ["10.0.0.1:8080"]
    assert dials(switched)[0] == ["10.0.0.2:8080"]
    # rewriting the pinned config by name does nothing: the name is gone
    assert rewrite_upstreams(pinned, "server", ["10.0.0.2"]) == pinned


# --- hold_upstreams ----------------------------------------------------------------------------


def _hold_route(cfg: dict) -> dict | None:
    routes = cfg["apps"]["http"]["servers"]["srv0"]["routes"]
    held = [r for r in routes if r.get("@id") == HOLD_ROUTE_ID]
    assert len(held) <= 1
    return held[0] if held else None


def test_hold_adds_one_unmatchable_route_with_the_addresses():
    cfg = sandbox_caddy_config()
    before = copy.deepcopy(cfg)
    new = hold_upstreams(cfg, ["server:8080", "172.18.0.10:8080"])
    assert cfg == before  # a copy
    assert _hold_route(new) == {
        "@id": HOLD_ROUTE_ID,
        "match": [{"expression": "false"}],
        "handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": "server:8080"}, {"dial": "172.18.0.10:8080"}]}],
    }
    # appended after the site's own routes, which are unchanged
    assert new["apps"]["http"]["servers"]["srv0"]["routes"][:-1] == cfg["apps"]["http"]["servers"]["srv0"]["routes"]


def test_hold_goes_to_the_first_server_by_name():
    cfg = sandbox_caddy_config()
    servers = cfg["apps"]["http"]["servers"]
    servers["srv1"], servers["a-admin"] = copy.deepcopy(servers["srv0"]), {"listen": [":9000"]}
    new = hold_upstreams(cfg, ["server:8080"])
    assert new["apps"]["http"]["servers"]["a-admin"]["routes"][0]["@id"] == HOLD_ROUTE_ID
    assert new["apps"]["http"]["servers"]["srv0"] == servers["srv0"]


def test_hold_without_addresses_or_servers_changes_nothing():
    cfg = sandbox_caddy_config()
    assert hold_upstreams(cfg, []) == cfg
    assert hold_upstreams({"apps": {}}, ["server:8080"]) == {"apps": {}}
    assert hold_upstreams({}, ["server:8080"]) == {}


# --- Routing -----------------------------------------------------------------------------------


def routing() -> Routing:
    return Routing(sandbox_caddy_config(), (PROXY_NETWORK, "edge"))


def test_routing_ports_and_held_addresses():
    r = routing()
    assert r.ports("server") == ["8080"]
    assert r.held_for("server", ["172.18.0.10", "172.18.0.11"]) == [
        "server:8080",
        "172.18.0.10:8080",
        "172.18.0.11:8080",
    ]
    assert r.held_for("mongodb", ["172.18.0.20"]) == []  # not proxied: nothing to hold
    multi = Routing(
        caddy_config(reverse_proxy_route("/a", "server:8080"), reverse_proxy_route("/m", "server:9090")),
        (PROXY_NETWORK,),
    )
    assert multi.held_for("server", ["10.0.0.5"]) == ["server:8080", "server:9090", "10.0.0.5:8080", "10.0.0.5:9090"]


def test_routing_config_rewrites_only_routed_services_and_holds_the_old_addresses():
    r = routing()
    assert r.config() == r.base  # nothing routed yet
    held = r.held_for("server", ["172.18.0.10"])
    r.route("server", ["172.18.0.10"], held)  # pin
    r.route("identity", ["172.18.0.14"], r.held_for("identity", ["172.18.0.14"]))
    r.route("server", ["172.18.0.30", "172.18.0.31"], held)  # switch: the same hold, once
    cfg = r.config()
    assert dials(cfg) == [
        ["172.18.0.30:8080", "172.18.0.31:8080"],
        ["property:8080"],
        ["172.18.0.14:8080"],
        ["profile-server:8080"],
        ["server:8080", "172.18.0.10:8080", "identity:8080", "172.18.0.14:8080"],
    ]
    assert _hold_route(cfg)["match"] == [{"expression": "false"}]
    assert r.base == sandbox_caddy_config()  # the file's config is kept for the next load


def test_routing_load_line_is_one_compact_json_line():
    r = routing()
    r.route("server", ["172.18.0.10"], ["server:8080"])
    line = r.load_line("pin")
    word, _, text = line.partition(" ")
    assert word == "pin"
    assert "\n" not in line and ": " not in text and ", " not in text
    assert json.loads(text) == r.config()
    assert r.load_line("switch").startswith("switch {")


def test_routing_ip_picks_the_network_shared_with_the_proxy():
    r = routing()
    assert r.ip({"bridge": "172.17.0.5", PROXY_NETWORK: "172.18.0.5", "edge": "10.9.0.5"}) == "172.18.0.5"
    assert r.ip({"edge": "10.9.0.6", "backend": "172.20.0.6"}) == "10.9.0.6"
    assert r.ip({PROXY_NETWORK: "", "edge": "10.9.0.7"}) == "10.9.0.7"  # no address there (yet)
    assert r.ip({"backend": "172.20.0.8"}) is None
    assert r.ip({}) is None


# --- streams (websockets) across reloads --------------------------------------------------------


def test_caddy_version_parses_what_caddy_version_prints():
    from fabfile.proxy import caddy_version

    assert caddy_version("v2.11.7 h1:yj0Y4fYZGPkSvibBJ1sTWE33xC0fxztVyXEW5iIdUT4=") == (2, 11, 7)
    assert caddy_version("2.6.2") == (2, 6, 2)
    assert caddy_version("") == () and caddy_version("devel") == ()


def _proxies(config):
    from fabfile.proxy import walk_proxies

    return list(walk_proxies(config))


def test_stream_close_delay_is_added_where_missing_and_kept_where_set():
    from fabfile.proxy import with_stream_close_delay, without_stream_close_delay

    config = sandbox_caddy_config()
    assert without_stream_close_delay(config, ["server", "identity", "nope"]) == ["server", "identity"]
    _proxies(config)[0]["stream_close_delay"] = "1h"
    new = with_stream_close_delay(config, "5m")
    assert [h["stream_close_delay"] for h in _proxies(new)] == ["1h", "5m", "5m", "5m"]
    assert without_stream_close_delay(new, ["server", "identity"]) == []
    assert "stream_close_delay" not in _proxies(config)[1]  # the input is not changed


def test_routing_sets_the_delay_on_every_config_it_loads():
    from fabfile.proxy import Routing

    r = Routing(sandbox_caddy_config(), ("remilia_default",), "5m")
    r.route("server", ["10.0.0.5"], ["server:8080"])
    loaded = json.loads(r.load_line("pin").split(" ", 1)[1])
    routed = [h for h in _proxies(loaded) if h.get("upstreams") and "@id" not in h]
    assert len(routed) >= 4 and all(h.get("stream_close_delay") == "5m" for h in routed[:4])
    assert "stream_close_delay" not in json.dumps(Routing(sandbox_caddy_config(), ()).config())
