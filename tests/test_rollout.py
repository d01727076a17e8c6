"""The deploy's replace sequence (fabfile/engines/compose_rollout.py) against a fake host whose tier.sh
is simulated: what is pinned, switched and restored, in which order, how many proxy loads,
and what a failure or an interruption leaves serving."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest

from fabfile import sequence
from fabfile.config import load
from fabfile.engines import engine_for
from fabfile.progress import Reporter
from fabfile.runner import BadInput, Runner, StepFailed
from fabfile.session import Session
from tests.fakes import (
    FakeConversation,
    FakeExecutor,
    cid,
    deploy,
    image_id,
    image_listing,
    ok,
    sandbox_containers,
    sandbox_survey,
    survey_text,
    tier_host,
)

HOSTS_TOML = Path(__file__).resolve().parent.parent / "hosts.toml"
NEW = {
    "server": [cid("b1")[:12]],
    "property": [cid("b2")[:12]],
    "identity": [cid("b3")[:12]],
    "profile-server": [cid("b4")[:12]],
}


@pytest.fixture(autouse=True)
def token(monkeypatch):
    monkeypatch.setenv("ZDD_SANDBOX_REGISTRY_PASSWORD", "t0ken")


def host(
    version: int = 2,
    containers=None,
    survey: str | None = None,
    tier=None,
    host_name: str = "sandbox",
    restore: str = "restore queued (job 99)",
):
    fake = FakeExecutor(
        [
            ("survey.sh", survey or sandbox_survey(containers or sandbox_containers())),
            ("lock.sh", ok("locked\n")),
            ("pull.sh", image_listing(version)),
            ("restore.sh", ok(restore + "\n")),
            ("finish.sh", ok("kept the images of the last 3 runs\nreleased the lock\n")),
        ]
    )
    fake.on("kill -TERM", fake.interrupt)
    fake.tier_script = tier or tier_host(NEW)
    out = io.StringIO()
    h = load(HOSTS_TOML).host(host_name)
    s = Session(host_name, h, Runner(fake, host_name, out=out), Reporter(host_name, out=out))
    return s, fake, out


def sent_config(conv: FakeConversation, word: str) -> dict:
    line = next(x for x in conv.said if x.startswith(word + " "))
    return json.loads(line.split(" ", 1)[1])


def upstreams(config: dict) -> dict[str, list[str]]:
    """service path -> dials, from a sandbox config (the hold route under 'hold')."""
    out: dict[str, list[str]] = {}
    routes = config["apps"]["http"]["servers"]["srv0"]["routes"]
    for r in routes[0]["handle"][0]["routes"]:
        path = (r.get("match") or [{}])[0].get("path", ["*"])[0]
        for h in r["handle"][0].get("routes", []):
            for hh in h["handle"]:
                if hh["handler"] == "reverse_proxy":
                    out[path] = [u["dial"] for u in hh["upstreams"]]
    for r in routes[1:]:
        out["hold"] = [u["dial"] for u in r["handle"][0]["upstreams"]]
    return out


def test_nothing_changed_starts_nothing_and_loads_nothing():
    s, fake, out = host(version=1)
    deploy(s)
    assert fake.tiers == []
    assert not fake.seen("restore.sh") and not fake.seen("up --detach")
    assert fake.seen("finish.sh", " 0 3 ''")  # no prune, no keep tags: nothing rolled
    assert s.report.proxy_loads == 0
    assert s.r.remote_commands == 4  # survey, lock, pull, finish (journal, unlock)
    assert out.getvalue().count("skip, unchanged") == 4


def test_full_deploy_pins_once_switches_per_tier_and_restores_once():
    s, fake, out = host()
    deploy(s)
    assert [c.command.split("tier.sh compose ")[1].split()[8] for c in fake.tiers] == [
        "server",
        "identity",
        "profile-server",
    ]
    first, second, third = fake.tiers
    assert first.said[0].startswith("pin ") and second.said[0] == "nopin" and third.said[0] == "nopin"
    pin = upstreams(sent_config(first, "pin"))
    assert pin["/server/*"] == ["172.18.0.10:8080"] and pin["/identity/*"] == ["172.18.0.14:8080"]
    assert pin["/profile-server/*"] == ["172.18.0.16:8080"]
    assert set(pin["hold"]) >= {"server:8080", "172.18.0.10:8080", "identity:8080", "172.18.0.14:8080"}
    sw1 = upstreams(sent_config(first, "switch"))
    assert sw1["/server/*"] == ["172.18.0.9:8080"] and sw1["/property/*"] == ["172.18.0.9:8080"]
    assert sw1["/identity/*"] == ["172.18.0.14:8080"]  # a later tier stays on its old containers
    sw2 = upstreams(sent_config(second, "switch"))
    assert sw2["/server/*"] == ["172.18.0.9:8080"] and sw2["/identity/*"] == ["172.18.0.9:8080"]
    # tiers + 2 loads: pin, three switches, the restore
    assert s.report.proxy_loads == 5
    restore = fake.calls[fake.index("restore.sh")].command
    assert "restore.sh detach project cad000000000 /etc/caddy/Caddyfile" in restore
    assert all(cid(t)[:12] in restore for t in ("a", "c", "e", "10"))
    # the restore job holds the lock now: the deploy does not release it (finish.sh gets no holder)
    assert fake.matching("lock.sh") == [fake.index("lock.sh")]
    assert fake.seen("finish.sh project '' 1 3 ")
    drains = [r for r in s.report.steps if r.name.startswith("drain ")]
    # not waiting: what the host already said is reported, the rest it finishes on its own
    assert [d.detail for d in drains] == ["after 1s, 2 in flight at most"] * 3
    assert s.r.remote_commands == 8  # survey, lock, pull, 3 tiers, restore, finish


def test_only_the_changed_service_rolls():
    containers = sandbox_containers()
    for c in containers:
        if c["Config"]["Labels"]["com.docker.compose.service"] == "identity":
            c["Image"] = image_id("identity", 1)
        elif c["Config"]["Labels"]["com.docker.compose.service"] in NEW:
            c["Image"] = image_id(c["Config"]["Labels"]["com.docker.compose.service"], 2)
    s, fake, out = host(containers=containers)
    deploy(s)
    assert len(fake.tiers) == 1 and " 1 identity 1 " in fake.tiers[0].command
    pin = upstreams(sent_config(fake.tiers[0], "pin"))
    assert pin["/server/*"] == ["server:8080"]  # not rolling: not pinned
    assert s.report.proxy_loads == 3


def test_force_rolls_unchanged_services():
    s, fake, out = host(version=1)
    deploy(s, force=True)
    assert len(fake.tiers) == 3
    assert "server: roll (1 → 1), forced" in out.getvalue()


def test_wait_restores_in_the_foreground_and_releases_the_lock():
    s, fake, out = host(restore="restored /etc/caddy/Caddyfile after 2s")
    deploy(s, wait=True)
    drains = [r for r in s.report.steps if r.name.startswith("drain ")]
    assert [d.detail for d in drains] == ["after 1s, 2 in flight at most"] * 3
    assert "restore.sh wait " in fake.calls[fake.index("restore.sh")].command
    assert fake.seen("finish.sh project 'root@") and fake.index("finish.sh") > fake.index("restore.sh")


def test_unhealthy_tier_fails_with_health_detail_and_leaves_later_tiers_alone():
    s, fake, out = host(tier=tier_host(NEW, health="unhealthy"))
    with pytest.raises(StepFailed) as e:
        deploy(s)
    assert (
        "server, property: not healthy: server:abc=running/unhealthy; new containers removed, old ones serving"
        in str(e.value)
    )
    assert "check exit 1: wget: server returned error: 503" in e.value.detail
    assert "panic: boom" in e.value.detail
    assert len(fake.tiers) == 1 and len(fake.tiers[0].said) == 1  # never switched
    # the proxy was pinned: restored in the foreground before failing, and the lock released
    assert "restore.sh wait " in fake.calls[fake.index("restore.sh")].command
    finish = fake.calls[fake.index("finish.sh")]
    assert "finish.sh project 'root@" in finish.command and finish.command.endswith(" 0 3 ''")  # unlock; no prune
    assert '"result": "failed"' in finish.stdin


def dropped_at_the_switch(new: dict[str, list[str]]):
    """tier.sh whose connection drops once zdd has sent the switch: zdd never hears how it ended
    (the host's tier.sh goes on: it switches, drains and retires on its own)."""
    script = tier_host(new)

    def dropped(sent: list[str]) -> list[str] | None:
        if sent and (sent[-1].startswith("switch ") or sent[-1] == "go"):
            return None
        return script(sent)

    return dropped


def test_a_connection_dropped_at_the_switch_leaves_the_proxy_on_container_addresses():
    """Before: the proxy's file was loaded at once (nothing to wait for: the tier was not known
    to have switched), so the service's name routed again to the old containers the host's
    tier.sh was draining and about to stop: a request in flight there when it stopped failed."""
    s, fake, out = host(tier=dropped_at_the_switch(NEW))
    with pytest.raises(StepFailed, match="server, property: the host-side rollout ended unexpectedly"):
        deploy(s)
    assert len(fake.tiers) == 1 and fake.tiers[0].said[-1].startswith("switch ")
    assert not fake.seen("restore.sh")
    proxy = [r.detail for r in s.report.steps if r.status == "skipped" and "container addresses" in r.detail]
    assert proxy == ["left on container addresses: the host never said how the tier server, property ended"]
    assert any("the next deploy (or fab -H sandbox recover) restores it" in n for n in s.notes), s.notes
    assert '"result": "failed"' in fake.calls[fake.index("finish.sh")].stdin  # the lock released, the run ended


def test_a_connection_dropped_without_proxy_routing_says_nothing_of_the_proxy():
    s, fake, out = host(tier=dropped_at_the_switch(NEW))
    s.host = dataclasses.replace(s.host, proxy=dataclasses.replace(s.host.proxy, drain=False))
    with pytest.raises(StepFailed, match="ended unexpectedly"):
        deploy(s)
    assert fake.tiers[0].said[-1] == "go"
    assert "container addresses" not in out.getvalue() and not fake.seen("restore.sh")


def test_a_tier_that_says_it_failed_still_gets_the_proxy_restored():
    s, fake, out = host(tier=tier_host(NEW, health="unhealthy"))
    with pytest.raises(StepFailed):
        deploy(s)
    assert fake.seen("restore.sh wait ") and "left on container addresses" not in out.getvalue()


class Interrupting(FakeConversation):
    """A tier whose health wait is interrupted by Ctrl-C."""

    def readline(self, timeout):
        line = super().readline(timeout)
        if line and line.startswith("progress"):
            raise KeyboardInterrupt
        return line


def interrupt_tier(monkeypatch, n: int) -> None:
    """Ctrl-C while the n-th tier (1-based) waits for health."""
    orig = FakeExecutor.converse

    def converse(self, command):
        conv = orig(self, command)
        if len(self.tiers) == n:
            conv.__class__ = Interrupting
        return conv

    monkeypatch.setattr(FakeExecutor, "converse", converse)


def test_ctrl_c_before_the_switch_signals_the_host_and_keeps_the_old_serving(monkeypatch):
    s, fake, out = host()
    interrupt_tier(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        deploy(s)
    assert fake.seen("kill -TERM 4242")  # tier.sh removes the new containers on SIGTERM
    assert not any(x.startswith("switch") for x in fake.tiers[0].said)
    restore = fake.calls[fake.index("restore.sh")].command
    assert "restore.sh detach" in restore  # Ctrl-C does not wait for old containers to stop


def test_ctrl_c_after_a_switch_never_undoes_that_tier(monkeypatch):
    s, fake, out = host()
    interrupt_tier(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        deploy(s)
    first, second = fake.tiers
    assert first.said[-1].startswith("switch ") and "abort" not in first.said
    assert len(fake.matching("kill -TERM 4242")) == 1  # only tier 2's tier.sh
    restore = fake.calls[fake.index("restore.sh")].command
    # the restore waits for tier 1's old containers (being stopped), not tier 2's (still serving)
    assert cid("a")[:12] in restore and cid("c")[:12] in restore and cid("e")[:12] not in restore


def test_no_proxy_container_rolls_without_loads():
    s, fake, out = host(survey=sandbox_survey(sandbox_containers()[:-1], proxy=None))
    with pytest.raises(BadInput, match="the proxy caddy is not running, so old containers cannot be drained"):
        deploy(s)  # refused: it would stop old containers without draining them
    assert fake.tiers == [] and len(fake.calls) == 1
    s, fake, out = host(survey=sandbox_survey(sandbox_containers()[:-1], proxy=None))
    s.host = dataclasses.replace(s.host, proxy=dataclasses.replace(s.host.proxy, drain=False))
    deploy(s)
    assert all(c.said[0] == "nopin" and c.said[1] == "go" for c in fake.tiers)
    assert s.report.proxy_loads == 0 and not fake.seen("restore.sh")


def test_a_pinned_proxy_left_by_an_unfinished_deploy_is_restored_even_when_nothing_rolls():
    pinned = json.loads(survey_text(sandbox_containers()).split("=== proxy-config 0\n")[1].split("\n")[0])
    pinned["apps"]["http"]["servers"]["srv0"]["routes"].append({"@id": "zdd-drain-hold"})
    s, fake, out = host(version=1, survey=sandbox_survey(sandbox_containers(), running=pinned))
    deploy(s)
    assert fake.tiers == [] and fake.seen("restore.sh")
    assert "still routing to container addresses" in "\n".join(s.notes)


def test_docker_rollout_engine_keeps_the_count_and_passes_the_label_hook():
    containers = sandbox_containers(extra={"server": 1})
    for c in containers:
        if c["Config"]["Labels"]["com.docker.compose.service"] == "server":
            c["Config"]["Labels"]["docker-rollout.pre-stop-hook"] = "sleep 1"
    s, fake, out = host(containers=containers)
    s.host = dataclasses.replace(s.host, engine="docker-rollout")
    fake.on("plugin_version.sh", ok("docker-rollout version v0.13\n"))
    deploy(s)
    cmd = fake.tiers[0].command
    assert "tier.sh plugin " in cmd
    assert " server 2 30 '' a00000000000,a10000000000 " in cmd and "'sleep 1'" in cmd


def test_rollout_service_always_rolls_and_waits():
    s, fake, out = host(version=1, restore="restored /etc/caddy/Caddyfile after 1s")
    sequence.rollout_service(s, engine_for(s.host), "identity")
    assert len(fake.tiers) == 1 and " 1 identity 1 " in fake.tiers[0].command
    assert "restore.sh wait " in fake.calls[fake.index("restore.sh")].command


def test_a_service_not_running_is_started_by_scaling_from_zero():
    containers = [c for c in sandbox_containers() if c["Config"]["Labels"]["com.docker.compose.service"] != "property"]
    s, fake, out = host(containers=containers, version=1)
    deploy(s)
    assert "property: roll (0 → 1), not running: start it" in out.getvalue()
    assert " property 1 30 '' '' '' '' " in fake.tiers[0].command


def test_zdd_loads_keep_websockets_open_on_caddy_2_7_and_newer():
    s, fake, out = host()
    deploy(s)
    pin = sent_config(fake.tiers[0], "pin")
    assert '"stream_close_delay": "5m"' in json.dumps(pin)
    assert not any("older than 2.7" in n for n in s.notes)


def test_older_caddy_gets_no_stream_close_delay_and_a_note():
    s, fake, out = host(survey=sandbox_survey(sandbox_containers(), version="2.6.2"))
    deploy(s)
    assert "stream_close_delay" not in json.dumps(sent_config(fake.tiers[0], "pin"))
    assert [n for n in s.notes if "older than 2.7" in n] == [
        "Caddy 2.6.2 is older than 2.7: every proxy reload of this deploy closes proxied websockets "
        "(no stream_close_delay)"
    ]


def test_validate_names_services_whose_caddyfile_lacks_stream_close_delay():
    s, fake, out = host(version=1)
    deploy(s)
    assert any(
        "no stream_close_delay on reverse_proxy for server, property, identity, profile-server" in n for n in s.notes
    )
