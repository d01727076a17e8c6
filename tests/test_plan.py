"""Unit tests for fabfile.plan: reading survey.sh's answer and deciding what rolls."""

from __future__ import annotations

import json

import pytest

from fabfile.plan import (
    HostState,
    SurveyError,
    declared_count,
    image_table,
    make_plan,
    normalize_ref,
    parse_survey,
    plan_service,
)
from fabfile.proxy import hold_upstreams, rewrite_upstreams
from tests.fakes import (
    PROXY_NETWORK,
    SANDBOX_APPS,
    cid,
    compose_config_json,
    container_json,
    image_id,
    image_listing,
    sandbox_caddy_config,
    sandbox_containers,
)

CADDY_FILE = sandbox_caddy_config()


def survey(
    ctrs: list[dict] | None = None,
    *,
    patch: dict | None = None,
    drop: tuple[str, ...] = (),
    **sections: str | tuple[int, str],
) -> str:
    """What survey.sh prints for the sandbox stack: ``=== NAME RC`` lines, each followed by
    the section's content (``ctrs``: the containers, docker inspect'ed). A keyword (``_`` for ``-``)
    replaces a section by its text, or by
    ``(rc, text)`` for a command that failed; ``drop`` leaves sections out; ``patch`` goes to
    :func:`compose_config_json`."""
    compose = compose_config_json(patch)
    parts: dict[str, str | tuple[int, str]] = {
        "compose": compose,
        "hashes": "\n".join(f"{s} hash-{s}" for s in json.loads(compose)["services"]),
        "containers": json.dumps(sandbox_containers() if ctrs is None else ctrs),
        "proxy-container": cid("cad"),
        "proxy-config": json.dumps(CADDY_FILE, indent=2),
        "proxy-running": json.dumps(CADDY_FILE),
        "proxy-version": "v2.6.2 h1:Wrbaq3RPlvpm8ObpRuYs+1RXjTDNcDFuC1bBd9Hs1zo=",
    }
    parts.update({k.replace("_", "-"): v for k, v in sections.items()})
    out = ""
    for name, value in parts.items():
        if name not in drop:
            rc, text = value if isinstance(value, tuple) else (0, value)
            out += f"=== {name} {rc}\n{text}\n"
    return out


def state_of(ctrs: list[dict] | None = None, **kw) -> HostState:
    return parse_survey(survey(ctrs, **kw), "caddy")


def short(image: str) -> str:
    return image.removeprefix("sha256:")[:12]


# --- parse_survey ------------------------------------------------------------------------------


def test_survey_sections_are_parsed():
    server = container_json(cid("a1"), "server", image_id("server"), "172.18.0.10", config_hash="h1")
    server["Mounts"] = [
        {"Type": "volume", "Name": "uploads", "Source": "/var/lib/docker/volumes/uploads/_data", "RW": True},
        {"Type": "bind", "Source": "/srv/app/config", "RW": False},
        {"Type": "bind", "Source": "/srv/app/logs", "RW": True},
    ]
    server["NetworkSettings"]["Networks"]["backend"] = {"IPAddress": "172.20.0.10"}
    db = container_json(cid("b2"), "mongodb", image_id("base"), "", state="exited", health="none")
    state = state_of([server, db], hashes="server h1\nmongodb h2\n")

    assert set(state.services) == {*SANDBOX_APPS, "mongodb", "redis", "caddy"}
    assert state.services["server"]["image"] == "127.0.0.1:15000/zdd-sandbox/server:latest"
    assert state.hashes == {"server": "h1", "mongodb": "h2"}
    c = state.containers[0]
    assert (c.id, c.service, c.state, c.health, c.image, c.config_hash, c.name) == (
        cid("a1")[:12],
        "server",
        "running",
        "healthy",
        image_id("server"),
        "h1",
        "remilia-server-1",
    )
    assert c.networks == {PROXY_NETWORK: "172.18.0.10", "backend": "172.20.0.10"}
    assert c.labels["com.docker.compose.service"] == "server"
    assert c.mounts == ("uploads", "/srv/app/logs")  # read-only mounts left out
    assert c.running
    assert (state.containers[1].state, state.containers[1].health) == ("exited", "none")
    assert [x.id for x in state.running("mongodb")] == [] and len(
        [x for x in state.containers if x.service == "mongodb"]
    ) == 1
    assert state.running("server") == [c]


def test_survey_proxy_container_networks_config_and_version():
    proxy = container_json(cid("cad"), "caddy", image_id("caddy"), "172.18.0.2", health="none")
    proxy["NetworkSettings"]["Networks"]["edge"] = {"IPAddress": "10.9.0.2"}
    state = state_of([*sandbox_containers()[:-1], proxy])
    assert state.proxy == cid("cad")[:12]
    assert state.proxy_networks == (PROXY_NETWORK, "edge")
    assert state.proxy_config == CADDY_FILE
    assert state.proxy_config_error == ""
    assert state.proxy_running == CADDY_FILE
    assert state.proxy_version == "v2.6.2"


@pytest.mark.parametrize(
    "running, pinned",
    [
        (json.dumps(CADDY_FILE), False),  # the file's config
        (json.dumps(CADDY_FILE, indent=4, sort_keys=True), False),  # same config, other text
        (
            json.dumps(hold_upstreams(rewrite_upstreams(CADDY_FILE, "server", ["172.18.0.10"]), ["server:8080"])),
            True,
        ),  # an unfinished deploy
        (json.dumps(rewrite_upstreams(CADDY_FILE, "server", ["172.18.0.10"])), False),  # edited, not reloaded
    ],
)
def test_proxy_pinned_when_the_running_config_is_not_the_file(running, pinned):
    assert state_of(proxy_running=running).proxy_pinned is pinned


def test_proxy_running_unknown_without_wget():
    state = state_of(
        proxy_running=(
            126,
            "OCI runtime exec failed: exec failed: unable to start container process: "
            'exec: "wget": executable file not found in $PATH: unknown',
        )
    )
    assert state.proxy_running is None
    assert state.proxy_config == CADDY_FILE
    assert state.proxy_pinned is False


def test_proxy_config_unreadable_is_kept_as_an_error():
    state = state_of(
        proxy_config=(
            1,
            "Error: adapting config using caddyfile: /etc/caddy/Caddyfile:3: unrecognized directive: reverse_prxy",
        )
    )
    assert state.proxy_config is None
    assert state.proxy_config_error == (
        "reading the proxy config failed: Error: adapting config using caddyfile: "
        "/etc/caddy/Caddyfile:3: unrecognized directive: reverse_prxy"
    )
    assert state.proxy_pinned is False


def test_no_proxy_when_none_is_configured_or_running():
    assert parse_survey(survey(), "").proxy is None
    state = state_of(proxy_container="", drop=("proxy-config", "proxy-running", "proxy-version"))
    assert (state.proxy, state.proxy_networks, state.proxy_config, state.proxy_running) == (None, (), None, None)
    assert state.proxy_version == ""


def test_missing_optional_sections():
    state = state_of(drop=("containers", "proxy-version"), hashes=(1, "unknown flag: --hash"))
    assert state.containers == [] and state.hashes == {}
    assert state.proxy_version == ""
    assert state.proxy_networks == ()  # the proxy container was not in the (missing) list


@pytest.mark.parametrize(
    "sections, message",
    [
        (
            {"compose": (15, "WARN[0000] some warning\nno configuration file provided: not found")},
            "docker compose config failed: no configuration file provided: not found",
        ),
        ({"compose": (1, "")}, "docker compose config failed: exit status 1"),
        (
            {"compose": "not json"},
            "docker compose config did not print JSON (Expecting value, line 1 column 1): 'not json'",
        ),
        ({"containers": (1, "Error: No such object: 0123")}, "docker inspect failed: Error: No such object: 0123"),
    ],
)
def test_survey_errors_name_the_part(sections, message):
    with pytest.raises(SurveyError) as e:
        state_of(**sections)
    assert str(e.value) == message


def test_survey_without_compose_section():
    with pytest.raises(SurveyError, match="^docker compose config: no answer from the host$"):
        state_of(drop=("compose",))


# --- the plan ----------------------------------------------------------------------------------


def plan(state: HostState, version: int = 1, name: str = "server", force: bool = False):
    return plan_service(name, state, image_table(image_listing(version)), force)


def test_unchanged_service_is_skipped():
    p = plan(state_of())
    assert (p.roll, p.reason, p.target) == (False, f"unchanged (image {short(image_id('server'))})", 1)
    assert [c.service for c in p.old] == ["server"]
    assert p.line() == f"server: skip, unchanged (image {short(image_id('server'))})"


def test_new_image_rolls():
    p = plan(state_of(), version=2)
    assert p.roll and p.reason == f"new image {short(image_id('server', 1))} → {short(image_id('server', 2))}"
    assert p.line() == f"server: roll (1 → 1), {p.reason}"


def test_config_hash_change_rolls():
    p = plan(state_of(hashes="server hash-changed"))
    assert (p.roll, p.reason) == (True, "compose config changed")


def test_image_change_is_named_before_a_config_change():
    p = plan(state_of(hashes="server hash-changed"), version=2)
    assert p.reason.startswith("new image ")


@pytest.mark.parametrize(
    "patch, extra, reason, target",
    [
        ({"deploy": {"replicas": 3}}, 0, "1 running, 3 declared", 3),
        ({"scale": 1}, 1, "2 running, 1 declared", 1),
    ],
)
def test_declared_count_change_rolls(patch, extra, reason, target):
    p = plan(state_of(sandbox_containers(extra={"server": extra}), patch={"server": patch}))
    assert (p.roll, p.reason, p.target, len(p.old)) == (True, reason, target, 1 + extra)


def test_declared_count_sets_the_target():
    state = state_of(patch={"server": {"deploy": {"replicas": 2}}})
    assert plan(state, version=2).target == 2
    assert plan(state, force=True).target == 2


def test_without_declared_count_the_running_count_is_kept():
    state = state_of(sandbox_containers(extra={"server": 2}))
    assert (plan(state).roll, plan(state).target) == (False, 3)
    p = plan(state, version=2)
    assert (p.roll, p.target, len(p.old)) == (True, 3, 3)
    assert p.line().startswith("server: roll (3 → 3), new image ")


def test_force_rolls_an_unchanged_service():
    p = plan(state_of(), force=True)
    assert (p.roll, p.reason, p.target, len(p.old)) == (True, "forced", 1, 1)


def test_not_running_rolls_to_start_it():
    containers = [c for c in sandbox_containers() if c["Config"]["Labels"]["com.docker.compose.service"] != "server"]
    containers.append(container_json(cid("dead"), "server", image_id("server"), "", state="exited", health="none"))
    p = plan(state_of(containers))
    assert (p.roll, p.reason, p.old, p.target) == (True, "not running: start it", (), 1)
    assert p.line() == "server: roll (0 → 1), not running: start it"


def test_image_not_in_the_listing_is_not_a_change():
    p = plan_service("server", state_of(), {})
    assert not p.roll


def test_make_plan_keeps_the_order():
    state = state_of(hashes="\n".join(f"{s} hash-{s}" for s in SANDBOX_APPS if s != "identity"))
    names = ["profile-server", "server", "identity"]
    plans = make_plan(names, state, image_table(image_listing()), force=False)
    assert [p.name for p in plans] == names
    assert [p.roll for p in plans] == [False, False, False]  # no hash to compare: unchanged
    assert all(p.reason == "forced" for p in make_plan(names, state, {}, force=True))


@pytest.mark.parametrize(
    "service, count",
    [
        ({"deploy": {"replicas": 2}}, 2),
        ({"scale": 3}, 3),
        ({"scale": "4"}, 4),
        ({"deploy": {"replicas": 0}}, 0),
        ({"deploy": {"replicas": None}, "scale": 5}, 5),
        ({"deploy": {"resources": {}}}, None),
        ({"deploy": None}, None),
        ({"deploy": {"replicas": True}}, None),
        ({}, None),
    ],
)
def test_declared_count(service, count):
    assert declared_count(service) == count


# --- image references --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref, listed",
    [
        ("nginx", "nginx:latest"),
        ("nginx:1.25", "nginx:1.25"),
        ("library/redis:7", "redis:7"),
        ("docker.io/library/nginx:1.25", "nginx:1.25"),
        ("index.docker.io/library/nginx", "nginx:latest"),
        ("docker.io/bitnami/redis", "bitnami/redis:latest"),
        ("127.0.0.1:15000/zdd-sandbox/server", "127.0.0.1:15000/zdd-sandbox/server:latest"),
        ("127.0.0.1:15000/zdd-sandbox/server:latest", "127.0.0.1:15000/zdd-sandbox/server:latest"),
        ("ghcr.io/remilia/app:v1.2@sha256:" + "0" * 64, "ghcr.io/remilia/app:v1.2"),
    ],
)
def test_normalize_ref(ref, listed):
    assert normalize_ref(ref) == listed


def test_image_table():
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    text = (
        f"nginx:latest {a}\n\n127.0.0.1:15000/zdd-sandbox/server:latest {b}\n<none>:<none> {b}\nbroken line\n"
        "redis:7 cafe1234\n"
    )
    assert image_table(text) == {"nginx:latest": a, "127.0.0.1:15000/zdd-sandbox/server:latest": b, "<none>:<none>": b}
    assert image_table(image_listing(2))["127.0.0.1:15000/zdd-sandbox/server:latest"] == image_id("server", 2)
    assert image_table("") == {}
