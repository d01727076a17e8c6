"""Draining at the proxy (Caddy), so old containers stop only once nothing reaches them.

Behind Caddy, Docker's DNS keeps returning an old container's address until its process
has exited, so a pre-stop ``sleep`` does not drain (../shared/NOTES.md, 4 and 6). Instead,
for one service:

1. *pin*: load a config whose upstreams for the service are the old containers' addresses,
   so the new containers get no traffic while they boot and prove healthy;
2. *switch*: once they are healthy, load one whose upstreams are the new containers only;
3. *wait*: poll Caddy's admin API until the old upstreams have no request in flight;
4. then the caller stops the old containers, and *restore* reloads the config file, whose
   name-based upstreams now resolve to the new containers only.

Every load is a graceful Caddy reload: listeners are kept, in-flight requests finish.
The rewriting is pure (:func:`rewrite_upstreams`) and unit-tested.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from typing import Any

from . import commands as cmds
from .config import HostConfig, ResolvedService
from .runner import Runner, StepFailed


def _split_dial(dial: str) -> tuple[str, str] | None:
    host, sep, port = dial.rpartition(":")
    if not sep or not port.isdigit():
        return None
    if "/" in host:  # network prefix, e.g. tcp/server:8080
        host = host.split("/", 1)[1]
    return host, port


def _walk_proxies(node: Any):
    """Every reverse_proxy handler (a dict) anywhere in a Caddy JSON config."""
    if isinstance(node, dict):
        if node.get("handler") == "reverse_proxy":
            yield node
        for v in node.values():
            yield from _walk_proxies(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk_proxies(v)


def upstream_ports(config: dict, service: str) -> list[str]:
    """The ports at which the config's static upstreams dial ``service`` by name."""
    ports: list[str] = []
    for handler in _walk_proxies(config):
        for up in handler.get("upstreams") or []:
            parsed = _split_dial(str(up.get("dial", "")))
            if parsed and parsed[0] == service and parsed[1] not in ports:
                ports.append(parsed[1])
    return ports


def rewrite_upstreams(config: dict, service: str, ips: list[str]) -> dict:
    """A copy of ``config`` in which each static upstream dialling ``service:PORT`` is
    replaced by one upstream per address in ``ips`` (same port); others are kept."""
    if not ips:
        raise ValueError("no addresses to route to")
    new = copy.deepcopy(config)
    for handler in _walk_proxies(new):
        ups = handler.get("upstreams")
        if not ups:
            continue
        out = []
        for up in ups:
            parsed = _split_dial(str(up.get("dial", "")))
            if parsed and parsed[0] == service:
                for ip in ips:
                    entry = dict(up)
                    entry["dial"] = f"{ip}:{parsed[1]}"
                    out.append(entry)
            else:
                out.append(up)
        handler["upstreams"] = out
    return new


HOLD_ROUTE_ID = "zdd-drain-hold"
# Seconds given to requests in flight when Caddy's counters cannot be read (no wget in the
# proxy image, admin API elsewhere): new requests already go to the new containers.
UNOBSERVED_GRACE = 10


def hold_upstreams(config: dict, addresses: list[str]) -> dict:
    """A copy of ``config`` with a route that never matches, proxying to ``addresses``.

    Caddy keeps an upstream's in-flight counter only while some loaded config references
    its address: once a reload drops the last reference, the address vanishes from
    ``/reverse_proxy/upstreams`` although requests to it are still in flight. Holding the
    old addresses in an unmatchable route keeps their counters visible while they drain.
    """
    new = copy.deepcopy(config)
    servers = (((new.get("apps") or {}).get("http") or {}).get("servers") or {})
    if not servers or not addresses:
        return new
    first = servers[sorted(servers)[0]]
    first.setdefault("routes", []).append({
        "@id": HOLD_ROUTE_ID,
        "match": [{"expression": "false"}],
        "handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": a} for a in addresses]}],
    })
    return new


def container_ips(inspect_json: str, proxy_networks: set[str]) -> dict[str, str]:
    """Container id → its IP on a network it shares with the proxy (from ``docker inspect``)."""
    result = {}
    try:
        items = json.loads(inspect_json)
    except json.JSONDecodeError:
        raise StepFailed(f"docker inspect: unexpected output {inspect_json[:80]!r}") from None
    for c in items if isinstance(items, list) else []:
        nets = (c.get("NetworkSettings") or {}).get("Networks") or {}
        for name, net in nets.items():
            if name in proxy_networks and net.get("IPAddress"):
                result[c["Id"]] = net["IPAddress"]
                break
    return result


def proxy_container(r: Runner, host: HostConfig) -> str | None:
    """The running proxy container's (short) id, or None."""
    proxy = host.proxy.service
    ids = r.read(cmds.Compose(host).ids(proxy), f"finding the {proxy} container").split()
    return ids[0][:12] if ids else None


def read_config(r: Runner, host: HostConfig, container: str) -> dict:
    """The proxy's config file as Caddy JSON (``caddy adapt`` in its container)."""
    proxy, path = host.proxy.service, host.proxy.config
    res = r.probe(cmds.caddy_adapt(container, path))
    if res.ok:
        try:
            return json.loads(res.stdout)
        except json.JSONDecodeError:
            pass
    raise StepFailed(f"cannot read {path} as a Caddy config in {proxy} ({res.first_error_line()}): fix it, "
                     f"or set proxy.drain = false (a proxy that is not Caddy) in hosts.toml")


def _matches(cid: str, full: str) -> bool:
    return full.startswith(cid) or cid.startswith(full)


@dataclass
class ProxyDrain:
    r: Runner
    host: HostConfig
    service: str
    container: str
    config: dict
    ports: list[str]
    networks: set[str]
    held: list[str] = field(default_factory=list)  # addresses being drained: name + old IPs

    @classmethod
    def find(cls, r: Runner, host: HostConfig, svc: ResolvedService) -> "ProxyDrain | None":
        """The drain helper for ``svc``, or None (with a note) when it cannot apply."""
        proxy = host.proxy.service
        if not proxy or not svc.drain:
            return None
        container = proxy_container(r, host)
        if container is None:
            r.note(f"no running {proxy} container: old containers are stopped without draining")
            return None
        config = read_config(r, host, container)
        ports = upstream_ports(config, svc.name)
        if not ports:
            r.note(f"{proxy} has no static upstream `{svc.name}:PORT`: old {svc.name} containers are stopped "
                   "without draining at the proxy")
            return None
        raw_nets = r.read(cmds.inspect([container], "{{json .NetworkSettings.Networks}}"), f"inspecting {proxy}")
        try:
            nets = json.loads(raw_nets or "{}") or {}
        except json.JSONDecodeError:
            raise StepFailed(f"docker inspect {proxy}: unexpected output {raw_nets[:80]!r}") from None
        return cls(r, host, svc.name, container, config, ports, set(nets))

    def ips(self, ids: list[str]) -> list[str]:
        if self.r.dry_run and any(i.startswith("<") for i in ids):
            return [f"<ip of {i.strip('<>')}>" for i in ids]
        found = container_ips(self.r.read(cmds.inspect(ids), "inspecting containers"), self.networks)
        missing = [i for i in ids if not any(_matches(i, f) for f in found)]
        if missing:
            raise StepFailed(f"{self.service}: container(s) {', '.join(m[:12] for m in missing)} share no network "
                             f"with {self.host.proxy.service}")
        return [found[f] for i in ids for f in found if _matches(i, f)]

    def _addresses(self, ips: list[str]) -> list[str]:
        return [f"{ip}:{p}" for ip in ips for p in self.ports]

    def _route_to(self, ids: list[str], why: str, hold: list[str]) -> list[str]:
        """Load a config that sends the service's traffic only to these containers, while
        keeping the in-flight counters of the ``hold`` addresses observable."""
        ips = self.ips(ids)
        new = hold_upstreams(rewrite_upstreams(self.config, self.service, ips), hold)
        label = f"(config of {self.host.proxy.config} with {self.service} → {', '.join(ips)}: {why})"
        self.r.change(cmds.caddy_load_json(self.container, json.dumps(new), label),
                      f"routing {self.service} to {why} containers")
        return ips

    def pin(self, old: list[str]) -> None:
        """Route the service to its old containers only (new ones get nothing until switch)."""
        self.held = [f"{self.service}:{p}" for p in self.ports]
        self.held += self._addresses(self._route_to(old, "old", hold=self.held))

    def switch(self, new: list[str]) -> None:
        """Route the service to the new containers only; the old addresses stay observable."""
        self._route_to(new, "new", hold=self.held)

    def wait_drained(self, timeout: int) -> str:
        """Wait until nothing is in flight to the old containers (by name or address)."""
        cmd = cmds.wait_drained(self.container, self.host.proxy.admin, self.held, timeout)
        if self.r.dry_run:
            self.r.change(cmd)
            return "drained"
        res = self.r.change(cmd, check=False)
        line = res.first_error_line()
        if res.exited == 2:
            self.r.note(f"{self.service}: {line}; stopping the old containers anyway")
        elif not res.ok:
            grace = min(timeout, UNOBSERVED_GRACE)
            self.r.note(f"{self.service}: cannot observe in-flight requests ({line}); giving them {grace} s")
            time.sleep(grace)
            line = f"waited {grace}s (in-flight requests not observable)"
        return line

    def restore(self) -> None:
        """Reload the proxy's config file: name-based upstreams again."""
        self.r.change(cmds.caddy_reload(self.container, self.host.proxy.config, force=True),
                      f"restoring {self.host.proxy.service}'s config")
