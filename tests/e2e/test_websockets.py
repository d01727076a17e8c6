"""Websockets through the sandbox's Caddy 2.11: what a reload does to them, and what a deploy
does — disconnected at most once, only when their own service rolls, back on the new version
at once."""

from __future__ import annotations

import asyncio
import json

import websockets

from fabfile.proxy import Routing
from tests import sandbox as sb

WS = sb.HTTP.replace("http://", "ws://")


def caddy_load(config: dict) -> None:
    res = sb.run(
        ["docker", "exec", "-i", "remilia-caddy-1", "caddy", "reload", "--config", "/dev/stdin", "--force"],
        check=False,
        input_text=json.dumps(config),
    )
    assert res.returncode == 0, res.stderr


def sandbox_config() -> dict:
    out = sb.docker("exec", "remilia-caddy-1", "caddy", "adapt", "--config", "/etc/caddy/Caddyfile")
    return json.loads(out)


async def _open(path: str):
    ws = await websockets.connect(f"{WS}{path}", open_timeout=5)
    await ws.send("hello")
    assert (await asyncio.wait_for(ws.recv(), 5)).startswith("server ")
    return ws


async def _survives(ws) -> bool:
    try:
        await ws.send("again")
        await asyncio.wait_for(ws.recv(), 3)
        return True
    except websockets.ConnectionClosed:
        return False


def test_a_reload_keeps_websockets_open_only_with_stream_close_delay(settled):
    """zdd's loads set stream_close_delay (Caddy >= 2.7): a websocket opened before survives
    them; through a handler without it, the next reload closes it (1001, going away)."""
    base = sandbox_config()
    for h in _proxies(base):
        h.pop("stream_close_delay", None)

    async def scenario():
        caddy_load(Routing(base, ("remilia_default",)).config())  # no delay from here on
        bare = await _open("/server/ws")
        caddy_load(Routing(base, ("remilia_default",), "5m").config())  # what zdd loads
        kept = await _open("/server/ws")
        caddy_load(Routing(base, ("remilia_default",), "5m").config())
        cut = not await _survives(bare)
        code = bare.close_code
        alive = await _survives(kept)
        await kept.close()
        return cut, code, alive

    try:
        cut, code, alive = asyncio.run(scenario())
    finally:
        assert sb.fab("reload-caddy").returncode == 0
    assert cut and code == 1001, code
    assert alive


def _proxies(config: dict):
    from fabfile.proxy import walk_proxies

    return list(walk_proxies(config))


def test_deploy_moves_each_websocket_of_a_rolled_service_once_and_leaves_the_others_alone(settled, tmp_path):
    version = sb.publish("server", "identity")  # tiers 1 and 3 of 3 roll; property, profile-server do not
    ws_args = [a for svc in sb.APPS for a in ("--ws", f"{WS}/{svc}/ws")]
    probe = sb.Verify(
        "--host",
        "sandbox",
        "--concurrency",
        "8",
        *ws_args,
        "--ws-connections",
        "20",
        json_path=tmp_path / "verify.json",
    )
    res = sb.fab("deploy", "--no-verify", "--wait")
    rc, out, report = probe.stop(settle=3)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "server: roll" in res.stdout and "property: skip" in res.stdout
    # the drain did not sit out drain_timeout for the websockets: it left them to the stop
    assert "long-lived left to the stop" in res.stdout, res.stdout
    loads = int(res.stdout.split(" proxy loads")[0].rsplit(" ", 1)[1])
    by_url = {w["url"].rsplit("/", 2)[1]: w for w in report["websockets"]}
    assert set(by_url) == set(sb.APPS)
    for svc, w in by_url.items():
        assert w["connections"] == 20
        per_probe: dict[int, int] = {}
        for d in w["disconnect_list"]:
            per_probe[d["probe"]] = per_probe.get(d["probe"], 0) + 1
        if svc in ("server", "identity"):
            assert w["disconnects"] > 0, (svc, w)
            assert max(per_probe.values()) == 1, (svc, per_probe)  # each at most once
            assert w["longest_gap_s"] <= 1.0, (svc, w["gaps"])  # back within a second...
            seen = {v["version"]: v for v in w["versions"]}
            assert version in seen, (svc, seen)  # ...on the new version
            assert all(g["recovered"] for g in w["gaps"])
        else:
            assert w["disconnects"] == 0, (svc, w["disconnect_list"])  # never cut by a reload
    assert rc == 0 and report["failures"] == 0, out
    assert report["failures_without_retry"] <= loads, out
