"""Unit tests for fabfile.engines, driven by a scripted fake executor (no SSH, no Docker)."""

from __future__ import annotations

import dataclasses
import io
import json
import shlex

import pytest

from fabfile.config import HostConfig, ProxyConfig, ServiceConfig
from fabfile.engines import DockerRolloutEngine, NativeEngine, engine_for
from fabfile.runner import Runner, StepFailed
from tests.fakes import (
    FakeExecutor,
    cid,
    fail,
    inspect_responder,
    networks_json,
    ok,
    sandbox_caddy_config,
    short,
)

NET = "remilia_default"
CADDY = cid("cad")
OLD = [cid("a1"), cid("a2"), cid("a3")]
NEW = [cid("b1"), cid("b2"), cid("b3")]
IP = {**{o: f"172.18.0.1{i + 1}" for i, o in enumerate(OLD)}, **{n: f"172.18.0.2{i + 1}" for i, n in enumerate(NEW)}}
RESTORE = "caddy reload --config /etc/caddy/Caddyfile --adapter caddyfile --force"


def make_host(**kw) -> HostConfig:
    base = dict(name="t", dir="~/app", engine="native", rollout=(("server", "property"), ("identity",)),
                infra=("redis",), health_timeout=60)
    base.update(kw)
    return HostConfig(**base)


class Scenario:
    """A host running ``server`` (``n_old`` containers) behind a running Caddy."""

    def __init__(self, n_old: int = 2, *, caddy: bool = True, health=None, drain=None,
                 new_running: int | None = None, host: HostConfig | None = None, networks=(NET, "bridge")):
        self.old = OLD[:n_old]
        self.new = NEW[:n_old]
        self.host = host or make_host()
        self.out = io.StringIO()
        visible_new = self.new if new_running is None else self.new[:new_running]

        def server_ps(call, fake):
            ids = self.old + (visible_new if fake.seen("--scale server=") else [])
            return "".join(i + "\n" for i in ids)

        def server_ps_all(call, fake):
            ids = self.old + (self.new if fake.seen("--scale server=") else [])
            return "".join(i + "\n" for i in ids)

        containers = {c: {n: IP[c] for n in networks} for c in self.old + self.new}
        health_json = json.dumps({"Status": "unhealthy", "FailingStreak": 3,
                                  "Log": [{"ExitCode": 1, "Output": "wget: connection refused\n"}]})
        self.fake = FakeExecutor([
            ("State.Health", f"/remilia-server-3 {health_json}\n"),
            ("NetworkSettings.Networks", networks_json(NET, "bridge")),
            ("docker inspect", inspect_responder(containers)),
            ("docker logs", ok("listening on :8080\npanic: boom\n")),
            ("ps --quiet --status running caddy", (CADDY + "\n") if caddy else ""),
            ("ps --quiet --status running server", server_ps),
            ("ps --quiet server", server_ps_all),
            ("caddy adapt", json.dumps(sandbox_caddy_config())),
            ("--scale server=", ok()),
            ("/dev/stdin", ok()),
            ("wait_healthy.sh", health or ok("healthy after 3s\n")),
            ("wait_drained.sh", drain or ok("drained after 1s\n")),
            ("docker stop", ok()),
            (RESTORE, ok()),
            ("sh -c", ok()),
        ])
        self.r = Runner(self.fake, "t", out=self.out)

    def roll(self, name: str = "server") -> str:
        return NativeEngine(self.host).rollout(self.r, self.host.service(name))

    def args(self, i: int) -> list[str]:
        return shlex.split(self.fake.calls[i].command)


def server_dials(config: dict) -> dict[str, list[str]]:
    """path prefix → upstream dials, for the sandbox-shaped Caddy config."""
    out = {}
    for route in config["apps"]["http"]["servers"]["srv0"]["routes"][0]["handle"][0]["routes"]:
        if "match" in route:
            rp = route["handle"][0]["routes"][1]["handle"][0]
            out[route["match"][0]["path"][0]] = [u["dial"] for u in rp["upstreams"]]
    return out


# --- the happy path, in order ---------------------------------------------------------------------

def test_native_rollout_order_behind_caddy():
    sc = Scenario(2)
    result = sc.roll()
    f = sc.fake

    adapt = f.index("caddy adapt")
    pin = f.index("/dev/stdin")
    scale = f.index("--scale server=4")
    wait = f.index("wait_healthy.sh")
    switch = f.index("/dev/stdin", after=pin)
    drain = f.index("wait_drained.sh")
    stop = f.index("docker stop")
    restore = f.index(RESTORE)
    assert adapt < pin < scale < wait < switch < drain < stop < restore
    assert restore == len(f.calls) - 1

    # pin: the service's upstreams are the old containers' IPs, others untouched
    pinned = server_dials(json.loads(f.calls[pin].stdin))
    assert pinned["/server/*"] == ["172.18.0.11:8080", "172.18.0.12:8080"]
    assert pinned["/property/*"] == ["property:8080"]
    assert pinned["/profile-server/*"] == ["profile-server:8080"]
    assert f.calls[pin].command.startswith(f"docker exec --interactive {short(CADDY)} caddy reload")

    # health is awaited on the new containers only
    assert sc.args(wait) == ["sh", "-s", "--", "60", "10", short(NEW[0]), short(NEW[1])]

    # switch: only the new containers' IPs
    switched = server_dials(json.loads(f.calls[switch].stdin))
    assert switched["/server/*"] == ["172.18.0.21:8080", "172.18.0.22:8080"]
    assert switched["/identity/*"] == ["identity:8080"]

    # drain waits on the name and the old addresses at Caddy's admin API
    assert sc.args(drain) == ["sh", "-s", "--", short(CADDY), "localhost:2019", "60",
                              "server:8080", "172.18.0.11:8080", "172.18.0.12:8080"]

    # the old ones are stopped and removed, the new ones are not
    o1, o2 = short(OLD[0]), short(OLD[1])
    assert f.calls[stop].command == f"docker stop {o1} {o2} && docker rm {o1} {o2}"
    assert len(f.matching("docker stop")) == 1
    assert not any(short(n) in c for n in NEW for c in f.commands if "docker stop" in c)

    assert result == "2 → 2 container(s), drained after 1s"


@pytest.mark.parametrize("n", [1, 2, 3])
def test_replica_count_doubles_and_stops_exactly_the_old(n):
    sc = Scenario(n)
    sc.roll()
    f = sc.fake
    assert f.seen(f"--scale server={2 * n} server")
    stop = sc.args(f.index("docker stop"))
    olds = [short(o) for o in OLD[:n]]
    assert stop == ["docker", "stop", *olds, "&&", "docker", "rm", *olds]
    assert sc.args(f.index("wait_healthy.sh"))[5:] == [short(x) for x in NEW[:n]]


def test_stop_timeout_and_pre_stop_hook():
    host = make_host(stop_timeout=25, pre_stop_hook="kill -USR1 1; sleep 2")
    sc = Scenario(2, host=host)
    sc.roll()
    f = sc.fake
    hooks = f.matching("sh -c")
    assert [sc.args(i) for i in hooks] == [
        ["docker", "exec", short(o), "sh", "-c", "kill -USR1 1; sleep 2"] for o in OLD[:2]
    ]
    drain, stop = f.index("wait_drained.sh"), f.index("docker stop")
    assert all(drain < i < stop for i in hooks)
    assert sc.args(stop)[:4] == ["docker", "stop", "--time", "25"]


# --- failures -------------------------------------------------------------------------------------

def test_health_failure_removes_new_keeps_old_and_restores_proxy():
    sc = Scenario(2, health=fail(1, stdout=f"failed: {short(NEW[0])}=exited\n"))
    with pytest.raises(StepFailed) as e:
        sc.roll()
    f = sc.fake
    assert "server: new container(s) not healthy" in str(e.value)
    assert f"failed: {short(NEW[0])}=exited" in str(e.value)
    assert "health: unhealthy" in e.value.detail and "wget: connection refused" in e.value.detail
    assert "panic: boom" in e.value.detail

    wait, removal, restore = f.index("wait_healthy.sh"), f.index("docker stop"), f.index(RESTORE)
    n1, n2 = short(NEW[0]), short(NEW[1])
    assert f.calls[removal].command == f"docker stop {n1} {n2} && docker rm {n1} {n2}"
    assert wait < removal < restore == len(f.calls) - 1
    # the old containers are never touched, traffic is never switched to the new ones
    assert not any(short(o) in c for o in OLD for c in f.commands if "docker stop" in c or "docker rm" in c)
    assert len(f.matching("/dev/stdin")) == 1
    assert not f.seen("wait_drained.sh")


def test_health_failure_new_container_removal_failing_still_raises_health_error():
    sc = Scenario(1, health=fail(2, stdout="timeout after 60s: b1=starting\n"))
    sc.fake.first("docker stop", fail(1, stderr="Error: no such container"))
    with pytest.raises(StepFailed, match="not healthy: timeout after 60s"):
        sc.roll()
    assert sc.fake.seen(RESTORE)


def test_service_not_running_is_started_and_awaited_without_scaling():
    sc = Scenario(2)
    sc.fake.first("ps --quiet --status running server", ["", f"{NEW[0]}\n{NEW[1]}\n"])
    sc.fake.first("up --detach --no-deps server", ok())
    result = sc.roll()
    f = sc.fake
    up, wait = f.index("up --detach --no-deps server"), f.index("wait_healthy.sh")
    assert f.index("ps --quiet --status running server") < up < wait
    assert sc.args(up)[-4:] == ["up", "--detach", "--no-deps", "server"]
    assert sc.args(wait)[5:] == [short(NEW[0]), short(NEW[1])]
    assert not f.seen("--scale")
    assert not f.seen("docker stop")
    assert not f.seen("caddy")
    assert result == "was not running: started 2"


def test_service_not_running_and_not_starting_fails():
    sc = Scenario(2)
    sc.fake.first("ps --quiet --status running server", "")
    sc.fake.first("up --detach --no-deps server", ok())
    with pytest.raises(StepFailed, match="no container is running after up"):
        sc.roll()
    assert not sc.fake.seen("wait_healthy.sh")


def test_drain_timeout_still_stops_old_with_a_note():
    line = "timeout after 60s, still in flight: 172.18.0.11:8080=1"
    sc = Scenario(2, drain=fail(2, stdout=line + "\n"))
    result = sc.roll()
    f = sc.fake
    assert f.index("wait_drained.sh") < f.index("docker stop") < f.index(RESTORE)
    assert short(OLD[0]) in f.calls[f.index("docker stop")].command
    out = sc.out.getvalue()
    assert line in out and "stopping the old containers anyway" in out
    assert result.endswith(line)


def test_drain_unobservable_waits_a_grace_period_then_stops_old(monkeypatch):
    import fabfile.proxy as proxy_mod
    slept = []
    monkeypatch.setattr(proxy_mod.time, "sleep", slept.append)
    sc = Scenario(1, drain=fail(3, stdout="cannot read http://localhost:2019/reverse_proxy/upstreams\n"))
    assert sc.roll().endswith("waited 10s (in-flight requests not observable)")
    assert slept == [proxy_mod.UNOBSERVED_GRACE]
    assert sc.fake.seen("docker stop", short(OLD[0]))
    assert "cannot observe in-flight requests" in sc.out.getvalue()


def test_no_caddy_container_rolls_without_reloads():
    sc = Scenario(2, caddy=False)
    result = sc.roll()
    f = sc.fake
    assert f.seen("ps --quiet --status running caddy")
    assert not f.seen("/dev/stdin") and not f.seen(RESTORE) and not f.seen("caddy adapt")
    assert not f.seen("wait_drained.sh")
    assert f.index("--scale server=4") < f.index("wait_healthy.sh") < f.index("docker stop")
    assert "no running caddy container" in sc.out.getvalue()
    assert result == "2 → 2 container(s)"


def test_service_not_routed_by_caddy_rolls_without_reloads():
    sc = Scenario(1)
    sc.fake.first("caddy adapt", json.dumps({"apps": {}}))
    sc.roll()
    f = sc.fake
    assert f.seen("caddy adapt")
    assert not f.seen("/dev/stdin") and not f.seen(RESTORE)
    assert f.seen("docker stop", short(OLD[0]))


def test_drain_disabled_does_not_even_look_for_the_proxy():
    host = make_host(proxy=ProxyConfig(drain=False))
    sc = Scenario(1, host=host)
    sc.roll()
    assert not sc.fake.seen("caddy")
    assert sc.fake.seen("--scale server=2")


def test_no_shared_network_fails_before_scaling_and_restores():
    sc = Scenario(2, networks=("backend",))
    with pytest.raises(StepFailed, match="share no network with caddy"):
        sc.roll()
    assert not sc.fake.seen("--scale")
    assert sc.fake.calls[-1].command.endswith(RESTORE)


def test_scale_failure_restores_the_proxy():
    sc = Scenario(2)
    sc.fake.first("--scale server=", fail(1, stderr="Error response from daemon: pull access denied"))
    with pytest.raises(StepFailed, match="pull access denied"):
        sc.roll()
    f = sc.fake
    assert f.index("/dev/stdin") < f.index("--scale") < f.index(RESTORE)
    stops = [c for c in f.commands if "docker stop" in c]
    # containers the failed scale-up left behind are removed; the old ones are never stopped
    assert stops and all(short(n) in stops[0] for n in sc.new)
    assert not any(short(o) in c for o in sc.old for c in stops)


def test_stop_failure_still_restores_the_proxy():
    sc = Scenario(1)
    sc.fake.first("docker stop", fail(1, stderr="permission denied"))
    with pytest.raises(StepFailed, match="permission denied"):
        sc.roll()
    assert sc.fake.calls[-1].command.endswith(RESTORE)


# --- new containers that are not (yet) running ------------------------------------------------

def test_new_container_not_yet_running_is_checked_and_removed_on_failure():
    # Right after scale-up the new container is restarting (crash at boot): it is still found
    # (listed in every state), its health wait fails, and it is removed; the old one stays.
    sc = Scenario(1, new_running=0, health=fail(1, stdout=f"failed: {short(NEW[0])}=restarting\n"))
    with pytest.raises(StepFailed):
        sc.roll()
    assert short(NEW[0]) in sc.fake.calls[sc.fake.index("wait_healthy.sh")].command
    removed = [c for c in sc.fake.commands if "docker rm" in c]
    assert any(short(NEW[0]) in c for c in removed), sc.fake.commands
    assert not any(short(OLD[0]) in c for c in sc.fake.commands if "docker stop" in c)


def test_partial_scale_up_health_checks_every_new_container():
    sc = Scenario(2, new_running=1)
    assert sc.roll().startswith("2 → 2")
    wait = sc.fake.calls[sc.fake.index("wait_healthy.sh")].command
    assert short(NEW[0]) in wait and short(NEW[1]) in wait


# --- docker-rollout engine ------------------------------------------------------------------------

def no_proxy(**kw) -> HostConfig:
    return make_host(engine="docker-rollout", proxy=ProxyConfig(service=""), **kw)


def test_docker_rollout_command():
    host = no_proxy(compose_files=("docker-compose.yaml", "infra/x.yaml"), project_name="remi",
                    env_file=".env.prod", health_timeout=45, pre_stop_hook="sleep 5")
    fake = FakeExecutor([("ps --quiet --status running identity", OLD[0] + "\n"),
                         ("docker rollout", ok("==> Stopping and removing old containers\n"))])
    r = Runner(fake, "t", out=io.StringIO())
    assert DockerRolloutEngine(host).rollout(r, host.service("identity")) == "rolled by docker-rollout"
    [cmd] = [c for c in fake.commands if "docker rollout" in c]
    assert shlex.split(cmd) == [
        "cd", "~/app", "&&", "docker", "rollout", "-f", "docker-compose.yaml", "-f", "infra/x.yaml",
        "-p", "remi", "--env-file", ".env.prod", "--timeout", "45", "--wait", "10",
        "--pre-stop-hook", "sleep 5", "identity",
    ]


def test_docker_rollout_uses_per_service_settings():
    host = dataclasses.replace(no_proxy(), services={"server": ServiceConfig(health_timeout=120)})
    fake = FakeExecutor([("ps --quiet --status running server", OLD[0] + "\n"), ("docker rollout", ok())])
    DockerRolloutEngine(host).rollout(Runner(fake, "t", out=io.StringIO()), host.service("server"))
    args = shlex.split(fake.calls[fake.index("docker rollout")].command)
    assert args[args.index("--timeout") + 1] == "120"
    assert "--pre-stop-hook" not in args
    assert args[-1] == "server"


def test_docker_rollout_failure_raises_with_output():
    fake = FakeExecutor([("ps --quiet --status running server", OLD[0] + "\n"),
                         ("docker rollout", fail(1, stdout="==> Scaling 'server' to '2' instances\n",
                                                 stderr="==> New containers are not healthy. Rolling back.\n"))])
    with pytest.raises(StepFailed) as e:
        DockerRolloutEngine(no_proxy()).rollout(Runner(fake, "t", out=io.StringIO()), no_proxy().service("server"))
    assert "docker rollout server failed" in str(e.value)
    assert "New containers are not healthy. Rolling back." in str(e.value)
    assert "Scaling 'server' to '2' instances" in e.value.detail


def _draining_rollout(health=None, rollout=None, label=""):
    """docker-rollout behind Caddy: the fake's `ps` shows new containers once rollout ran."""
    sc = Scenario(2, health=health, host=make_host(engine="docker-rollout", pre_stop_hook=""))
    sc.fake.first("ps --quiet server", lambda call, fake: "".join(
        i + "\n" for i in sc.old + (sc.new if fake.seen("docker rollout") else [])))
    sc.fake.first("docker-rollout.pre-stop-hook", ok(label + "\n"))
    sc.fake.first("docker rollout", rollout or ok("==> Stopping and removing old containers\n"))
    sc.fake.first(": > /tmp/.zdd-release-", ok())
    return sc


def test_docker_rollout_behind_caddy_drains_before_releasing_the_old_containers():
    sc = _draining_rollout(label="sleep 2")
    out = DockerRolloutEngine(sc.host).rollout(sc.r, sc.host.service("server"))
    assert out.startswith("2 → 2 container(s) by docker-rollout, drained")
    f = sc.fake
    pin = f.index("/dev/stdin")
    start = f.index("docker rollout")
    health = f.index("wait_healthy.sh")
    switch = f.index("/dev/stdin", after=pin)
    drained = f.index("wait_drained.sh")
    releases = [i for i in f.matching(": > /tmp/.zdd-release-") if "-probe" not in f.calls[i].command]
    restore = f.index(RESTORE)
    assert pin < start < health < switch < drained < min(releases) and max(releases) < restore
    assert len(releases) == 2 and all(short(o) in f.calls[i].command for o, i in zip(sc.old, releases))
    hook = shlex.split(f.calls[start].command)
    hook = hook[hook.index("--pre-stop-hook") + 1]
    marker = shlex.split(f.calls[releases[0]].command)[-1].split("> ")[1]
    assert f"[ ! -e {marker} ]" in hook and hook.endswith("; sleep 2")  # the label's hook still runs
    assert all(short(n) in f.calls[health].command for n in sc.new)


def test_docker_rollout_behind_caddy_unhealthy_restores_before_releasing():
    sc = _draining_rollout(health=fail(2, stdout="timeout after 60s: x=starting\n"),
                           rollout=fail(1, stderr="==> New containers are not healthy. Rolling back.\n"))
    with pytest.raises(StepFailed, match="not healthy"):
        DockerRolloutEngine(sc.host).rollout(sc.r, sc.host.service("server"))
    f = sc.fake
    releases = [i for i in f.matching(": > /tmp/.zdd-release-") if "-probe" not in f.calls[i].command]
    assert f.index(RESTORE) < min(releases)
    assert not f.seen("wait_drained.sh")


def test_docker_rollout_prepare_ok():
    host = make_host(engine="docker-rollout")
    fake = FakeExecutor([("plugin_version.sh", ok("docker-rollout version v0.13\n"))])
    DockerRolloutEngine(host).prepare(Runner(fake, "t", out=io.StringIO()))
    assert shlex.split(fake.calls[0].command) == ["sh", "-s", "--", "v0.13", host.plugin.sha256]


def test_docker_rollout_prepare_fails_pointing_at_install_plugin():
    host = make_host(engine="docker-rollout")
    fake = FakeExecutor([("plugin_version.sh", fail(1, stdout="not installed\n"))])
    with pytest.raises(StepFailed) as e:
        DockerRolloutEngine(host).prepare(Runner(fake, "t", out=io.StringIO()))
    msg = str(e.value)
    assert "install-plugin" in msg and "v0.13" in msg and "not installed" in msg


def test_native_prepare_runs_nothing_and_engine_for_picks_by_name():
    fake = FakeExecutor()
    NativeEngine(make_host()).prepare(Runner(fake, "t", out=io.StringIO()))
    assert fake.calls == []
    assert isinstance(engine_for(make_host(engine="native")), NativeEngine)
    assert isinstance(engine_for(make_host(engine="docker-rollout")), DockerRolloutEngine)
