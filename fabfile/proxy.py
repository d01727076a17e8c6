"""Draining at the proxy (Caddy), so old containers stop only once nothing reaches them.

Behind Caddy, Docker's DNS keeps returning an old container's address until its process
has exited, so a pre-stop ``sleep`` does not drain (../shared/NOTES.md, 4 and 6). Instead,
zdd routes around old containers at the proxy (:class:`Routing`):

1. *pin*: load a config whose upstreams for every service about to roll are its old
   containers' addresses, so new containers get no traffic while they boot and prove healthy;
2. *switch*: once a tier's new containers are healthy, route its services to them only;
3. *drain*: tier.sh polls Caddy's admin API until the old addresses have no request in
   flight, then stops the old containers;
4. *restore*: once they are gone, reload the config file, whose name-based upstreams now
   resolve to the new containers only (restore.sh).

The rewriting is pure (:func:`rewrite_upstreams`) and unit-tested.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping
from typing import Any


def split_dial(dial: str) -> tuple[str, str] | None:
    host, sep, port = dial.rpartition(":")
    if not sep or not port.isdigit():
        return None
    if "/" in host:  # network prefix, e.g. tcp/server:8080
        host = host.split("/", 1)[1]
    return host, port


def walk_proxies(node: Any):
    """Every reverse_proxy handler (a dict) anywhere in a Caddy JSON config."""
    if isinstance(node, dict):
        if node.get("handler") == "reverse_proxy":
            yield node
        for v in node.values():
            yield from walk_proxies(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk_proxies(v)


def upstream_ports(config: dict, service: str) -> list[str]:
    """The ports at which the config's static upstreams dial ``service`` by name."""
    ports: list[str] = []
    for handler in walk_proxies(config):
        for up in handler.get("upstreams") or []:
            parsed = split_dial(str(up.get("dial", "")))
            if parsed and parsed[0] == service and parsed[1] not in ports:
                ports.append(parsed[1])
    return ports


def upstream_hosts(config: dict) -> set[str]:
    """The host names the config's static upstreams dial (service names, aliases, addresses)."""
    return {
        parsed[0]
        for handler in walk_proxies(config)
        for up in handler.get("upstreams") or []
        if (parsed := split_dial(str(up.get("dial", ""))))
    }


def by_service_name(config: dict | None, names: list[str], stack: str) -> list[str]:
    """Of ``names`` (a Swarm stack's services), those a config's static upstreams dial by service
    name (NAME, STACK_NAME or tasks.NAME): Caddy pools their connections by that name."""
    hosts = upstream_hosts(config) if config else set()
    return [n for n in names if {n, f"{stack}_{n}", f"tasks.{n}"} & hosts]


def rewrite_upstreams(config: dict, service: str, ips: list[str]) -> dict:
    """A copy of ``config`` in which each static upstream dialling ``service:PORT`` is
    replaced by one upstream per address in ``ips`` (same port); others are kept."""
    if not ips:
        raise ValueError("no addresses to route to")
    new = copy.deepcopy(config)
    for handler in walk_proxies(new):
        ups = handler.get("upstreams")
        if not ups:
            continue
        out = []
        for up in ups:
            parsed = split_dial(str(up.get("dial", "")))
            if parsed and parsed[0] == service:
                for ip in ips:
                    entry = dict(up)
                    entry["dial"] = f"{ip}:{parsed[1]}"
                    out.append(entry)
            else:
                out.append(up)
        handler["upstreams"] = out
    return new


CANARY_SINCE = (2, 8)  # the log_append handler (2.8)
UPSTREAM_FIELD = "zdd_upstream"  # the access-log field naming the upstream that answered
LOGGER = "zdd_canary"


def weights(n_old: int, n_new: int, percent: int) -> tuple[int, int]:
    """Each old and each new upstream's weight, so that the new ones together get ``percent``
    % of the requests (smallest integers)."""
    w_old, w_new = (100 - percent) * n_new, percent * n_old
    g = math.gcd(w_old, w_new) or 1
    return w_old // g, w_new // g


def dialled(handler: dict) -> list[str]:
    """The host each static upstream of a ``reverse_proxy`` dials ("" for one it cannot parse)."""
    return [(split_dial(str(u.get("dial", ""))) or ("", ""))[0] for u in handler.get("upstreams") or []]


def mixed(config: dict, service: str) -> bool:
    """Whether a ``reverse_proxy`` that dials ``service`` by name dials something else too
    (its weights could not be the service's alone: no canary for it)."""
    for handler in walk_proxies(config):
        hosts = dialled(handler)
        if service in hosts and any(h != service for h in hosts):
            return True
    return False


def rewrite_weighted(config: dict, service: str, old_ips: list[str], new_ips: list[str], percent: int) -> dict:
    """A copy of ``config`` whose ``reverse_proxy`` handlers that dial ``service:PORT`` dial its
    old and new addresses instead (same port), so that the new get ``percent`` % of the requests:
    each address listed as many times as its weight, and a random choice among the entries.
    (Caddy's ``weighted_round_robin`` is deterministic: a client that alternates two routes
    could meet only one upstream on one of them, and a canary would never see that route.)"""
    if not old_ips or not new_ips:
        raise ValueError("a weighted upstream list needs old and new addresses")
    w_old, w_new = weights(len(old_ips), len(new_ips), percent)
    new = copy.deepcopy(config)
    for handler in walk_proxies(new):
        if service in dialled(handler):
            handler["load_balancing"] = {
                **(handler.get("load_balancing") or {}),
                "selection_policy": {"policy": "random"},
            }
    return rewrite_upstreams(
        new, service, [ip for ip in old_ips for _ in range(w_old)] + [ip for ip in new_ips for _ in range(w_new)]
    )


def with_access_log(config: dict, services: list[str], path: str) -> dict:
    """A copy of ``config`` that logs every request of the servers proxying ``services`` to
    ``path`` (JSON lines, in the proxy container), each with the upstream that answered it."""
    new = copy.deepcopy(config)
    servers = ((new.get("apps") or {}).get("http") or {}).get("servers") or {}
    for server in servers.values():
        if _add_log_append(server, services):
            server.setdefault("logs", {})
    logging = new.setdefault("logging", {}).setdefault("logs", {})
    logging[LOGGER] = {
        "writer": {"output": "file", "filename": path, "roll": False},
        "encoder": {"format": "json"},
        "include": ["http.log.access"],
    }
    return new


def _add_log_append(node: Any, services: list[str]) -> bool:
    """Put a ``log_append`` handler before each ``reverse_proxy`` dialling one of ``services``."""
    found = False
    if isinstance(node, dict):
        for v in node.values():
            found = _add_log_append(v, services) or found
    elif isinstance(node, list):
        i = 0
        while i < len(node):
            item = node[i]
            found = _add_log_append(item, services) or found
            if isinstance(item, dict) and item.get("handler") == "reverse_proxy" and set(dialled(item)) & set(services):
                node.insert(
                    i,
                    {"handler": "log_append", "key": UPSTREAM_FIELD, "value": "{http.reverse_proxy.upstream.hostport}"},
                )
                i += 1
                found = True
            i += 1
    return found


HOLD_ROUTE_ID = "zdd-drain-hold"


def caddy_version(text: str) -> tuple[int, ...]:
    """``v2.11.7 h1:...`` or ``2.6.2`` as (2, 11, 7); () when unknown."""
    m = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    return tuple(int(g) for g in m.groups() if g is not None) if m else ()


STREAM_CLOSE_DELAY_SINCE = (2, 7)


def with_stream_close_delay(config: dict, delay: str) -> dict:
    """A copy of ``config`` whose every ``reverse_proxy`` without one keeps its streams
    (websockets) open for ``delay`` across a reload (Caddy >= 2.7)."""
    new = copy.deepcopy(config)
    for handler in walk_proxies(new):
        handler.setdefault("stream_close_delay", delay)
    return new


def without_stream_close_delay(config: dict, services: list[str]) -> list[str]:
    """The services whose ``reverse_proxy`` in ``config`` has no ``stream_close_delay``."""
    missing = []
    for handler in walk_proxies(config):
        if handler.get("stream_close_delay"):
            continue
        for up in handler.get("upstreams") or []:
            parsed = split_dial(str(up.get("dial", "")))
            if parsed and parsed[0] in services and parsed[0] not in missing:
                missing.append(parsed[0])
    return missing


def hold_upstreams(config: dict, addresses: list[str]) -> dict:
    """A copy of ``config`` with a route that never matches, proxying to ``addresses``.

    Caddy keeps an upstream's in-flight counter only while some loaded config references
    its address: once a reload drops the last reference, the address vanishes from
    ``/reverse_proxy/upstreams`` although requests to it are still in flight. Holding the
    old addresses in an unmatchable route keeps their counters visible while they drain.
    """
    new = copy.deepcopy(config)
    servers = ((new.get("apps") or {}).get("http") or {}).get("servers") or {}
    if not servers or not addresses:
        return new
    first = servers[sorted(servers)[0]]
    first.setdefault("routes", []).append(
        {
            "@id": HOLD_ROUTE_ID,
            "match": [{"expression": "false"}],
            "handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": a} for a in addresses]}],
        }
    )
    return new


class Routing:
    """What the proxy routes each app service to during a deploy, as configs to load.

    Every load is a graceful Caddy reload (listeners kept, in-flight requests finish), and
    every load also closes idle keep-alive connections and, without ``stream_close_delay``,
    websockets (../shared/NOTES.md 9-10): so a deploy makes as few as it can. *pin* routes
    every service about to roll to its old containers' addresses (one load for the whole
    deploy); *switch* routes one tier's services to their new containers (one load per tier);
    the final *restore* reloads the config file, once the old containers are gone.
    The addresses being drained stay referenced (:func:`hold_upstreams`), so their in-flight
    counters stay visible in Caddy's admin API.
    """

    def __init__(self, base: dict, networks: tuple[str, ...], stream_close_delay: str = "", log: str = ""):
        self.base = with_stream_close_delay(base, stream_close_delay) if stream_close_delay else base
        self.networks = networks
        self.routes: dict[str, list[str]] = {}  # service -> addresses it is routed to
        self.held: list[str] = []  # addresses whose counters must stay visible
        self.log = log  # the access log of canary steps and the watch, in the proxy container ("" = none)
        self.logged: list[str] = []  # services whose requests it logs beyond a step's (the watched ones)

    def ports(self, service: str) -> list[str]:
        return upstream_ports(self.base, service)

    def ip(self, networks: Mapping[str, str]) -> str | None:
        """A container's address on a network it shares with the proxy."""
        for name in self.networks:
            if networks.get(name):
                return networks[name]
        return None

    def addrs(self, service: str, ips: list[str]) -> list[str]:
        """The upstream addresses (IP:PORT) at which the proxy reaches the service on ``ips``."""
        return [f"{ip}:{p}" for ip in ips for p in self.ports(service)]

    def held_for(self, service: str, old_ips: list[str]) -> list[str]:
        """The addresses that carry the service's old traffic: by name, and each old IP."""
        return self.addrs(service, [service]) + self.addrs(service, old_ips)

    def route(self, service: str, ips: list[str], hold: list[str] = ()) -> None:
        self.routes[service] = list(ips)
        self.held += [a for a in hold if a not in self.held]

    def config(self, weighted: dict[str, tuple[list[str], int]] | None = None, hold: list[str] = ()) -> dict:
        """The current routing; ``weighted``: services also routed to new addresses, which
        get a share (percent) of their requests (a canary step); ``hold``: more addresses kept
        visible. The weighted and the ``logged`` services' requests go to ``log``."""
        new = self.base
        logged = self.logged + [n for n in weighted or {} if n not in self.logged]
        if self.log and logged:  # while the upstreams still dial the services by name
            new = with_access_log(new, logged, self.log)
        for service, ips in self.routes.items():
            if weighted and service in weighted:
                new_ips, percent = weighted[service]
                new = rewrite_weighted(new, service, ips, new_ips, percent)
            else:
                new = rewrite_upstreams(new, service, ips)
        return hold_upstreams(new, self.held + [a for a in hold if a not in self.held])

    def load_line(self, word: str, config: dict | None = None) -> str:
        """``WORD JSON``: what tier.sh reads to load the current routing (or ``config``)."""
        return f"{word} {json.dumps(self.config() if config is None else config, separators=(',', ':'))}"
