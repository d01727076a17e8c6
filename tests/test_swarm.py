"""Engine swarm (fabfile/engines/swarm*.py): the config, the builders, reading `docker service inspect`,
the plan, validation, and whole deploys, rollbacks and status against a fake Swarm manager
whose swarm_tier.sh is simulated (dry runs too)."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import shlex
from types import SimpleNamespace

import pytest

from fabfile import command as command_mod
from fabfile import commands as cmds
from fabfile import commands_swarm as swarm_cmds
from fabfile import history, sequence, tasks
from fabfile.config import ConfigError, HostConfig, load, parse
from fabfile.engines import ComposeEngine, SwarmEngine, engine_for, swarm_drain, swarm_rollback, swarm_state
from fabfile.engines.swarm_nodes import SwarmNode, find_node
from fabfile.progress import Reporter
from fabfile.runner import BadInput, Runner, StepFailed
from fabfile.session import Session
from tests.fakes import (
    SANDBOX_APPS,
    STACK,
    SWARM_KEY,
    SWARM_REF,
    Call,
    FakeExecutor,
    caddy_config,
    deploy,
    fail,
    image_id,
    image_listing,
    journal_text,
    node_json,
    ok,
    reverse_proxy_route,
    run_events,
    service_json,
    stack_services,
    stack_survey_text,
    swarm_applied,
    swarm_compose_json,
    swarm_reports,
    swarm_tier_args,
    swarm_tier_job,
    swarm_tier_options,
)
from tests.test_dry_run import HOSTS_TOML, TOKEN

NAME = "sandbox-swarm"
REGISTRY = load(HOSTS_TOML).host(NAME).registry.server  # the nodes' link address (hosts.toml)


@pytest.fixture(autouse=True)
def token(monkeypatch):
    monkeypatch.setenv("ZDD_SANDBOX_REGISTRY_PASSWORD", TOKEN)


def digests(version: int = 2) -> str:
    """``docker image ls --digests`` (swarm_cmds.image_digests) after a pull of ``version`` of every app."""
    return (
        "".join(f"digest {SWARM_REF.format(s)} {image_id(s, version)}\n" for s in SANDBOX_APPS)
        + f"digest {SWARM_REF.format('base')} {image_id('base')}\n"
        + "digest 127.0.0.1:15000/zdd-sandbox/server:<none> <none>\n"
    )


def finished(call, fake) -> str:
    """finish.sh: prunes when asked (its third argument), releases the lock."""
    prune = shlex.split(call.command)[shlex.split(call.command).index("finish.sh") + 3] == "1"
    return ("Total reclaimed space: 0B\n" if prune else "") + "released the lock\n"


def fake_manager(
    survey: str | list[str] | None = None,
    version: int = 2,
    failures: dict | None = None,
    log: list | None = None,
    watched: dict | None = None,
) -> FakeExecutor:
    fake = FakeExecutor(
        [
            ("survey.sh", survey if survey is not None else stack_survey_text(stack_services())),
            ("lock.sh", ok("locked\n")),
            # pull.sh lists the image IDs (of the sandbox's Compose images here: not read), then the digests
            ("pull.sh", f"logged in to {REGISTRY}\n" + image_listing(version) + digests(version)),
            ("docker image ls --digests", digests(version)),
            ("finish.sh", finished),
        ]
    )
    fake.on_report("swarm_tier.sh", swarm_reports(failures, log, watched))
    return fake


def session(fake: FakeExecutor, dry_run: bool = False, host: HostConfig | None = None) -> tuple[Session, io.StringIO]:
    out = io.StringIO()
    h = host or load(HOSTS_TOML).host(NAME)
    return Session(NAME, h, Runner(fake, NAME, dry_run=dry_run, out=out), Reporter(NAME, out=out)), out


def tier_runs(fake: FakeExecutor) -> list[tuple[str, list[str]]]:
    return [swarm_tier_args(c.command) for c in fake.calls if "swarm_tier.sh" in c.command]


def steps_of(s: Session) -> list[tuple[str, str]]:
    return [(r.name, r.status) for r in s.report.steps]


# --- hosts.toml ----------------------------------------------------------------------------------

SWARM_BASE = """
[defaults]
dir = "~/app"
rollout = [["server"]]
"""


def test_the_sandbox_swarm_host():
    h = load(HOSTS_TOML).host(NAME)
    assert (h.engine, h.stack_name, h.dir) == ("swarm", "remilia-swarm", "~/remilia-swarm")
    sandbox = load(HOSTS_TOML).host("sandbox")
    # the same sshd and user; its swarm port gives sessions the swarm stack's own engine
    assert h.ssh == dataclasses.replace(sandbox.ssh, port=22023) and sandbox.ssh.port == 22022
    # the same registry, as both nodes reach it: on the manager's side of their link; no token
    # at rest on the manager (no keep_login: each change logs in to a temporary config)
    assert h.registry == dataclasses.replace(sandbox.registry, server="10.215.0.1:15000")
    assert not h.registry.keep_login
    assert all(u.startswith("http://127.0.0.1:18090/") for u in h.verify.urls) and len(h.verify.urls) == 8
    assert h.proxy.reload_on_deploy is False
    assert isinstance(engine_for(h), SwarmEngine)


@pytest.mark.parametrize(
    "extra, message",
    [
        ('engine = "swarm"', 'hosts.h.stack_name must name the stack when engine is "swarm"'),
        ('engine = "swarm"\nstack_name = "a b"', "hosts.h.stack_name: 'a b' is not a valid stack name"),
        ('engine = "swarm"\nstack_name = "s"\nenv_file = ".env"', "hosts.h.env_file: docker stack deploy reads no env"),
        (
            'engine = "swarm"\nstack_name = "s"\n[hosts.h.proxy]\nmode = "recreate"',
            'hosts.h.proxy.mode "recreate" is not available with engine swarm',
        ),
        ('engine = "kubernetes"', "engine must be one of native, docker-rollout, swarm"),
    ],
)
def test_swarm_settings_are_checked(extra, message):
    with pytest.raises(ConfigError) as e:
        parse(SWARM_BASE + "\n[hosts.h]\n" + extra + "\n")
    assert message in str(e.value)


def test_a_swarm_host_may_keep_its_login_or_not():
    for keep in ("false", "true"):
        text = (
            'engine = "swarm"\nstack_name = "s"\n[hosts.h.registry]\nserver = "r"\nusername = "u"\n'
            f'password_env = "T"\nkeep_login = {keep}'
        )
        assert parse(SWARM_BASE + "\n[hosts.h]\n" + text + "\n").host("h").registry.keep_login == (keep == "true")


def test_a_swarm_host_needs_no_plugin_checksum():
    h = parse(SWARM_BASE + '\n[hosts.h]\nengine = "swarm"\nstack_name = "s"\n[hosts.h.plugin]\nsha256 = ""\n').host("h")
    assert h.stack_name == "s" and h.plugin.sha256 == ""


# --- builders ------------------------------------------------------------------------------------

H = HostConfig(
    name="t", dir="~/app", compose_files=("a.yaml", "b.yaml"), engine="swarm", stack_name="st", rollout=(("server",),)
)


def program_args(c: cmds.Command | Call, name: str) -> list[str]:
    """The arguments of host program ``name`` in a command (or a call the fake host got)."""
    words = shlex.split(c.command if isinstance(c, Call) else c.render())
    return words[words.index(name) + 1 :]


def test_stack_survey_command():
    c = swarm_cmds.stack_survey(H)
    assert c.argv[:2] == ("sh", "-c") and c.argv[2] == command_mod.program("survey.sh")
    assert c.argv[3:] == (
        *("survey.sh", "--stack", "st", ".zdd/stacks/st.json", "5000"),
        *("caddy", "localhost:2019"),  # the proxy service and its admin address: the config its task here runs
        *("-f", "a.yaml", "-f", "b.yaml"),
    )
    assert c.cwd == "~/app"


def test_swarm_tier_update_command_and_dry_run_lines():
    changes = [
        swarm_cmds.SwarmChange("server", "r/server:1@sha256:abc", "r/server:1", ("order", "failure")),
        swarm_cmds.SwarmChange("property", "r/property:1@sha256:def", "r/property:1"),
    ]
    c = swarm_cmds.swarm_tier(H, "update", changes, 90)
    assert program_args(c, "swarm_tier.sh") == [
        "update",
        "st",
        "90",
        ".zdd/stacks/st.json",
        "",
        "",
        "",
        "2",
        "server",
        "r/server:1@sha256:abc",
        "r/server:1",
        "order,failure",
        "property",
        "r/property:1@sha256:def",
        "r/property:1",
        "",
    ]
    assert c.describe().startswith("cd ~/app && sh -c '<fabfile/remote/swarm_tier.sh>' swarm_tier.sh update st 90")
    logged = swarm_cmds.swarm_tier(H, "update", changes, 90, login=("ghcr.io", "bot"))
    assert program_args(logged, "swarm_tier.sh")[-3:] == ["--login", "ghcr.io", "bot"] and logged.stdin is None
    assert c.dry_run_output == (
        "started server",
        "started property",
        "done server completed",
        "done property completed",
        "ok after 0s",
    )


def test_swarm_tier_watch_and_replaced_options():
    change = swarm_cmds.SwarmChange("identity", "r/identity:1@sha256:abc", "r/identity:1")
    c = swarm_cmds.swarm_tier(H, "update", [change], 90, watch=("server", "property"), replaced=True)
    assert program_args(c, "swarm_tier.sh")[8:] == [*change.args(), "-w", "server", "-w", "property", "-r"]
    assert c.dry_run_output == ("started identity", "done identity replaced", "ok after 0s")
    c = swarm_cmds.swarm_tier(H, "update", [change], 90, watch=("server",))
    assert program_args(c, "swarm_tier.sh")[12:] == ["-w", "server"]
    assert c.dry_run_output[1:] == ("done identity completed", "done server completed", "ok after 0s")


def test_swarm_tier_stack_command_passes_the_compose_files_and_what_it_applies():
    c = swarm_cmds.swarm_tier(H, "stack", [swarm_cmds.SwarmChange("redis")], 60, '{"redis": "h1"}')
    assert program_args(c, "swarm_tier.sh") == [
        "stack",
        "st",
        "60",
        ".zdd/stacks/st.json",
        '{"redis": "h1"}',
        "",
        "",
        "1",
        "redis",
        "",
        "",
        "",
        "-c",
        "a.yaml",
        "-c",
        "b.yaml",
    ]
    assert c.dry_run_output[0] == "started st"
    c = swarm_cmds.swarm_tier(
        H, "rollback", [swarm_cmds.SwarmChange("redis")], 60, key="stack_st", journal=("{}", "{}")
    )
    assert program_args(c, "swarm_tier.sh")[4:8] == ["", "stack_st", "{}\n{}", "1"]


def test_digests_listing_and_the_key_of_a_stack():
    assert swarm_cmds.image_digests().argv == (
        "docker",
        "image",
        "ls",
        "--digests",
        "--format",
        "digest {{.Repository}}:{{.Tag}} {{.Digest}}",
    )
    listing = image_listing(1) + digests(2)  # what pull.sh and the digests listing print together
    table = swarm_state.digest_table(listing)
    assert table[SWARM_REF.format("server")] == image_id("server", 2) and len(table) == len(SANDBOX_APPS) + 1
    state = swarm_state.parse_survey(stack_survey_text([], lock="alice@laptop pid 1 deploy"), STACK)
    assert (state.key, state.lock_holder) == (SWARM_KEY, "alice@laptop pid 1 deploy")


def test_status_and_proxy_task_commands():
    assert shlex.split(swarm_cmds.stack_tasks(H).render())[:10] == [
        "docker",
        "stack",
        "ps",
        "st",
        "--no-trunc",
        "--filter",
        "desired-state=running",
        "--format",
        "task {{.Node}}|{{.Name}}|{{.Image}}|{{.CurrentState}}|{{.Error}}",
        "&&",
    ]
    assert "label=com.docker.stack.namespace=st" in swarm_cmds.stack_tasks(H).render()
    assert swarm_cmds.service_containers(H, "caddy").argv == (
        "docker",
        "ps",
        "--quiet",
        "--filter",
        "label=com.docker.swarm.service.name=st_caddy",
    )


# --- reading the manager -------------------------------------------------------------------------


def test_survey_is_parsed():
    raw = [
        service_json("server", image_id("server", 3), previous=image_id("server", 2), update_state="completed"),
        service_json(
            "node-exporter",
            image_id("base"),
            replicas=None,
            order="stop-first",
            failure="pause",
            rollback_order="stop-first",
        ),
    ]
    state = swarm_state.parse_survey(stack_survey_text(raw, running={"server": "2/3"}, applied={"server": "h"}), STACK)
    assert state.node == "active true" and state.applied == {"server": "h"}
    server = state.services["server"]
    assert server.image == f"{SWARM_REF.format('server')}@{image_id('server', 3)}"
    assert (server.digest, server.stack_ref, server.running) == (
        image_id("server", 3),
        SWARM_REF.format("server"),
        "2/3",
    )
    assert server.can_roll_back and server.previous_image.endswith(image_id("server", 2))
    assert server.update_state == "completed" and server.unset() == ()
    exporter = state.services["node-exporter"]
    assert exporter.replicas is None and exporter.unset() == ("order", "failure", "rollback-order")
    assert not exporter.can_roll_back and exporter.previous_image == ""
    assert set(state.model) == {*SANDBOX_APPS, "mongodb", "redis", "caddy"}


def test_survey_without_record_node_or_services():
    state = swarm_state.parse_survey(stack_survey_text([], applied=None, node=""), STACK)
    assert state.applied is None and state.services == {} and state.node == ""
    assert state.node_error == "Cannot connect to the Docker daemon"
    broken = stack_survey_text([]).replace("=== applied 0\n{", "=== applied 0\n{oops")
    assert swarm_state.parse_survey(broken, STACK).applied is None


def test_spec_hash_ignores_the_image_only():
    a = {"image": "x:1", "environment": {"A": "1"}}
    assert swarm_state.spec_hash(a) == swarm_state.spec_hash({**a, "image": "x:2"})
    assert swarm_state.spec_hash(a) != swarm_state.spec_hash({**a, "environment": {"A": "2"}})


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "node, message",
    [
        ("inactive false", "this host is not in swarm mode (node state inactive)"),
        ("active false", "this node is a Swarm worker"),
        ("", "cannot read this node's swarm state: Cannot connect to the Docker daemon"),
    ],
)
def test_only_a_manager_will_do(node, message):
    fake = fake_manager(stack_survey_text(stack_services(), node=node))
    s, out = session(fake)
    with pytest.raises(StepFailed, match=re.escape(message)):
        deploy(s)
    assert len(fake.calls) == 1 and steps_of(s) == [("validate", "failed")]


@pytest.mark.parametrize(
    "patch, problem",
    [
        ({"server": {"healthcheck": None}}, "server has no healthcheck in the compose files"),
        ({"property": {"healthcheck": {"disable": True}}}, "property has no healthcheck"),
        ({"identity": {"healthcheck": {"test": ["NONE"]}}}, "identity has no healthcheck"),
        (
            {"server": {"ports": [{"mode": "host", "target": 8080, "published": "8080"}]}},
            "server publishes port 8080 in host mode, so it cannot run twice on a node",
        ),
        ({"redis": None}, "service 'redis' is not in the compose files"),
    ],
)
def test_validation_problems_stop_before_anything_changes(patch, problem):
    compose = swarm_compose_json(patch)
    fake = fake_manager(stack_survey_text(stack_services(), compose=compose))
    s, out = session(fake)
    with pytest.raises(StepFailed) as e:
        deploy(s)
    assert problem in str(e.value) and str(e.value).startswith("1 problem(s) on the host: ")
    assert len(fake.calls) == 1


def test_ingress_ports_and_vip_pass_with_a_note():
    vip = {
        "endpoint_mode": "vip",
        "update_config": {"order": "start-first"},
        "rollback_config": {"order": "start-first"},
    }
    compose = swarm_compose_json(
        {"server": {"deploy": vip, "ports": [{"mode": "ingress", "target": 8080, "published": "8080"}]}}
    )
    s, out = session(fake_manager(stack_survey_text(stack_services(), compose=compose)), dry_run=True)
    state = SwarmEngine(s.host).validate(s)
    assert state.services and s.notes == [
        "server use endpoint_mode vip: where the kernel has no IPVS a proxy cannot reach their tasks through the "
        "service's virtual IP; endpoint_mode: dnsrr resolves to the tasks"
    ]


def test_a_missing_token_fails_validation(monkeypatch, tmp_path):
    monkeypatch.delenv("ZDD_SANDBOX_REGISTRY_PASSWORD")
    monkeypatch.chdir(tmp_path)
    s, out = session(fake_manager())
    with pytest.raises(StepFailed, match=r"\$ZDD_SANDBOX_REGISTRY_PASSWORD is not set"):
        deploy(s)


# --- the plan ------------------------------------------------------------------------------------


def state_of(services=None, **kw) -> swarm_state.StackState:
    return swarm_state.parse_survey(stack_survey_text(stack_services() if services is None else services, **kw), STACK)


def table(version: int = 2) -> dict[str, str]:
    return swarm_state.digest_table(digests(version))


def test_a_new_digest_rolls_to_ref_at_digest():
    p = swarm_state.plan_service("server", state_of(), table(2))
    assert p.roll and p.reason == f"new digest {image_id('server', 1)[7:19]} → {image_id('server', 2)[7:19]}"
    assert p.image == f"{SWARM_REF.format('server')}@{image_id('server', 2)}" and p.ref == SWARM_REF.format("server")
    assert p.change() == swarm_cmds.SwarmChange("server", p.image, p.ref, ())


def test_same_digest_skips_and_force_rolls():
    p = swarm_state.plan_service("server", state_of(), table(1))
    assert not p.roll and p.line() == f"server: skip, unchanged (digest {image_id('server', 1)[7:19]})"
    forced = swarm_state.plan_service("server", state_of(), table(1), force=True)
    assert forced.roll and forced.reason == "forced" and forced.image.endswith(image_id("server", 1))


def test_unknown_digest_skips_and_missing_service_is_left_to_the_stack_deploy():
    assert not swarm_state.plan_service("server", state_of(), {}).roll
    missing = swarm_state.plan_service("server", state_of(stack_services(only=("property",))), table(2))
    assert not missing.roll and missing.reason == "not deployed: docker stack deploy (infra-up) creates it"


def test_another_image_reference_rolls():
    compose = swarm_compose_json({"server": {"image": "127.0.0.1:15000/zdd-sandbox/server:v9"}})
    listing = {"127.0.0.1:15000/zdd-sandbox/server:v9": image_id("server", 1)}
    p = swarm_state.plan_service("server", state_of(compose=compose), listing)
    assert p.roll and p.reason.startswith("the compose file names 127.0.0.1:15000/zdd-sandbox/server:v9 (was ")
    assert p.ref == "127.0.0.1:15000/zdd-sandbox/server:v9"


def test_a_digest_pinned_reference_names_its_own_digest():
    pinned = f"127.0.0.1:15000/zdd-sandbox/server@{image_id('server', 5)}"
    p = swarm_state.plan_service("server", state_of(compose=swarm_compose_json({"server": {"image": pinned}})), {})
    assert p.roll and p.image == pinned


def test_missing_update_settings_are_set_for_the_update_and_said():
    services = stack_services()
    services[0] = service_json("server", image_id("server", 1), order="stop-first", failure="pause")
    s, out = session(fake_manager(stack_survey_text(services)))
    deploy(s)
    assert shlex.split(s.r.history[3])[-12:-3] == [
        "server",
        f"{SWARM_REF.format('server')}@{image_id('server', 2)}",
        SWARM_REF.format("server"),
        "order,failure",
        "property",
        f"{SWARM_REF.format('property')}@{image_id('property', 2)}",
        SWARM_REF.format("property"),
        "",
        "-r",  # a later tier comes: done once Swarm has replaced the tasks
    ]
    assert (
        "server: no deploy.update_config.order: start-first in the running spec: zdd sets it for its update "
        "(a later docker stack deploy resets it: put it in the compose file)" in s.notes
    )
    assert any(n.startswith("server: no deploy.update_config.failure_action: rollback") for n in s.notes)


def test_the_updates_log_in_to_a_temporary_config_with_the_token_on_stdin():
    """No token at rest: each change that passes --with-registry-auth gets --login SERVER USER
    and the token as the first line on its stdin; never in a command, the history or the output."""
    fake = fake_manager()
    s, out = session(fake)
    deploy(s)
    tiers = [c for c in fake.tiers if "swarm_tier.sh" in c.command]
    assert len(tiers) == 3 and all(c.sent == [f"login {TOKEN}"] for c in tiers)
    assert all(shlex.split(c.command)[-3:] == ["--login", REGISTRY, "zdd"] for c in tiers)
    # an overlapping tier: its -w and -r come before --login (swarm_tier.sh's order)
    assert shlex.split(tiers[1].command)[-8:] == ["-w", "server", "-w", "property", "-r", "--login", REGISTRY, "zdd"]
    assert all(TOKEN not in c.command for c in fake.calls) and all(TOKEN not in h for h in s.r.history)
    assert TOKEN not in out.getvalue()


def test_keep_login_uses_the_login_in_docker_config_and_a_rollback_logs_in_nowhere():
    h = load(HOSTS_TOML).host(NAME)
    fake = fake_manager()
    s, out = session(fake, host=dataclasses.replace(h, registry=dataclasses.replace(h.registry, keep_login=True)))
    deploy(s)
    tiers = [c for c in fake.tiers if "swarm_tier.sh" in c.command]
    assert tiers and all(not c.sent and "--login" not in c.command for c in tiers)
    fake = fake_manager(stack_survey_text(stack_services(version=2, previous=1)))
    s, out = session(fake)
    sequence.rollback(s, SwarmEngine(s.host))
    tiers = [c for c in fake.tiers if "swarm_tier.sh" in c.command]
    assert tiers and all(not c.sent and "--login" not in c.command for c in tiers)


def test_tasks_not_all_running_are_said():
    p = swarm_state.plan_service("server", state_of(running={"server": "0/1"}), table(1))
    assert not p.roll and p.reason.endswith("; 0/1 tasks running")


# --- a deploy ------------------------------------------------------------------------------------


def test_deploy_updates_each_tier_together_in_order():
    log: list = []
    fake = fake_manager(log=log)
    s, out = session(fake)
    deploy(s)
    assert log == [("update", ["server", "property"]), ("update", ["identity"]), ("update", ["profile-server"])]
    assert steps_of(s) == [
        ("validate", "ok"),
        ("pull", "ok"),
        ("infra-up", "skipped"),
        ("plan", "ok"),
        ("rollout server, property", "ok"),
        ("rollout identity", "ok"),
        ("rollout profile-server", "ok"),
        ("swarm verdict", "ok"),
        ("reload-caddy", "skipped"),
        ("finish", "ok"),
    ]
    # each tier is done once Swarm has replaced its tasks; later tiers watch it; the last one hands
    # Swarm's monitor window (its own services' and the earlier ones') to a job on the host
    assert [swarm_tier_options(c.command) for c in fake.calls if "swarm_tier.sh" in c.command] == [
        ([], True),
        (["server", "property"], True),
        (["server", "property", "identity"], True),
    ]
    tiers = [c.command for c in fake.calls if "swarm_tier.sh" in c.command]
    jobs = [swarm_tier_job(c) for c in tiers]
    assert (
        jobs[:2] == ["", ""]
        and re.fullmatch(r"\d{8}-\d{6}-\d+", jobs[2])
        and f'"run": "{jobs[2]}"' in (fake.calls[1].stdin or "")
    )
    assert [r.detail for r in s.report.steps[4:8]] == [
        "server replaced, property replaced",
        "identity replaced; earlier: server monitored, property monitored",
        "profile-server replaced; earlier: server monitored, property monitored, identity monitored",
        "left to the host: Swarm monitors profile-server, server, property, identity until its monitor window "
        "ends; job 4242 holds the deploy lock until then and journals the verdict (fab -H sandbox-swarm status)",
    ]
    # the job holds the lock now: finish is given no holder, so it leaves the lock
    finish = shlex.split(fake.calls[-1].command)
    assert finish[finish.index("finish.sh") + 1 : finish.index("finish.sh") + 3] == [SWARM_KEY, ""]


def test_deploy_wait_waits_for_swarms_verdict():
    log: list = []
    fake = fake_manager(log=log)
    s, out = session(fake)
    deploy(s, wait=True)
    assert log == [("update", ["server", "property"]), ("update", ["identity"]), ("update", ["profile-server"])]
    assert [r[0] for r in steps_of(s)][7:] == ["reload-caddy", "finish"]
    # the last tier waits until Swarm has completed every update, its own and the earlier tiers'
    assert [swarm_tier_options(c.command) for c in fake.calls if "swarm_tier.sh" in c.command] == [
        ([], True),
        (["server", "property"], True),
        (["server", "property", "identity"], False),
    ]
    assert not any(swarm_tier_job(c.command) for c in fake.calls if "swarm_tier.sh" in c.command)
    assert [r.detail for r in s.report.steps[4:7]] == [
        "server replaced, property replaced",
        "identity replaced; earlier: server monitored, property monitored",
        "profile-server completed; earlier: server completed, property completed, identity completed",
    ]
    assert s.report.steps[7].detail.startswith("not needed: Swarm takes a task out of service discovery")
    assert (
        s.report.steps[1].detail == f"logged in to {REGISTRY}; new digest for server, property, identity, "
        "profile-server"
    )
    assert s.report.steps[8].detail == "Total reclaimed space: 0B; released the lock"
    # survey, lock, pull, three tiers, finish (journal, prune, unlock); nothing at the proxy
    assert s.r.remote_commands == 7 and s.report.proxy_loads == 0
    assert "lock.sh acquire stack_remilia-swarm" in fake.calls[1].command
    finish = shlex.split(fake.calls[-1].command)
    assert finish[finish.index("finish.sh") + 1 :] == [SWARM_KEY, finish[finish.index("finish.sh") + 2], "1", "3", ""]
    assert not fake.seen("caddy reload") and not fake.seen("restore.sh") and not fake.seen("tier.sh compose")
    pulled = shlex.split(fake.calls[fake.index("pull.sh")].command)
    assert pulled[pulled.index("pull.sh") + 1 : pulled.index("--")] == [
        "0",
        REGISTRY,
        "zdd",
        "900",
        "server",
        "property",
        "identity",
        "profile-server",
        "mongodb",
        "redis",
        "caddy",
    ]  # the pull logs in to a temporary Docker config
    assert fake.calls[fake.index("pull.sh")].command.endswith(
        "&& docker image ls --digests --format 'digest {{.Repository}}:{{.Tag}} {{.Digest}}'"
    )


def test_the_plan_goes_to_the_journal_with_the_first_change():
    fake = fake_manager()
    s, out = session(fake)
    deploy(s)
    first, second = [program_args(fake.calls[i], "swarm_tier.sh") for i in (3, 4)]
    assert first[5] == SWARM_KEY and second[6] == ""
    plan = json.loads(first[6])
    run = plan["run"]
    assert plan["event"] == "plan"
    assert plan["services"]["server"] == {
        "roll": True,
        "reason": f"new digest {image_id('server', 1)[7:19]} → {image_id('server', 2)[7:19]}",
        "ref": SWARM_REF.format("server"),
        "before": [image_id("server", 1)],
        "after": image_id("server", 2),
        "old": [],
    }
    start = json.loads(fake.calls[1].stdin.strip())
    assert (start["run"], start["event"], start["kind"]) == (run, "start", "deploy")
    end = json.loads(fake.calls[-1].stdin.strip())
    assert (end["run"], end["event"], end["result"]) == (run, "end", "ok")
    runs = history.journal_lines(SwarmEngine(s.host).survey(s), [])
    assert runs == ["lock: free"]


def test_nothing_changed_touches_nothing():
    fake = fake_manager(version=1)
    s, out = session(fake)
    deploy(s)
    assert tier_runs(fake) == []
    assert out.getvalue().count("skip, unchanged") == 4
    assert steps_of(s)[-1] == ("finish", "ok") and s.report.steps[-1].detail == "released the lock"
    assert s.r.remote_commands == 4  # survey, lock, pull, finish (no prune: nothing rolled)
    finish = fake.calls[-1]
    assert "finish.sh" in finish.command and json.loads(finish.stdin.splitlines()[0])["event"] == "plan"


def test_a_failed_update_names_the_service_and_stops_the_tiers():
    fake = fake_manager(failures={"property": "rollback_started"})
    s, out = session(fake)
    with pytest.raises(StepFailed) as e:
        deploy(s)
    assert (
        str(e.value) == "property: rollback_started (update rolled back due to failure); Swarm returns it to "
        "its previous spec, its old tasks serve meanwhile"
    )
    assert "property: property.1 x@sha256:bad Running 2 seconds ago task: non-zero exit (1)" in e.value.detail
    assert tier_runs(fake) == [("update", ["server", "property"])]
    assert steps_of(s)[-2:] == [("rollout server, property", "failed"), ("finish", "ok")]
    end = json.loads(fake.calls[-1].stdin.strip())
    assert end["result"] == "failed" and end["error"].startswith("property: rollback_started")
    assert " 0 3 ''" in fake.calls[-1].command  # no prune after a failure


def test_an_earlier_tier_rolled_back_while_a_later_one_rolls_fails_the_run_naming_it():
    """Swarm rolls server (tier 1) back during its monitor window, while identity (tier 2) rolls:
    the run fails naming server, and profile-server (tier 3) never starts."""
    fake = fake_manager(watched={"server": "rollback_started"})
    s, out = session(fake)
    with pytest.raises(StepFailed) as e:
        deploy(s)
    assert str(e.value).startswith("server: rollback_started (update rolled back due to failure); Swarm returns it")
    assert tier_runs(fake) == [("update", ["server", "property"]), ("update", ["identity"])]
    assert steps_of(s)[-3:] == [("rollout server, property", "ok"), ("rollout identity", "failed"), ("finish", "ok")]
    end = json.loads(fake.calls[-1].stdin.strip())
    assert end["result"] == "failed" and end["error"].startswith("server: rollback_started")


def test_a_single_tier_and_a_rollback_wait_for_swarms_verdict():
    fake = fake_manager()
    s, out = session(fake)
    sequence.rollout_service(s, SwarmEngine(s.host), "identity")
    assert [swarm_tier_options(c.command) for c in fake.calls if "swarm_tier.sh" in c.command] == [([], False)]
    assert [r.detail for r in s.report.steps if r.name == "rollout identity"] == ["identity completed"]
    fake = fake_manager(stack_survey_text(stack_services(version=2, previous=1)))
    s, out = session(fake)
    sequence.rollback(s, SwarmEngine(s.host))
    runs = [c.command for c in fake.calls if "swarm_tier.sh" in c.command]
    assert len(runs) == 3 and all(swarm_tier_options(c) == ([], False) for c in runs)


def test_a_paused_update_says_what_to_do():
    s, out = session(fake_manager(failures={"server": "paused"}))
    with pytest.raises(
        StepFailed,
        match=r"^server: paused .*; Swarm paused the update: fix the image and deploy "
        r"again, or fab rollback$",
    ):
        deploy(s)


def test_a_host_that_stops_answering_fails_the_tier():
    fake = fake_manager()
    fake.reporters.clear()
    fake.on_report("swarm_tier.sh", lambda command: ["started server", "started property"])
    s, out = session(fake)
    with pytest.raises(StepFailed, match=r"^server, property: the host stopped answering"):
        deploy(s)


def test_the_stack_is_deployed_first_when_the_compose_files_changed():
    compose = swarm_compose_json({"property": {"environment": {"SERVICE": "property", "NEW": "1"}}})
    first = stack_survey_text(stack_services(), compose=compose, applied=swarm_applied())
    after = stack_survey_text(stack_services(), compose=compose)
    log: list = []
    fake = fake_manager([first, after], log=log)
    s, out = session(fake)
    deploy(s)
    assert log[0] == ("stack", ["property"])
    stack = program_args(fake.calls[fake.index("swarm_tier.sh stack")], "swarm_tier.sh")
    assert json.loads(stack[4]) == swarm_applied(compose)  # what the host records once it is applied
    assert stack[-2:] == ["-c", "docker-compose.yaml"]
    assert s.report.steps[2].detail == "docker stack deploy: compose changed: property"
    assert len(fake.matching("survey.sh")) == 2  # read again after the stack deploy
    assert log[1:] == [("update", ["server", "property"]), ("update", ["identity"]), ("update", ["profile-server"])]


def test_a_stack_deploy_first_makes_the_services_it_changes_roll_back_start_first():
    """Swarm's rollback of a failed stack deploy returns to the spec it started from, with that
    spec's rollback settings: the services that run stop-first ones get rollback-order."""
    compose = swarm_compose_json({"property": {"environment": {"SERVICE": "property", "NEW": "1"}}})
    services = stack_services()
    services[1] = service_json("property", image_id("property", 1), rollback_order="stop-first")
    fake = fake_manager([stack_survey_text(services, compose=compose, applied=swarm_applied())])
    s, out = session(fake)
    SwarmEngine(s.host).infra_up(s)
    stack = program_args(fake.calls[fake.index("swarm_tier.sh stack")], "swarm_tier.sh")
    assert stack[7:12] == ["1", "property", "", "", "rollback-order"]
    assert swarm_state.stack_change("server", state_of()).sets == ()


def test_no_record_applies_the_stack_once_and_missing_services_are_created():
    services = stack_services(only=("server", "property", "identity", "profile-server", "caddy"))
    log: list = []
    fake = fake_manager([stack_survey_text(services, applied=None), stack_survey_text(stack_services())], log=log)
    s, out = session(fake)
    deploy(s)
    assert log[0][0] == "stack" and set(log[0][1]) == {*SANDBOX_APPS, "mongodb", "redis", "caddy"}
    assert s.report.steps[2].detail == (
        "docker stack deploy: applied once (no record of what zdd applied before): server, property, identity, "
        "profile-server, caddy; created: mongodb, redis"
    )


def test_infra_with_a_new_digest_is_updated_in_infra_up():
    services = [
        service_json("redis", image_id("base", 0)) if s["Spec"]["Name"].endswith("_redis") else s
        for s in stack_services()
    ]
    log: list = []
    fake = fake_manager(stack_survey_text(services), version=1, log=log)
    s, out = session(fake)
    deploy(s)
    assert log == [("update", ["redis"])]
    assert s.report.steps[2].detail == "new image for redis" and " 0 3 ''" in fake.calls[-1].command  # no prune


def test_reload_on_deploy_reloads_the_proxy_tasks_on_this_node(monkeypatch):
    import dataclasses

    h = load(HOSTS_TOML).host(NAME)
    h = dataclasses.replace(h, proxy=dataclasses.replace(h.proxy, reload_on_deploy=True))
    fake = fake_manager()
    fake.on("docker ps --quiet", "c0ffee\n").on("caddy validate", "Valid configuration\n").on("caddy reload", "")
    s, out = session(fake, host=h)
    deploy(s)
    assert fake.seen("docker ps --quiet --filter label=com.docker.swarm.service.name=remilia-swarm_caddy")
    assert fake.seen("docker exec c0ffee caddy reload --config /etc/caddy/Caddyfile --adapter caddyfile --force")
    assert ("reload-caddy", "ok") in steps_of(s) and s.report.proxy_loads == 1


def test_dry_run_sends_only_probes_and_prints_the_plan():
    fake = fake_manager()
    s, out = session(fake, dry_run=True)
    deploy(s)
    assert [c.subject.split(" ")[0] for c in fake.calls] == ["cd", "docker"]  # survey, images and digests listing
    assert fake.seen("survey.sh") and fake.seen("docker image ls --digests")
    text = out.getvalue()
    order = [
        "lock.sh acquire stack_remilia-swarm",
        f"pull.sh 0 {REGISTRY} zdd",
        "server: roll, new digest",
        *["swarm_tier.sh update remilia-swarm 90"] * 3,
        f"finish.sh {SWARM_KEY}",
    ]
    at = -1
    for needle in order:
        at = text.index(needle, at + 1)
    assert "$ZDD_SANDBOX_REGISTRY_PASSWORD (secret, on stdin)" in text
    # each update would get the token on its stdin: said by name, never shown
    assert text.count("would send: $ZDD_SANDBOX_REGISTRY_PASSWORD (secret, on stdin)") == 3
    assert TOKEN not in text and all(TOKEN not in h for h in s.r.history)


def test_dry_run_of_a_new_stack_shows_the_stack_deploy():
    fake = fake_manager(stack_survey_text([], applied=None))
    s, out = session(fake, dry_run=True)
    deploy(s)
    text = out.getvalue()
    assert "swarm_tier.sh stack remilia-swarm" in text and "-c docker-compose.yaml" in text
    assert text.count("skip, not deployed: docker stack deploy (infra-up) creates it") == 4


def test_rollout_service_updates_one_service_forced():
    log: list = []
    fake = fake_manager(log=log)
    s, out = session(fake)
    sequence.rollout_service(s, SwarmEngine(s.host), "identity")
    assert log == [("update", ["identity"])]
    assert not fake.seen("docker login")  # a lone rollout pulls nothing: the local tag's digest
    assert fake.calls[-1].command.count("finish.sh") == 1 and steps_of(s)[-1] == ("finish", "ok")
    with pytest.raises(BadInput, match="service 'nope' is not in the compose files"):
        sequence.rollout_service(s, SwarmEngine(s.host), "nope")


# --- rollback and status -------------------------------------------------------------------------


def test_rollback_goes_back_tier_by_tier_in_reverse_order():
    services = stack_services(version=2, previous=1)
    services[1] = service_json(
        "property", image_id("property", 2), previous=image_id("property", 1), update_state="rollback_completed"
    )
    services[2] = service_json("identity", image_id("identity", 1))  # never updated
    log: list = []
    fake = fake_manager(stack_survey_text(services), log=log)
    s, out = session(fake)
    sequence.rollback(s, SwarmEngine(s.host))
    assert log == [("rollback", ["profile-server"]), ("rollback", ["server"])]
    text = out.getvalue()
    assert f"server: roll back, {image_id('server', 2)[7:19]} → {image_id('server', 1)[7:19]}" in text
    assert "property: skip, its last update was rolled back already (rollback_completed)" in text
    assert "identity: skip, no previous spec (never updated)" in text
    assert steps_of(s) == [
        ("validate", "ok"),
        ("plan", "ok"),
        ("rollback profile-server", "ok"),
        ("rollback server", "ok"),
        ("finish", "ok"),
    ]
    assert s.report.steps[3].detail == "server rollback_completed"
    plan = json.loads(program_args(fake.calls[2], "swarm_tier.sh")[6])
    assert plan["services"]["server"]["after"] == image_id("server", 1) and not plan["services"]["identity"]["roll"]
    assert " 0 3 ''" in fake.calls[-1].command  # a rollback prunes nothing: the images it left are the previous
    with pytest.raises(BadInput, match="rollback --to: engine swarm returns each service to Swarm's previous spec"):
        sequence.rollback(s, SwarmEngine(s.host), to="20261128-000000-1")


def test_rollback_skips_a_previous_spec_that_runs_the_same_tasks():
    same = service_json("server", image_id("server", 1), previous=image_id("server", 1))
    plans = swarm_rollback.rollback_plan(state_of([same]), ["server"])
    assert [p.line() for p in plans] == ["server: skip, its previous spec runs the same tasks"]


def stop_first_previous(name: str, **changes) -> dict:
    """A service at version 2 whose previous spec (version 1) rolls back stop-first, as a docker
    stack deploy without rollback_config leaves it; ``changes``: its task template differs so too."""
    raw = service_json(name, image_id(name, 2), previous=image_id(name, 1))
    raw["PreviousSpec"]["RollbackConfig"]["Order"] = "stop-first"
    raw["PreviousSpec"]["TaskTemplate"]["ContainerSpec"].update(changes)
    raw["Spec"]["TaskTemplate"]["ForceUpdate"] = 3  # --force bumps it: not a difference of the tasks
    return raw


def test_a_previous_spec_that_rolls_back_stop_first_is_rolled_back_as_a_start_first_update():
    plans = swarm_rollback.rollback_plan(state_of([stop_first_previous("server")]), ["server"])
    assert plans[0].line() == (
        f"server: roll back, {image_id('server', 2)[7:19]} → {image_id('server', 1)[7:19]} "
        "(as a start-first update: its previous spec rolls back stop-first)"
    )
    change = plans[0].change()
    assert change == swarm_cmds.SwarmChange(
        "server", f"{SWARM_REF.format('server')}@{image_id('server', 1)}", SWARM_REF.format("server"), ("as-update",)
    )
    # what an update cannot restore is not half rolled back
    other = swarm_rollback.rollback_plan(state_of([stop_first_previous("server", Env=["A=1"])]), ["server"])
    assert other[0].line() == (
        "server: skip, its previous spec rolls back stop-first (Swarm would stop its tasks first) and differs in "
        "more than the image: deploy the previous compose files instead"
    )
    # once rolled back so, the previous spec is the one it left: not rolled "back" to it again
    again = service_json("server", image_id("server", 1), previous=image_id("server", 2))
    again["Spec"]["Labels"]["zdd.rolled-back-from"] = again["PreviousSpec"]["TaskTemplate"]["ContainerSpec"]["Image"]
    back = swarm_rollback.rollback_plan(state_of([again]), ["server"])
    assert back[0].line() == "server: skip, its last update was rolled back already (by zdd, as an update)"


def test_after_the_forced_update_of_a_doubled_slot_the_rollback_returns_to_the_image_before_the_deploy():
    """swarm_tier.sh's forced update (a slot left running two tasks) makes Swarm's PreviousSpec
    the deployed spec itself; the image before it is in its label zdd.forced-from."""
    forced = service_json("server", image_id("server", 2), previous=image_id("server", 2))
    forced["Spec"]["TaskTemplate"]["ForceUpdate"] = 4
    before = f"{SWARM_REF.format('server')}@{image_id('server', 1)}"
    forced["Spec"]["Labels"]["zdd.forced-from"] = before
    plans = swarm_rollback.rollback_plan(state_of([forced]), ["server"])
    assert plans[0].line() == (
        f"server: roll back, {image_id('server', 2)[7:19]} → {image_id('server', 1)[7:19]} "
        "(as a start-first update: its last update was a forced one)"
    )
    assert plans[0].change() == swarm_cmds.SwarmChange("server", before, "", ("as-update",))
    # a later update of the image: the label left in the spec no longer speaks for the spec before
    later = service_json("server", image_id("server", 3), previous=image_id("server", 2))
    later["Spec"]["Labels"]["zdd.forced-from"] = before
    assert swarm_rollback.rollback_plan(state_of([later]), ["server"])[0].image.endswith(image_id("server", 2))


def test_a_rollback_made_as_an_update_logs_in_and_waits_for_completed():
    services = stack_services(version=2, previous=1)
    services[0] = stop_first_previous("server")
    log: list = []
    fake = fake_manager(stack_survey_text(services), log=log)
    s, out = session(fake)
    sequence.rollback(s, SwarmEngine(s.host))
    server = [c for c in fake.tiers if swarm_tier_args(c.command) == ("rollback", ["server", "property"])][0]
    assert shlex.split(server.command)[-11:] == [
        "server",
        f"{SWARM_REF.format('server')}@{image_id('server', 1)}",
        SWARM_REF.format("server"),
        "as-update",
        "property",
        f"{SWARM_REF.format('property')}@{image_id('property', 1)}",
        "",
        "",
        "--login",
        REGISTRY,
        "zdd",
    ]
    assert server.sent == [f"login {TOKEN}"]
    plain = [c for c in fake.tiers if swarm_tier_args(c.command) == ("rollback", ["profile-server"])][0]
    assert "--login" not in plain.command and not plain.sent
    dry = swarm_cmds.swarm_tier(
        H, "rollback", [swarm_rollback.rollback_plan(state_of(services), ["server"])[0].change()], 9
    )
    assert dry.dry_run_output[1] == "done server completed"


def test_every_task_runs_the_engine_that_hosts_toml_names(monkeypatch):
    """Tasks never ask which engine runs: each gets the host's engine from engine_for and
    calls the sequence or the engine's own step with it."""
    called = []
    monkeypatch.setattr(
        sequence,
        "rollback",
        lambda s, engine, to, wait, verdict, hooks=True: called.append(("rollback", engine.name, to)),
    )
    monkeypatch.setattr(sequence, "recover", lambda s, engine: called.append(("recover", engine.name)))

    def run_steps(c, title, body, *args, **kw):
        h = load(HOSTS_TOML).host(c)
        engine = engine_for(h)
        monkeypatch.setattr(engine, "status", lambda s: called.append(("status", engine.name)) or [])
        monkeypatch.setattr(
            engine,
            "survey",
            lambda s: called.append(("survey", engine.name)) or SimpleNamespace(key="k", lock_holder=""),
        )
        s = SimpleNamespace(host=h, name=c, r=SimpleNamespace(out=io.StringIO()))
        body(s, engine, lambda: None)

    monkeypatch.setattr(tasks, "run_steps", run_steps)
    monkeypatch.setattr(tasks, "read_runs", lambda s, state: [])
    monkeypatch.setattr(tasks, "unlock_step", lambda s, state: called.append(("unlock", state.key)))
    for host in (NAME, "sandbox"):
        tasks.rollback.body(host, to="r1")
        tasks.status.body(host)
        tasks.history_.body(host)
        tasks.recover.body(host)
        tasks.unlock.body(host)
    assert called == [
        ("rollback", "swarm", "r1"),
        ("status", "swarm"),
        ("survey", "swarm"),
        ("recover", "swarm"),
        ("survey", "swarm"),
        ("unlock", "k"),
        ("rollback", "native", "r1"),
        ("status", "native"),
        ("survey", "native"),
        ("recover", "native"),
        ("survey", "native"),
        ("unlock", "k"),
    ]


def status(s: Session) -> None:
    """``fab status``'s output for a session."""
    for line in SwarmEngine(s.host).status(s):
        print(f"[{s.name}]   {line}", file=s.r.out)


def test_status_shows_services_tasks_the_lock_and_the_last_run():
    fake = fake_manager(stack_survey_text(stack_services(), running={"server": "0/1"}))
    server = f"{SWARM_REF.format('server')}@{image_id('server', 1)}"
    fake.on(
        "docker stack ps",
        f"task vm1|remilia-swarm_server.1|{server}|Running 3 minutes ago|\n"
        f"task vm2|remilia-swarm_identity.1|{SWARM_REF.format('identity')}@{image_id('identity', 1)}"
        "|Running 1 hour ago|\n"
        f"task vm1|remilia-swarm_caddy.1|{SWARM_REF.format('base')}@{image_id('base')}|Running 2 hours ago|\n"
        f"task |remilia-swarm_server.2|{server}|Pending 9 seconds ago|no suitable node (max replicas per node limit "
        "exceed)\nNAMES  STATUS\nremilia-swarm_server.1.x  Up 3 minutes (healthy)\n",
    )
    fake.on(f"tail -n 5000 .zdd/journal/{SWARM_KEY}.jsonl", journal_text(run_events("20261128-010000-7")))
    s, out = session(fake)
    status(s)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["[sandbox-swarm]", "service", "tasks", "digest", "last", "update", "image"]
    assert lines[1].split() == [
        "[sandbox-swarm]",
        "caddy",
        "1/1",
        image_id("base")[7:19],
        "-",
        SWARM_REF.format("base"),
    ]
    assert any(ln.split()[1:3] == ["server", "0/1"] for ln in lines)
    server = f"server:latest@{image_id('server', 1)[7:19]}"
    at = lines.index("[sandbox-swarm]   node (no node): 1 task(s)")
    assert [ln.removeprefix("[sandbox-swarm]   ") for ln in lines[at:-3]] == [
        "node (no node): 1 task(s)",
        f"  remilia-swarm_server.2  {server}  Pending 9 seconds ago (no suitable node (max replicas per node limit "
        "exceed))",
        "node vm1: 2 task(s)",
        f"  remilia-swarm_caddy.1   base:latest@{image_id('base')[7:19]}    Running 2 hours ago",
        f"  remilia-swarm_server.1  {server}  Running 3 minutes ago",
        "node vm2: 1 task(s)",
        f"  remilia-swarm_identity.1  identity:latest@{image_id('identity', 1)[7:19]}  Running 1 hour ago",
        "",
        "NAMES  STATUS",
        "remilia-swarm_server.1.x  Up 3 minutes (healthy)",
    ]
    assert lines[-3:] == [
        "[sandbox-swarm]   ",
        "[sandbox-swarm]   lock: free",
        "[sandbox-swarm]   last run: 20261128-010000-7 deploy by alice@laptop: ok",
    ]


def test_a_survey_that_cannot_run_fails_in_one_line():
    s, out = session(fake_manager(fail(127, stderr="sh: docker: not found")))
    with pytest.raises(
        StepFailed,
        match=r"^cannot read stack remilia-swarm in ~/remilia-swarm: sh: docker: not "
        r"found$",
    ):
        SwarmEngine(s.host).validate(s)


# --- what a stack deploy or Swarm itself could take down ------------------------------------------------


def model_app(order: str | None) -> dict:
    deploy = {"endpoint_mode": "dnsrr", **({"update_config": {"order": order}} if order else {})}
    return {"image": "x/server:latest", "healthcheck": {"test": ["CMD", "true"]}, "deploy": deploy}


@pytest.mark.parametrize("order", [None, "stop-first"])
def test_a_stack_deploy_that_would_update_an_app_stop_first_is_refused(order):
    h = load(HOSTS_TOML).host(NAME)
    state = swarm_state.StackState("active true", {"server": model_app(order)}, applied={})
    problems, _ = swarm_state.check_stack(state, h, ["server"])
    assert any(
        "would update it so, stopping its tasks first (downtime): set update_config.order: start-first" in p
        for p in problems
    ), problems
    assert (
        swarm_state.check_stack(
            swarm_state.StackState("active true", {"server": model_app("start-first")}, applied={}), h, ["server"]
        )[0]
        == []
    )


def test_compose_settings_that_would_stop_tasks_first_outside_zdd_are_noted():
    """Not a failure (zdd's own updates and rollbacks start first), but said: a plain stack
    deploy or Swarm's rollback would stop tasks first."""
    unset = {"endpoint_mode": "dnsrr", "update_config": {"order": "start-first"}}
    stop = {
        "endpoint_mode": "dnsrr",
        "update_config": {"order": "stop-first"},
        "rollback_config": {"order": "stop-first"},
    }
    compose = swarm_compose_json({"server": {"deploy": unset}, "identity": {"deploy": stop}})
    s, out = session(fake_manager(stack_survey_text(stack_services(), compose=compose, applied=None)))
    with pytest.raises(BadInput, match="identity: the compose files' deploy.update_config.order is stop-first"):
        SwarmEngine(s.host).validate(s)  # a stack deploy would update it so: refused, as before
    s, out = session(fake_manager(stack_survey_text(stack_services(), compose=compose)))
    SwarmEngine(s.host).validate(s)
    assert s.notes == [
        "identity: the compose files' deploy.update_config.order is not start-first (Swarm's default, stop-first, "
        "when unset): zdd's own updates start the new tasks first, but a plain docker stack deploy would stop their "
        "tasks first (downtime): set update_config.order: start-first",
        "server, identity: the compose files' deploy.rollback_config.order is not start-first (Swarm's default, "
        "stop-first, when unset): zdd's own updates and rollbacks start the new tasks first, but a plain docker "
        "service rollback, or Swarm's own rollback of a failed docker stack deploy, would stop their tasks first "
        "(downtime): set rollback_config.order: start-first",
    ]


@pytest.mark.parametrize(
    "holder, refused",
    [
        ("", True),
        # the last deploy's monitor job holds the lock while Swarm says `updating`: the deploy
        # waits for that lock (lock.sh) instead of refusing
        ("swarm monitor job 77 on m1 since 2026-11-30 07:00:00 UTC: waits for Swarm's verdict on server", False),
        # so does a run of zdd's that is changing it (a deploy's tier, a drain-node): the run waits
        ("al@x pid 12.ab deploy since 2026-11-30 07:00:00 UTC (run 20261130-070000-12)", False),
    ],
)
def test_a_service_swarm_is_still_updating_is_refused_unless_a_run_of_zdds_holds_the_lock(holder, refused):
    h = load(HOSTS_TOML).host(NAME)
    spec = model_app("start-first")
    state = swarm_state.StackState(
        "active true",
        {"server": spec},
        {"server": swarm_state.StackService("server", "x@sha256:1", update_state="updating")},
        applied={"server": swarm_state.spec_hash(spec)},
        lock_holder=holder,
    )
    problems, _ = swarm_state.check_stack(state, h, ["server"])
    assert problems == (
        [
            "server: Swarm is still changing it (updating): wait until "
            "`docker service ps remilia-swarm_server` has settled"
        ]
        if refused
        else []
    )


def test_status_says_swarms_verdict_on_the_last_run():
    from fabfile import journal
    from fabfile.history import journal_lines

    run = "20261130-070000-1"
    lines = [
        {"run": run, "t": 1, "event": "start", "kind": "deploy", "who": "al@x"},
        {"run": run, "t": 9, "event": "end", "result": "ok", "seconds": 8.0, "steps": []},
        {
            "run": run,
            "t": 14,
            "event": "settled",
            "result": "failed",
            "services": "server property",
            "error": "server: rollback_completed (update rolled back due to failure)",
        },
    ]
    runs = journal.parse("\n".join(json.dumps(x) for x in lines))
    state = swarm_state.StackState("active true", {}, {})
    assert journal_lines(state, runs)[1:] == [
        f"last run: {run} deploy by al@x: ok",
        "  Swarm's verdict on server property: failed: server: rollback_completed (update rolled back due to failure)",
    ]


def test_a_task_no_node_can_take_says_where_to_look():
    from fabfile.engines.swarm_tier import consequence

    failure = "timeout after 90s: server: updating; server: a task waits for a node: no suitable node (max replicas)"
    assert consequence(failure).startswith("; no node may take the new task: see docker node ls")
    assert consequence("timeout after 90s: server: updating") == ""


# --- a placement that would stall start-first (moby/moby#40797) -----------------------------------


def placed(replicas: int, per_node: int, **placement) -> str:
    deploy = {
        "endpoint_mode": "dnsrr",
        "replicas": replicas,
        "update_config": {"order": "start-first"},
        "rollback_config": {"order": "start-first"},
        "placement": {"max_replicas_per_node": per_node, **placement},
    }
    return swarm_compose_json({"server": {"deploy": deploy}})


TWO_NODES = [node_json("m1", "manager"), node_json("w1")]


@pytest.mark.parametrize(
    "compose, nodes, fixes",
    [
        (placed(2, 1), TWO_NODES, "replicas 1 or fewer, or max_replicas_per_node 2 or more"),
        (placed(4, 2), TWO_NODES, "replicas 3 or fewer, or max_replicas_per_node 3 or more"),
        # a drained or down node takes no task; nor one the constraints rule out
        (
            placed(1, 1),
            [node_json("m1", "manager"), node_json("w1", availability="drain")],
            "node.id}] instead of max_replicas_per_node, or max_replicas_per_node 2 or more",
        ),
        (placed(1, 1), [node_json("m1", "manager"), node_json("w1", state="down")], "replicas_per_node 2 or more"),
        (placed(1, 1, constraints=["node.role == manager"]), TWO_NODES, "max_replicas_per_node 2 or more"),
        (
            placed(2, 1, constraints=["node.labels.zone==a"]),
            [*TWO_NODES, node_json("w2", zone="a")],
            "node.id}] instead of max_replicas_per_node, or max_replicas_per_node 3 or more",
        ),
    ],
)
def test_a_placement_that_leaves_start_first_no_room_fails_validation(compose, nodes, fixes):
    s, out = session(fake_manager(stack_survey_text(stack_services(), compose=compose, nodes=nodes)))
    with pytest.raises(BadInput) as e:
        SwarmEngine(s.host).validate(s)
    message = str(e.value)
    assert message.startswith("1 problem(s) on the host: server: max_replicas_per_node ")
    assert "leaves no room for the extra task of a start-first update" in message and "\n" not in message
    assert "set placement.preferences: [{spread: node.id}] instead of max_replicas_per_node" in message
    assert message.endswith(fixes)


@pytest.mark.parametrize(
    "compose, nodes",
    [
        (placed(2, 1), [*TWO_NODES, node_json("w2")]),  # 3 nodes x 1 > 2 replicas: one node has room
        (placed(2, 2), TWO_NODES),
        (placed(2, 1), None),  # the nodes could not be read: not judged
        (placed(1, 1, constraints=["node.labels.zone != a"]), [*TWO_NODES, node_json("w2", zone="a")]),
    ],
)
def test_a_placement_with_room_passes(compose, nodes):
    s, out = session(fake_manager(stack_survey_text(stack_services(), compose=compose, nodes=nodes)))
    assert SwarmEngine(s.host).validate(s).nodes == (
        None if nodes is None else swarm_state.parse_survey(stack_survey_text([], nodes=nodes), STACK).nodes
    )


# --- drain-node: the stack's tasks off a node, start-first, then the node drained ------------------


def on_worker(*names: str, other: str = "") -> str:
    """``docker node ps`` of the worker (swarm_cmds.node_tasks): a task of each service named."""
    return "".join(f"{STACK}_{n}.{i}\n" for i, n in enumerate(names, 1)) + (f"{other}.1\n" if other else "")


def drain_manager(listing: str, nodes: list[dict] | None = None, **survey) -> FakeExecutor:
    log: list = []
    fake = fake_manager(
        stack_survey_text(stack_services(), nodes=TWO_NODES if nodes is None else nodes, **survey), log=log
    )
    fake.first("docker node ps", listing)
    fake.log = log  # type: ignore[attr-defined]
    return fake


def test_drain_node_moves_each_service_with_a_task_there_then_drains_it():
    fake = drain_manager(on_worker("server", "property", "redis", other="monitoring_grafana"))
    s, out = session(fake)
    sequence.drain_node(s, SwarmEngine(s.host), "w1")
    assert fake.log == [("move", ["property", "redis", "server"])]  # type: ignore[attr-defined]
    run = next(c.command for c in fake.calls if "swarm_tier.sh" in c.command)
    args = program_args(next(c for c in fake.calls if "swarm_tier.sh" in c.command), "swarm_tier.sh")
    assert args[args.index("-n") + 1] == "id-w1"  # the node by its ID, never a hostname that may repeat
    assert "--login" in args and TOKEN not in run  # the other nodes pull with the run's login, on stdin
    assert steps_of(s) == [
        ("validate", "ok"),
        ("plan", "ok"),
        ("move property, redis, server off the node, drain it", "ok"),
        ("finish", "ok"),
    ]
    assert s.report.steps[1].detail == "move 3 service(s) off w1, then drain it"
    text = out.getvalue()
    assert "server: move, 1 task(s) on w1 to other nodes, start-first" in text
    assert "redis: move, 1 task(s) on w1 to other nodes, by its own update order, start-first" in text
    assert s.report.steps[2].detail.endswith("node drained; constraint removed from: property redis server")
    assert any("monitoring_grafana: not of stack" in n and "stops its task first" in n for n in s.notes)
    lock = next(c.command for c in fake.calls if "lock.sh" in c.command)
    assert "drain-node w1" in lock
    assert " 0 3 ''" in fake.calls[-1].command  # nothing rolled: nothing pruned


def test_drain_node_sets_start_first_for_an_app_whose_spec_stops_first_and_says_how_infra_moves():
    services = stack_services()
    services[0] = service_json("server", image_id("server", 1), order="stop-first")
    services.append(service_json("mongodb", image_id("base"), order="stop-first"))
    state = state_of(services, nodes=TWO_NODES)
    worker = find_node(state.nodes, "w1")
    plans, problems, notes = swarm_drain.drain_plan(state, ["server"], worker, {"server": 2, "mongodb": 1})
    assert problems == []
    assert [(p.name, p.sets, p.verb) for p in plans] == [("mongodb", (), "move"), ("server", ("order",), "move")]
    assert notes == ["mongodb: not an app service, it moves stop-first (its update_config.order)"]
    assert plans[1].line() == "server: move, 2 task(s) on w1 to other nodes, start-first"
    assert plans[1].change().image == services[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]


@pytest.mark.parametrize(
    "deploy, nodes, problem",
    [
        (
            {"placement": {"constraints": ["node.hostname == w1"]}},
            TWO_NODES,
            "no other ready, active node its placement allows (node.hostname == w1)",
        ),
        (
            {"replicas": 3, "placement": {"max_replicas_per_node": 2}},
            TWO_NODES,
            "max_replicas_per_node 2 on the 1 other",
        ),
        ({}, [node_json("m1", "manager", availability="drain"), node_json("w1")], "no other ready, active node could"),
    ],
)
def test_drain_node_refuses_before_any_change_when_a_task_could_not_move(deploy, nodes, problem):
    compose = swarm_compose_json({"server": {"deploy": {"endpoint_mode": "dnsrr", **deploy}}})
    fake = drain_manager(on_worker("server"), nodes=nodes, compose=compose)
    s, out = session(fake)
    with pytest.raises(BadInput, match="cannot move every task off w1: server: ") as e:
        sequence.drain_node(s, SwarmEngine(s.host), "w1")
    assert problem in str(e.value)
    assert not fake.seen("swarm_tier.sh") and fake.log == []  # type: ignore[attr-defined]
    assert "finish.sh" in fake.calls[-1].command  # the lock it took is freed


def test_drain_node_of_a_global_service_says_the_drain_stops_it():
    state = state_of([*stack_services(), service_json("agent", image_id("base"), replicas=None)], nodes=TWO_NODES)
    plans, problems, notes = swarm_drain.drain_plan(state, [], find_node(state.nodes, "w1"), {"agent": 1})
    assert (plans, problems) == ([], [])
    assert notes == ["agent: global (a task on every node): the drain stops its task on w1"]


@pytest.mark.parametrize(
    "name, nodes, message",
    [
        ("nope", TWO_NODES, "no node of this swarm named 'nope' (hostname or ID; nodes: m1, w1)"),
        ("id-", TWO_NODES, "several nodes of this swarm named 'id-'"),
        ("w1", [node_json("m1", "manager"), node_json("w1", state="down")], "node w1 is down: its tasks serve nothing"),
    ],
)
def test_drain_node_of_a_node_that_is_not_there_or_down_fails_before_the_lock(name, nodes, message):
    fake = drain_manager(on_worker("server"), nodes=nodes)
    s, out = session(fake)
    with pytest.raises(BadInput, match=re.escape(message)):
        sequence.drain_node(s, SwarmEngine(s.host), name)
    assert not fake.seen("lock.sh")


def test_drain_node_finds_a_node_by_its_id_or_a_prefix_of_it():
    nodes = [SwarmNode.of(n) for n in TWO_NODES]
    assert find_node(nodes, "id-w1").hostname == "w1"
    assert find_node(nodes, "id-w").hostname == "w1"
    assert find_node(nodes, "m1").id == "id-m1"


def test_drain_node_with_nothing_there_only_drains_it_and_a_dry_run_changes_nothing():
    fake = drain_manager("")
    s, out = session(fake, dry_run=True)
    sequence.drain_node(s, SwarmEngine(s.host), "w1")
    text = out.getvalue()
    assert "would run: " in text and "swarm_tier.sh move remilia-swarm" in text and " -n id-w1" in text
    assert steps_of(s)[2] == ("drain the node", "ok")
    assert not fake.seen("swarm_tier.sh")


def test_drain_node_is_for_engine_swarm_only():
    host = load(HOSTS_TOML).host("sandbox")
    with pytest.raises(BadInput, match="drain-node w1: engine compose runs on this one host"):
        ComposeEngine(host).node_target(None, None, "w1")  # type: ignore[arg-type]


def test_after_a_drain_node_a_rollback_has_no_image_to_go_back_to():
    moved = service_json("server", image_id("server", 2), previous=image_id("server", 2))
    moved["PreviousSpec"]["TaskTemplate"]["Placement"] = {"Constraints": ["node.id!=id-w1"]}
    plans = swarm_rollback.rollback_plan(state_of([moved]), ["server"])
    assert plans[0].line() == (
        "server: skip, its previous spec differs in its placement only (a drain-node, or a placement change): "
        "no image to go back to"
    )


# --- the proxy reaching tasks by service name ------------------------------------------------------


def dynamic_route(path: str, name: str) -> dict:
    """``handle_path PATH/* { reverse_proxy { dynamic a NAME 8080 } }`` as Caddy runs it."""
    route = reverse_proxy_route(path)
    proxy = route["handle"][0]["routes"][1]["handle"][0]
    proxy.pop("upstreams")
    proxy["dynamic_upstreams"] = {"source": "a", "name": name, "port": "8080", "refresh": 1000000000}
    return route


@pytest.mark.parametrize(
    "config, named",
    [
        (caddy_config(*(reverse_proxy_route(f"/{n}", f"{n}:8080") for n in SANDBOX_APPS)), SANDBOX_APPS),
        (caddy_config(reverse_proxy_route("/s", "tasks.server:8080"), dynamic_route("/p", "property")), ["server"]),
        (caddy_config(*(dynamic_route(f"/{n}", n) for n in SANDBOX_APPS)), []),
        (None, []),  # no proxy task on this node: not judged
    ],
)
def test_a_proxy_that_reaches_app_tasks_by_service_name_is_noted(config, named):
    s, out = session(fake_manager(stack_survey_text(stack_services(), proxy_running=config)))
    state = SwarmEngine(s.host).validate(s)
    assert state.proxy_running == config
    said = [n for n in s.notes if n.startswith("the proxy reaches ")]
    if not named:
        assert said == []
        return
    assert said == [
        f"the proxy reaches {', '.join(named)} by service name: Caddy pools its connections by that name and goes "
        "on sending requests to a task out of service discovery until it dies, cutting what is in flight then: give "
        "it the tasks' addresses (reverse_proxy { dynamic a NAME PORT }, refresh 1s; README)"
    ]


def test_a_service_swarm_still_changes_once_the_lock_is_held_is_refused_under_it():
    # validation let it through (a run held the lock); the lock then came free: checked again under it
    services = stack_services()
    services[0] = service_json("server", image_id("server", 1), update_state="updating")
    holder = "al@x pid 1.ab deploy since 2026-11-30 07:00:00 UTC (run 20261130-070000-1)"
    fake = fake_manager(stack_survey_text(services, lock=holder))
    s, out = session(fake)
    with pytest.raises(BadInput, match=r"server: Swarm is still changing it \(updating\)"):
        deploy(s)
    assert not fake.seen("swarm_tier.sh") and not fake.seen("pull.sh")
    assert "finish.sh" in fake.calls[-1].command  # the lock freed, the run journaled


def test_drain_node_refuses_a_service_whose_update_swarm_paused():
    services = [*stack_services()[1:], service_json("server", image_id("server", 2), update_state="paused")]
    state = state_of(services, nodes=TWO_NODES)
    plans, problems, notes = swarm_drain.drain_plan(state, ["server"], find_node(state.nodes, "w1"), {"server": 1})
    assert plans == [] and problems == ["server: Swarm paused its last update (paused): deploy or roll back first"]


def test_the_tasks_on_a_node_are_told_apart_from_a_stack_whose_name_starts_the_same():
    listing = f"{STACK}_server.1\n{STACK}_v2_server.1\nother_web.2\n{STACK}_redis.1\n"
    known = {"server", "redis"}
    assert swarm_drain.on_node(listing, STACK, known) == {"server": 1, "redis": 1}
    assert swarm_drain.other_stacks(listing, STACK, known) == ["other_web", f"{STACK}_v2_server"]
