"""A whole `deploy --dry-run` against a fake host: only probes run, the plan is printed in
order, and the registry token shows up nowhere."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from fabfile import steps
from fabfile.config import load
from fabfile.report import Reporter
from fabfile.runner import Runner, StepFailed
from fabfile.session import Session
from tests.fakes import (
    SANDBOX_APPS,
    FakeExecutor,
    cid,
    compose_config_json,
    fail,
    inspect_responder,
    networks_json,
    sandbox_caddy_config,
    short,
)

HOSTS_TOML = Path(__file__).resolve().parent.parent / "hosts.toml"
TOKEN = "s3cr3t-token"
NET = "remilia_default"
CADDY = cid("cad")
RUNNING = {"server": [cid("a1"), cid("a2")], "property": [cid("c1")], "identity": [cid("d1")],
           "profile-server": [cid("e1")]}
RESTORE = "caddy reload --config /etc/caddy/Caddyfile --adapter caddyfile --force"

# What a dry run may send to the host: probes that change nothing.
READ_ONLY = ("config --format json", "ps --quiet", "caddy adapt", "docker inspect", "docker image ls",
             "plugin_version.sh")
MUTATING = ("lock.sh", "docker login", " pull ", "up --detach", "--scale", "docker stop", "docker rm", "caddy reload",
            "caddy validate", "image prune", "wait_healthy.sh", "wait_drained.sh", "install_plugin.sh")


def fake_host(compose_json: str | None = None) -> FakeExecutor:
    containers = {c: {NET: f"172.18.0.{10 + i}"} for i, c in enumerate(c for ids in RUNNING.values() for c in ids)}
    images = "".join(f"127.0.0.1:15000/zdd-sandbox/{s}:latest sha256:{i:064x}\n"
                     for i, s in enumerate((*SANDBOX_APPS, "base")))
    fake = FakeExecutor([
        ("config --format json", compose_json or compose_config_json()),
        ("ps --quiet --status running caddy", CADDY + "\n"),
        *((f"ps --quiet --status running {s}", "".join(i + "\n" for i in ids)) for s, ids in RUNNING.items()),
        *((f"ps --quiet {s}", "".join(i + "\n" for i in ids)) for s, ids in RUNNING.items()),
        ("caddy adapt", json.dumps(sandbox_caddy_config())),
        ("NetworkSettings.Networks", networks_json(NET)),
        ("docker inspect", inspect_responder(containers)),
        ("docker image ls", images),
    ])
    return fake


def session(name: str, fake: FakeExecutor) -> tuple[Session, io.StringIO]:
    out = io.StringIO()
    host = load(HOSTS_TOML).host(name)
    return Session(name, host, Runner(fake, name, dry_run=True, out=out), Reporter(name, out=out)), out


def in_order(lines: list[str], needles: list) -> list[int]:
    """Indexes of the lines containing each needle (a str or tuple of str), each after the last."""
    found, at = [], -1
    for needle in needles:
        parts = (needle,) if isinstance(needle, str) else needle
        for i in range(at + 1, len(lines)):
            if all(p in lines[i] for p in parts):
                found.append(i)
                at = i
                break
        else:
            raise AssertionError(f"{parts} not found after line {at}:\n" + "\n".join(
                f"  {i:3} {ln}" for i, ln in enumerate(lines)))
    return found


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("ZDD_SANDBOX_REGISTRY_PASSWORD", TOKEN)
    return TOKEN


@pytest.fixture
def deployed(token):
    fake = fake_host()
    s, out = session("sandbox", fake)
    steps.deploy(s)
    return s, out.getvalue(), fake


def test_dry_run_sends_only_probes_to_the_host(deployed):
    s, out, fake = deployed
    assert fake.calls, "the dry run must still read the host"
    for c in fake.calls:
        assert any(p in c.subject for p in READ_ONLY), f"not a probe: {c.command}"
        assert not any(p in c.subject for p in MUTATING), f"mutating command reached the host: {c.command}"
    # every command the plan shows is in the history, probes and would-runs alike
    planned = [ln.split("would run: ", 1)[1] for ln in out.splitlines() if "would run: " in ln]
    assert planned and all(p in s.r.history for p in planned)
    assert len(s.r.history) == len(fake.calls) + len(planned)


def test_dry_run_plan_in_order(deployed):
    s, out, fake = deployed
    plan = [ln for ln in out.splitlines() if "would run: " in ln]
    needles: list = [
        ("sh -s -- acquire __remilia", "< fabfile/remote/lock.sh"),
        ("docker login --username zdd --password-stdin 127.0.0.1:15000",
         "< $ZDD_SANDBOX_REGISTRY_PASSWORD (secret, on stdin)"),
        ("cd ~/remilia && docker compose -f docker-compose.yaml pull --quiet",
         "server property identity profile-server mongodb redis caddy"),
        "docker compose -f docker-compose.yaml up --detach --no-deps mongodb redis",
    ]
    for svc in ("server", "property", "identity", "profile-server"):
        n = len(RUNNING[svc])
        olds = " ".join(short(i) for i in RUNNING[svc])
        news = " ".join(f"'<new {svc} container {k + 1}>'" for k in range(n))
        needles += [
            ("caddy reload --config /dev/stdin", f"{svc} →", ": old)"),
            f"up --detach --no-deps --no-recreate --scale {svc}={2 * n} {svc}",
            (f"sh -s -- 30 10 {news}", "< fabfile/remote/wait_healthy.sh"),
            ("caddy reload --config /dev/stdin", f"<ip of new {svc} container 1>", ": new)"),
            (f"sh -s -- {short(CADDY)} localhost:2019 60 {svc}:8080", "< fabfile/remote/wait_drained.sh"),
            f"docker stop {olds} && docker rm {olds}",
            RESTORE,
        ]
    needles += [
        f"docker exec {short(CADDY)} caddy validate --config /etc/caddy/Caddyfile --adapter caddyfile",
        f"docker exec {short(CADDY)} {RESTORE}",
        "docker image prune --force",
        ("sh -s -- release __remilia", "< fabfile/remote/lock.sh"),
    ]
    idx = in_order(plan, needles)
    assert idx[0] == 0 and idx[-1] == len(plan) - 1  # the lock is taken first and released last
    assert sum("--scale" in ln for ln in plan) == 4
    assert sum("docker login" in ln for ln in plan) == 1
    # pinning routes the service to its real old addresses (read from the host)
    pin = plan[idx[4]]
    assert "server → 172.18.0.10, 172.18.0.11" in pin


def test_dry_run_report_steps(deployed):
    s, out, fake = deployed
    assert [(r.name, r.status) for r in s.report.steps] == [
        ("validate", "ok"), ("engine", "ok"), ("pull", "ok"), ("infra-up", "ok"),
        ("rollout server", "ok"), ("rollout property", "ok"), ("rollout identity", "ok"),
        ("rollout profile-server", "ok"), ("reload-caddy", "ok"), ("prune", "ok"),
    ]
    assert s.report.steps[1].detail == "native"


def test_registry_token_appears_nowhere(deployed, token):
    s, out, fake = deployed
    assert token not in out
    for c in fake.calls:
        assert token not in c.command
        assert token not in (c.stdin or "")
    assert not any(token in h for h in s.r.history)
    assert not any(token in r.detail for r in s.report.steps)


def test_registry_token_missing_fails_before_pulling(monkeypatch, tmp_path):
    monkeypatch.delenv("ZDD_SANDBOX_REGISTRY_PASSWORD", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env to fall back on
    fake = fake_host()
    s, out = session("sandbox", fake)
    with pytest.raises(StepFailed, match=r"\$ZDD_SANDBOX_REGISTRY_PASSWORD is not set"):
        steps.deploy(s)
    assert "would run" not in out.getvalue()  # found by validation, before the lock or any change
    assert s.report.steps[-1].name == "validate" and s.report.steps[-1].status == "failed"


@pytest.mark.parametrize("patch, problem", [
    ({"server": {"container_name": "remilia-server"}}, "server sets container_name"),
    ({"property": {"ports": [{"mode": "ingress", "target": 8080, "published": "8080", "protocol": "tcp"}]}},
     "property publishes host ports"),
    ({"identity": None}, "service 'identity' is not in the compose project"),
    ({"redis": None}, "service 'redis' is not in the compose project"),
])
def test_validation_failure_stops_before_anything_else(token, patch, problem):
    fake = fake_host(compose_config_json(patch))
    s, out = session("sandbox", fake)
    with pytest.raises(StepFailed) as e:
        steps.deploy(s)
    assert problem in str(e.value)
    assert len(fake.calls) == 1 and "config --format json" in fake.calls[0].command
    assert "would run" not in out.getvalue()
    assert [(r.name, r.status) for r in s.report.steps] == [("validate", "failed")]
    assert s.r.history == [fake.calls[0].command]


def test_unpublished_ports_and_infra_container_name_are_fine(token):
    patch = {"server": {"ports": [{"mode": "ingress", "target": 8080, "protocol": "tcp"}]},
             "redis": {"container_name": "redis"}}
    fake = fake_host(compose_config_json(patch))
    s, out = session("sandbox", fake)
    steps.deploy(s)
    assert s.report.steps[-1].name == "prune"


def test_dry_run_with_docker_rollout_not_yet_installed_shows_the_whole_plan(monkeypatch):
    monkeypatch.setenv("GH_PACKAGES_TOKEN", TOKEN)
    monkeypatch.setenv("GH_ACTOR", "bot")
    h = load(HOSTS_TOML).host("reminet-staging")
    fake = fake_host(compose_config_json({s: {"image": f"x/{s}"} for s in h.infra}))
    fake.first("plugin_version.sh", fail(1, "not installed\n"))
    s, out = session("reminet-staging", fake)
    steps.deploy(s)
    plan = out.getvalue()
    assert "install_plugin.sh" in plan
    assert "docker rollout -f docker-compose.yaml" in plan


def test_unreadable_proxy_config_fails_validation_before_any_change(monkeypatch):
    monkeypatch.setenv("ZDD_SANDBOX_REGISTRY_PASSWORD", TOKEN)
    fake = fake_host()
    fake.first("caddy adapt", fail(1, stderr="Error: adapting config using caddyfile: Caddyfile:3: unknown directive"))
    s, out = session("sandbox", fake)
    with pytest.raises(StepFailed, match=r"cannot read /etc/caddy/Caddyfile as a Caddy config in caddy "
                                         r"\(Error: adapting .*unknown directive\).*proxy.drain = false"):
        steps.deploy(s)
    assert [r.name for r in s.report.steps] == ["validate"]
    assert not any(m in c for c in fake.commands for m in MUTATING)
