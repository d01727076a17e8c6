"""Release markers: the exact requests for Grafana, Sentry and the chat webhook, the release
name rule, the hooks' variables, and sending (a receiver that is up, down, slow or refusing)."""

from __future__ import annotations

import time

import pytest

from fabfile import notify
from fabfile.config import NotifyConfig, parse
from fabfile.release import RunFacts, release_name, release_tag, result_of
from fabfile.runner import StepFailed
from tests.receiver import Receiver, free_port

START = 1764500000.0  # 2025-11-30T10:53:20Z
END = START + 22.9
REF = "ghcr.io/remilia/{}:{}"
ID_SERVER = "sha256:3f2a9c1b7d0e" + "a" * 52
ID_IDENTITY = "sha256:77aa00bb11cc" + "b" * 52


def facts(tag: str = "v1.4.2", result: str = "ok", command: str = "deploy", **kw) -> RunFacts:
    f = RunFacts(
        "reminet-prod",
        command,
        ["server", "property", "identity"],
        {n: REF.format(n, "latest") for n in ("server", "property", "identity")},
        run="20251130-105320-4242",
        performer="alice@laptop",
        started=START,
    )
    f.plan(
        {
            "services": {
                "server": {"roll": True, "ref": REF.format("server", tag), "after": ID_SERVER},
                "property": {"roll": False, "ref": REF.format("property", tag), "after": "sha256:" + "c" * 64},
                "identity": {"roll": True, "ref": REF.format("identity", tag), "after": ID_IDENTITY},
            }
        }
    )
    f.result, f.ended = result, END
    for k, v in kw.items():
        setattr(f, k, v)
    return f


NOTIFY = NotifyConfig(
    grafana_url="https://grafana.example.com/",
    grafana_token_env="GRAFANA_TOKEN",
    sentry_org="remilia",
    sentry_project=("server", "identity"),
    sentry_token_env="SENTRY_AUTH_TOKEN",
    webhook_url="https://chat.example.com/hooks/abc",
    environment="production",
)


# --- the release name -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref,image,tag",
    [
        ("ghcr.io/remilia/server:v1.4.2", ID_SERVER, "v1.4.2"),
        ("ghcr.io/remilia/server:latest", ID_SERVER, "3f2a9c1b7d0e"),
        ("ghcr.io/remilia/server", ID_SERVER, "3f2a9c1b7d0e"),  # no tag is latest
        ("127.0.0.1:15000/remilia/server:main", ID_SERVER, "3f2a9c1b7d0e"),  # a registry port is not a tag
        ("127.0.0.1:15000/remilia/server", ID_SERVER, "3f2a9c1b7d0e"),
        ("ghcr.io/remilia/server:Stable", ID_SERVER, "3f2a9c1b7d0e"),
        ("ghcr.io/remilia/server:2024.11.30-abc", "", "2024.11.30-abc"),
        ("ghcr.io/remilia/server@sha256:" + "d" * 64, "sha256:" + "d" * 64, "dddddddddddd"),
    ],
)
def test_release_tag_is_the_tag_or_the_short_id_when_the_tag_moves(ref, image, tag):
    assert release_tag(ref, image) == tag


def test_release_name_one_tag_for_all_or_service_at_tag_each():
    assert release_name({}) == ""
    assert (
        release_name(
            {
                "server": (REF.format("server", "v1.4.2"), ID_SERVER),
                "identity": (REF.format("identity", "v1.4.2"), ID_IDENTITY),
            }
        )
        == "v1.4.2"
    )
    assert (
        release_name(
            {
                "server": (REF.format("server", "latest"), ID_SERVER),
                "identity": (REF.format("identity", "v2"), ID_IDENTITY),
            }
        )
        == "identity@v2+server@3f2a9c1b7d0e"
    )
    assert release_name({"server": (REF.format("server", "latest"), ID_SERVER)}) == "3f2a9c1b7d0e"


def test_release_name_never_breaks_sentrys_rules():
    long = {f"service-{i:03}": (REF.format(f"s{i}", f"v{i}"), "") for i in range(30)}
    name = release_name(long)
    assert name.startswith("zdd-") and len(name) == 16
    assert name == release_name(long)  # stable
    assert "/" not in release_name({"a": ("x:feature\\b", "")})


def test_facts_before_and_after_the_plan():
    f = RunFacts(
        "h",
        "deploy",
        ["server", "identity"],
        {"server": "r/server:latest", "identity": "r/identity:v1"},
        run="R",
        performer="p",
    )
    env = f.env()
    assert env == {
        "ZDD_HOST": "h",
        "ZDD_RUN": "R",
        "ZDD_PERFORMER": "p",
        "ZDD_COMMAND": "deploy",
        "ZDD_SERVICES": "server identity",
        "ZDD_IMAGES": "server=r/server:latest identity=r/identity:v1",
    }
    g = facts()
    assert g.services == ["server", "identity"] and g.release == "v1.4.2"
    env = g.env()
    assert env["ZDD_SERVICES"] == "server identity"
    assert env["ZDD_IMAGES"] == f"server={REF.format('server', 'v1.4.2')} identity={REF.format('identity', 'v1.4.2')}"
    assert env["ZDD_IMAGE_IDS"] == f"server={ID_SERVER} identity={ID_IDENTITY}"
    assert env["ZDD_RELEASE"] == "v1.4.2" and env["ZDD_RESULT"] == "ok" and env["ZDD_RUNTIME"] == "23"
    assert g.env((1, ["server", "property"]))["ZDD_SERVICES"] == "server"
    assert g.env((1, ["server", "property"]))["ZDD_TIER"] == "1"


def test_results():
    assert result_of(None) == "ok"
    assert result_of(StepFailed("x")) == "failed"
    assert result_of(KeyboardInterrupt()) == "aborted"

    class CanaryAbort(StepFailed):
        zdd_result = "aborted"

    class WatchRolledBack(StepFailed):
        zdd_result = "rolled-back"

    assert result_of(CanaryAbort("5xx")) == "aborted" and result_of(WatchRolledBack("x")) == "rolled-back"
    f = facts()
    f.over(WatchRolledBack("errors after the deploy: rolled back"))
    assert f.result == "rolled-back" and f.error == "errors after the deploy: rolled back"


# --- the payloads -----------------------------------------------------------------------------


def test_grafana_annotation_exactly():
    m = notify.annotation(facts(verdict="0 of 863 requests failed"), NOTIFY)
    assert m.url == "https://grafana.example.com/api/annotations" and m.token_env == "GRAFANA_TOKEN"
    assert m.body == {
        "time": 1764500000000,
        "timeEnd": 1764500022900,
        "tags": ["deploy", "reminet-prod", "server", "identity"],
        "text": "[reminet-prod] deploy: ok in 22.9s\nserver, identity → release v1.4.2\n"
        "run 20251130-105320-4242 by alice@laptop\nverify: 0 of 863 requests failed",
    }


def test_grafana_marks_failures_aborts_rollbacks():
    assert notify.annotation(facts(result="failed", error="identity: not healthy"), NOTIFY).body["tags"] == [
        "deploy",
        "reminet-prod",
        "server",
        "identity",
        "failed",
    ]
    assert notify.annotation(facts(result="rolled-back"), NOTIFY).body["tags"][-1] == "rolled-back"
    assert notify.annotation(facts(result="aborted", command="rollback"), NOTIFY).body["tags"] == [
        "deploy",
        "reminet-prod",
        "server",
        "identity",
        "rollback",
        "aborted",
    ]
    text = notify.annotation(facts(result="failed", error="identity: not healthy"), NOTIFY).body["text"]
    assert text.startswith("[reminet-prod] deploy: failed in 22.9s\n") and text.endswith(
        "\nerror: identity: not healthy"
    )


def test_sentry_release_and_deploy_exactly():
    rel, dep = notify.sentry(facts(), NOTIFY, "https://ci.example.com/run/9")
    assert rel.url == "https://sentry.io/api/0/organizations/remilia/releases/"
    assert rel.body == {"version": "v1.4.2", "projects": ["server", "identity"], "dateReleased": "2025-11-30T10:53:42Z"}
    assert dep.url == "https://sentry.io/api/0/organizations/remilia/releases/v1.4.2/deploys/"
    assert dep.body == {
        "environment": "production",
        "name": "deploy 20251130-105320-4242",
        "projects": ["server", "identity"],
        "dateStarted": "2025-11-30T10:53:20Z",
        "dateFinished": "2025-11-30T10:53:42Z",
        "url": "https://ci.example.com/run/9",
    }
    assert rel.token_env == dep.token_env == "SENTRY_AUTH_TOKEN"


def test_sentry_version_is_quoted_in_the_path_and_environment_defaults_to_the_host():
    f = facts()
    f.images["server"] = REF.format("server", "latest")
    _, dep = notify.sentry(
        f,
        NotifyConfig(
            sentry_url="https://sentry.example.com/",
            sentry_org="remilia",
            sentry_project=("server",),
            sentry_token_env="T",
        ),
    )
    assert dep.url == (
        "https://sentry.example.com/api/0/organizations/remilia/releases/"
        "identity%40v1.4.2%2Bserver%403f2a9c1b7d0e/deploys/"
    )
    assert dep.body["environment"] == "reminet-prod"


def test_no_sentry_release_for_a_run_that_failed_or_rolled_nothing():
    assert notify.sentry(facts(result="failed"), NOTIFY) == []
    f = facts()
    f.plan({"services": {"server": {"roll": False, "ref": "x", "after": "y"}}})
    assert notify.sentry(f, NOTIFY) == []


def test_chat_message_exactly():
    m = notify.chat(facts(result="failed", error="identity: not healthy"), NOTIFY, "https://ci.example.com/run/9")
    assert m.url == "https://chat.example.com/hooks/abc" and m.token_env == ""
    assert m.body == {
        "text": "[reminet-prod] deploy: failed in 22.9s\nserver, identity → release v1.4.2\n"
        "run 20251130-105320-4242 by alice@laptop\nerror: identity: not healthy\n"
        "report: https://ci.example.com/run/9"
    }


def test_the_report_link():
    f = facts()
    assert notify.link(f, NOTIFY, {}) == ""
    assert (
        notify.link(
            f,
            NOTIFY,
            {"GITHUB_RUN_ID": "9", "GITHUB_REPOSITORY": "remilia/zdd", "GITHUB_SERVER_URL": "https://github.com"},
        )
        == "https://github.com/remilia/zdd/actions/runs/9"
    )
    own = NotifyConfig(report_url="https://reports.example.com/{host}/{run}.html")
    assert (
        notify.link(f, own, {"GITHUB_RUN_ID": "9"})
        == "https://reports.example.com/reminet-prod/20251130-105320-4242.html"
    )


def test_messages_in_order_and_none_without_notify():
    assert [m.notifier for m in notify.messages(facts(), NOTIFY, {})] == ["grafana", "sentry", "sentry", "chat"]
    assert [m.notifier for m in notify.messages(facts(result="failed"), NOTIFY, {})] == ["grafana", "chat"]
    assert notify.messages(facts(), NotifyConfig(), {}) == []


# --- sending -----------------------------------------------------------------------------------

TOKENS = {"GRAFANA_TOKEN": "graf-s3cret", "SENTRY_AUTH_TOKEN": "sntrys_s3cret"}


def config_for(url: str) -> NotifyConfig:
    return NotifyConfig(
        grafana_url=url,
        grafana_token_env="GRAFANA_TOKEN",
        sentry_url=url,
        sentry_org="remilia",
        sentry_project=("server",),
        sentry_token_env="SENTRY_AUTH_TOKEN",
        webhook_url=url + "/chat",
        timeout=1.0,
    )


def test_send_to_a_receiver_bearer_tokens_and_bodies():
    with Receiver() as rx:
        failed = notify.send(notify.messages(facts(), config_for(rx.url), {}), TOKENS.get, 1.0)
    assert failed == []
    by_path = {r.path: r for r in rx.requests}
    assert set(by_path) == {
        "/api/annotations",
        "/api/0/organizations/remilia/releases/",
        "/api/0/organizations/remilia/releases/v1.4.2/deploys/",
        "/chat",
    }
    assert by_path["/api/annotations"].authorization == "Bearer graf-s3cret"
    assert by_path["/api/0/organizations/remilia/releases/"].authorization == "Bearer sntrys_s3cret"
    assert by_path["/chat"].authorization == ""
    assert by_path["/api/0/organizations/remilia/releases/"].body["version"] == "v1.4.2"
    assert by_path["/api/0/organizations/remilia/releases/v1.4.2/deploys/"].body["environment"] == "reminet-prod"
    # the release before its deploy
    paths = rx.paths()
    assert paths.index("/api/0/organizations/remilia/releases/") < paths.index(
        "/api/0/organizations/remilia/releases/v1.4.2/deploys/"
    )


def test_send_with_the_receiver_down_slow_or_refusing_says_so_quickly():
    down = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    failed = notify.send(notify.messages(facts(), config_for(down), {}), TOKENS.get, 1.0)
    assert time.monotonic() - t0 < 3
    assert [x.split(":")[0] for x in failed] == ["grafana", "sentry", "chat"]
    with Receiver(delay=3) as rx:
        t0 = time.monotonic()
        failed = notify.send(notify.messages(facts(), config_for(rx.url), {}), TOKENS.get, 0.5)
        assert time.monotonic() - t0 < 2.5  # side by side, one timeout each
    assert failed == ["grafana: no answer within 0.5s", "sentry: no answer within 0.5s", "chat: no answer within 0.5s"]
    with Receiver(status=401) as rx:
        failed = notify.send(notify.messages(facts(), config_for(rx.url), {}), TOKENS.get, 1.0)
    assert failed[0] == f"grafana: HTTP 401 from {rx.url}/api/annotations"
    assert len(rx.to("/api/0/")) == 1  # no deploy after a release that failed


def test_a_missing_token_is_not_sent_and_said():
    with Receiver() as rx:
        failed = notify.send(notify.messages(facts(), config_for(rx.url), {}), {}.get, 1.0)
    assert failed == ["grafana: GRAFANA_TOKEN is not set", "sentry: SENTRY_AUTH_TOKEN is not set"]
    assert rx.paths() == ["/chat"]


# --- hosts.toml -------------------------------------------------------------------------------

BASE = '[defaults]\ndir = "~/app"\nrollout = [["server"]]\n'


def test_notify_config_one_project_or_a_list_and_its_checks():
    h = parse(
        BASE + '[hosts.h.notify]\nsentry_org = "remilia"\nsentry_project = "server"\n'
        'sentry_token_env = "SENTRY_AUTH_TOKEN"\n'
    ).host("h")
    assert h.notify.sentry_project == ("server",) and h.notify.sentry_url == "https://sentry.io"
    h = parse(BASE + '[hosts.h.notify]\nsentry_org = "o"\nsentry_project = ["a", "b"]\nsentry_token_env = "T"\n').host(
        "h"
    )
    assert h.notify.sentry_project == ("a", "b")
    for bad, says in [
        ('grafana_url = "https://g"', "grafana_token_env"),
        ('grafana_url = "g.example"\ngrafana_token_env = "T"', "not an http(s) URL"),
        ('grafana_token_env = "glsa_abc-123"', "must name an environment variable"),
        ('sentry_org = "o"\nsentry_token_env = "T"', "sentry_project"),
        ('sentry_project = "p"', "sentry_org"),
        ('webhook_url = "https://x"\nwebhook_url_env = "W"', "keep one"),
        ('token = "x"', "unknown key"),
    ]:
        with pytest.raises(Exception) as e:
            parse(BASE + "[hosts.h.notify]\n" + bad + "\n")
        assert says in str(e.value), (bad, str(e.value))


def test_hooks_dir_is_relative_to_the_hosts_file(tmp_path):
    path = tmp_path / "conf" / "hosts.toml"
    path.parent.mkdir()
    path.write_text(BASE + '[hosts.h]\n[hosts.g.hooks]\ndir = "ci/hooks"\ntimeout = 5\n')
    from fabfile.config import load

    inv = load(path)
    assert inv.host("h").hooks.dir == str(path.parent / ".zdd" / "hooks")
    assert inv.host("g").hooks.dir == str(path.parent / "ci" / "hooks") and inv.host("g").hooks.timeout == 5
    with pytest.raises(Exception, match="hooks.timeout"):
        parse(BASE + "[hosts.h.hooks]\ntimeout = 0\n")


def test_the_notify_tokens_are_secrets_of_the_run_and_redacted_from_json_and_html(monkeypatch):
    import json as jsonlib

    from fabfile import html_page, outcome
    from fabfile.session import secrets

    h = parse(
        BASE + '[hosts.h.notify]\ngrafana_url = "https://g"\ngrafana_token_env = "GRAFANA_TOKEN"\n'
        'sentry_org = "o"\nsentry_project = "p"\nsentry_token_env = "SENTRY_AUTH_TOKEN"\n'
        'webhook_url_env = "CHAT_WEBHOOK"\n'
    ).host("h")
    monkeypatch.setenv("GRAFANA_TOKEN", "graf-s3cret")
    monkeypatch.setenv("SENTRY_AUTH_TOKEN", "sntrys_s3cret")
    monkeypatch.setenv("CHAT_WEBHOOK", "https://hooks.slack.com/services/T0/B0/s3cretpath")
    assert set(secrets(h)) == {"graf-s3cret", "sntrys_s3cret", "https://hooks.slack.com/services/T0/B0/s3cretpath"}
    result = outcome.HostResult(
        "h",
        "deploy",
        started_at=START,
        ended_at=END,
        secrets=secrets(h),
        notes=["graf-s3cret sntrys_s3cret https://hooks.slack.com/services/T0/B0/s3cretpath"],
    )
    doc = outcome.document("deploy", [result])
    for text in (jsonlib.dumps(doc), html_page.render(doc)):
        assert "s3cret" not in text and "***" in text
