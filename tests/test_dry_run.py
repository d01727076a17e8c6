"""A whole `deploy --dry-run` against a fake host: only probes run, the plan is printed in
order, and the registry token shows up nowhere."""

from __future__ import annotations

import io
import json

import pytest

from fabfile import journal
from fabfile.config import load
from fabfile.runner import StepFailed
from fabfile.session import Session
from tests.fakes import (
    HOSTS_TOML,
    FakeExecutor,
    cid,
    container_json,
    deploy,
    fail,
    fake_session,
    image_id,
    image_listing,
    sandbox_caddy_config,
    sandbox_compose_json,
    sandbox_containers,
    sandbox_survey,
)

TOKEN = "s3cr3t-token"

# What a dry run may send to the host: probes that change nothing.
READ_ONLY = ("survey.sh", "docker image ls", "plugin_version.sh")
MUTATING = (
    "lock.sh",
    "docker login",
    " pull ",
    "pull.sh",
    "up --detach",
    "tier.sh",
    "restore.sh",
    "caddy reload",
    "image prune",
    "install_plugin.sh",
    "finish.sh",
    "recover.sh",
    "docker tag",
)


def fake_host(compose_json: str | None = None, survey: str | None = None, version: int = 2) -> FakeExecutor:
    return FakeExecutor(
        [
            ("survey.sh", survey or sandbox_survey(compose=compose_json)),
            ("docker image ls", image_listing(version)),
        ]
    )


def session(name: str, fake: FakeExecutor) -> tuple[Session, io.StringIO]:
    return fake_session(fake, name, dry_run=True)


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
            raise AssertionError(
                f"{parts} not found after line {at}:\n" + "\n".join(f"  {i:3} {ln}" for i, ln in enumerate(lines))
            )
    return found


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("ZDD_SANDBOX_REGISTRY_PASSWORD", TOKEN)
    return TOKEN


@pytest.fixture
def deployed(token):
    fake = fake_host()
    s, out = session("sandbox", fake)
    deploy(s)
    return s, out.getvalue(), fake


def test_dry_run_sends_only_probes_to_the_host(deployed):
    s, out, fake = deployed
    assert fake.calls, "the dry run must still read the host"
    for c in fake.calls:
        assert any(p in c.subject for p in READ_ONLY), f"not a probe: {c.command[:100]}"
        assert not any(p in c.command.split("survey.sh")[-1] for p in MUTATING), c.command[:100]
    planned = [ln.split("would run: ", 1)[1] for ln in out.splitlines() if "would run: " in ln]
    assert planned and all(p in s.r.history for p in planned)
    assert len(s.r.history) == len(fake.calls) + len(planned)


def test_dry_run_plan_in_order(deployed):
    s, out, fake = deployed
    lines = out.splitlines()
    needles: list = [
        (
            "would run: sh -c '<fabfile/remote/lock.sh>' lock.sh acquire project ",
            " deploy since ",
            " 120",
            "< journal lines",
        ),
        (
            "would run: cd ~/remilia && sh -c '<fabfile/remote/pull.sh>' pull.sh 0 127.0.0.1:15000 zdd 900 "
            "server property identity profile-server mongodb redis caddy -- -f docker-compose.yaml",
            "< $ZDD_SANDBOX_REGISTRY_PASSWORD (secret, on stdin)",
        ),
        "server: roll (1 → 1), new image",
        "profile-server: roll (1 → 1), new image",
        (
            "would run: cd ~/remilia && sh -c '<fabfile/remote/tier.sh>' tier.sh compose cad000000000",
            " 2 server 1 30 ",
            "server:8080,172.18.0.10:8080",
            " property 1 30 ",
        ),
        "would send: the proxy config pinning every service that rolls to its old containers",
        "would send: the proxy config routing server, property to the new containers",
        ("would run:", "tier.sh compose cad000000000", " 1 identity 1 30 "),
        "would send: nothing to pin",
        ("would run:", "tier.sh compose cad000000000", " 1 profile-server 1 30 "),
        (
            "would run:",
            "sh -c '<fabfile/remote/restore.sh>' restore.sh detach project cad000000000 "
            "/etc/caddy/Caddyfile 100 - a00000000000 c00000000000 e00000000000 100000000000",
        ),
        # the end of the run: journal, keep tags of the new images, prune; no holder to release
        (
            "would run: sh -c '<fabfile/remote/finish.sh>' finish.sh project '' 1 3 ",
            " server=sha256:02",
            " profile-server=sha256:02",
            "< journal lines",
        ),
    ]
    in_order(lines, needles)
    # the restore job on the host takes the lock over and releases it: the deploy does not
    assert not any("lock.sh release" in ln or "lock.sh unlock" in ln for ln in lines)
    assert sum("tier.sh" in ln for ln in lines) == 3  # one conversation per tier
    assert not any("up --detach" in ln and "--scale" in ln for ln in lines)  # the host scales, in tier.sh


def test_dry_run_report_steps(deployed):
    s, out, fake = deployed
    assert [(r.name, r.status) for r in s.report.steps] == [
        ("validate", "ok"),
        ("pull", "ok"),
        ("infra-up", "skipped"),
        ("plan", "ok"),
        ("rollout server, property", "ok"),
        ("rollout identity", "ok"),
        ("rollout profile-server", "ok"),
        ("drain server, property", "ok"),
        ("drain identity", "ok"),
        ("drain profile-server", "ok"),
        ("reload-caddy", "ok"),
        ("finish", "ok"),
    ]
    assert s.report.steps[3].detail == "roll 4 of 4 in 3 tier(s)"


def test_dry_run_finish_step_does_not_read_like_an_error(deployed):
    s, out, fake = deployed
    finish = s.report.steps[-1]
    assert (finish.name, finish.status) == ("finish", "ok")
    assert "exit status" not in finish.detail


def test_dry_run_of_an_unchanged_host_plans_nothing(token):
    fake = fake_host(version=1)
    s, out = session("sandbox", fake)
    deploy(s)
    text = out.getvalue()
    assert "tier.sh" not in text and "restore.sh" not in text and "image prune" not in text
    finish = next(ln for ln in text.splitlines() if "finish.sh" in ln)
    assert f" finish.sh project '{journal.who()} pid " in finish  # releases its lock
    assert " 0 3 ''  < journal lines" in finish  # no prune, no keep tags
    assert text.count("skip, unchanged") == 4


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
        deploy(s)
    assert "would run" not in out.getvalue()  # found by validation, before the lock or any change
    assert s.report.steps[-1].name == "validate" and s.report.steps[-1].status == "failed"


@pytest.mark.parametrize(
    "patch, problem",
    [
        ({"server": {"container_name": "remilia-server"}}, "server sets container_name"),
        (
            {"property": {"ports": [{"mode": "ingress", "target": 8080, "published": "8080", "protocol": "tcp"}]}},
            "property publishes host ports",
        ),
        ({"identity": None}, "service 'identity' is not in the compose project"),
        ({"redis": None}, "service 'redis' is not in the compose project"),
        (
            {"identity": {"healthcheck": {"disable": True}}},
            "identity has no healthcheck, so nothing says when a new "
            "container is ready: add one, or set "
            "services.identity.no_healthcheck_wait",
        ),
    ],
)
def test_validation_failure_stops_before_anything_else(token, patch, problem):
    fake = fake_host(sandbox_compose_json(patch))
    s, out = session("sandbox", fake)
    with pytest.raises(StepFailed) as e:
        deploy(s)
    assert problem in str(e.value)
    assert len(fake.calls) == 1 and "survey.sh" in fake.calls[0].command
    assert "would run" not in out.getvalue()
    assert [(r.name, r.status) for r in s.report.steps] == [("validate", "failed")]


def test_unpublished_ports_and_infra_container_name_are_fine(token):
    patch = {
        "server": {"ports": [{"mode": "ingress", "target": 8080, "protocol": "tcp"}]},
        "redis": {"container_name": "redis"},
    }
    fake = fake_host(sandbox_compose_json(patch))
    s, out = session("sandbox", fake)
    deploy(s)
    assert s.report.steps[-1].name == "finish"


def test_dry_run_with_docker_rollout_not_yet_installed_shows_the_whole_plan(monkeypatch):
    monkeypatch.setenv("GH_PACKAGES_TOKEN", TOKEN)
    monkeypatch.setenv("GH_ACTOR", "bot")
    h = load(HOSTS_TOML).host("reminet-staging")
    compose = sandbox_compose_json({s: {"image": f"x/{s}"} for s in h.infra})
    fake = fake_host(compose, sandbox_survey(compose=compose, hashes={}))
    fake.first("plugin_version.sh", fail(1, "not installed\n"))
    s, out = session("reminet-staging", fake)
    deploy(s)
    plan = out.getvalue()
    assert "install_plugin.sh" in plan
    assert "tier.sh plugin" in plan


def test_unreadable_proxy_config_fails_validation_before_any_change(monkeypatch):
    monkeypatch.setenv("ZDD_SANDBOX_REGISTRY_PASSWORD", TOKEN)
    text = sandbox_survey().replace(
        "=== proxy-config 0\n",
        "=== proxy-config 1\nError: adapting config using caddyfile: Caddyfile:3: unknown directive\n=== ignored 0\n",
    )
    fake = fake_host(survey=text)
    s, out = session("sandbox", fake)
    with pytest.raises(
        StepFailed,
        match=r"reading the proxy config failed: Error: adapting .*unknown directive.*"
        r"proxy.drain = false",
    ):
        deploy(s)
    assert [r.name for r in s.report.steps] == ["validate"]
    assert len(fake.calls) == 1


def test_a_service_the_proxy_reaches_through_a_network_alias_is_refused(token):
    """Caddy dials `api:8080`, a network alias of server: zdd could neither pin nor drain it."""
    config = sandbox_caddy_config()
    text = json.dumps(config).replace('"server:8080"', '"api:8080"')
    compose = sandbox_compose_json({"server": {"networks": {"default": {"aliases": ["api"]}}}})
    fake = fake_host(compose, sandbox_survey(compose=compose, proxy_config=json.loads(text)))
    s, out = session("sandbox", fake)
    with pytest.raises(
        StepFailed,
        match=r"reaches server through its network alias 'api' \(default\): zdd drains "
        r"only upstreams that name the service",
    ):
        deploy(s)
    assert len(fake.calls) == 1 and [(r.name, r.status) for r in s.report.steps] == [("validate", "failed")]


def test_a_one_off_compose_run_container_is_no_replica():
    """A cron job's `docker compose run server ./task` is never counted, pinned or stopped."""
    from fabfile.plan import make_plan, parse_survey

    job = container_json(
        cid("j0b"), "server", image_id("server", 1), "172.18.0.99", labels={"com.docker.compose.oneoff": "True"}
    )
    state = parse_survey(sandbox_survey(sandbox_containers() + [job]), "caddy")
    assert [c.id for c in state.oneoff] == [cid("j0b")[:12]]
    assert cid("j0b")[:12] not in [c.id for c in state.containers]
    (plan,) = make_plan(["server"], state, {"127.0.0.1:15000/zdd-sandbox/server:latest": image_id("server", 2)})
    assert plan.roll and cid("j0b")[:12] not in [c.id for c in plan.old] and plan.target == 1
