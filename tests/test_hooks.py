"""Hooks in the deploy sequence, against a simulated host: which run when and with what
variables, a failing pre-deploy stopping the run before the lock, a failing post-deploy only
warned about, timeouts, dry runs, --skip-hooks, and the markers sent at the end."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from fabfile.config import HooksConfig, NotifyConfig
from fabfile.runner import BadInput, StepFailed
from tests.fakes import deploy, deploy_host, fail, fake_session, image_listing
from tests.receiver import Receiver, free_port

TOKEN = "s3cr3t-t0ken"
GRAFANA = "glsa_grafana-s3cret"
SENTRY = "sntrys_sentry-s3cret"


@pytest.fixture(autouse=True)
def tokens(monkeypatch):
    monkeypatch.setenv("ZDD_SANDBOX_REGISTRY_PASSWORD", TOKEN)
    monkeypatch.setenv("GRAFANA_TOKEN", GRAFANA)
    monkeypatch.setenv("SENTRY_AUTH_TOKEN", SENTRY)


def hook(d: Path, name: str, body: str, mode: int = 0o755) -> Path:
    """An executable shell script in ``d``: records its ZDD_* variables to NAME.env, runs ``body``."""
    d.mkdir(parents=True, exist_ok=True)
    path = d / name
    path.write_text(f"#!/bin/sh\nenv | grep '^ZDD_' | sort > '{d}/{name}.env'\n{body}\n")
    path.chmod(mode)
    return path


def recorded(d: Path, name: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (d / f"{name}.env").read_text().splitlines())


def session(fake, hooks_dir: Path, notify: NotifyConfig | None = None, dry_run: bool = False, timeout: float = 30):
    s, out = fake_session(fake, dry_run=dry_run)
    s.host = dataclasses.replace(
        s.host, hooks=HooksConfig(dir=str(hooks_dir), timeout=timeout), notify=notify or NotifyConfig()
    )
    return s, out


def test_pre_and_post_deploy_run_with_the_runs_facts(tmp_path):
    for name in ("pre-deploy", "post-deploy", "pre-tier", "post-tier"):
        hook(tmp_path, name, f"echo {name} says hi")
    fake = deploy_host(version=2)
    s, out = session(fake, tmp_path)
    deploy(s)
    text = out.getvalue()
    pre, post = recorded(tmp_path, "pre-deploy"), recorded(tmp_path, "post-deploy")
    run = json.loads(fake.calls[fake.index("lock.sh")].stdin.splitlines()[0])["run"]
    assert pre["ZDD_HOST"] == "sandbox" and pre["ZDD_RUN"] == run and pre["ZDD_COMMAND"] == "deploy"
    assert pre["ZDD_PERFORMER"] and pre["ZDD_SERVICES"] == "server property identity profile-server"
    assert pre["ZDD_IMAGES"].split() == [
        f"{n}=127.0.0.1:15000/zdd-sandbox/{n}:latest" for n in ("server", "property", "identity", "profile-server")
    ]
    assert "ZDD_RESULT" not in pre
    assert post["ZDD_RUN"] == run and post["ZDD_RESULT"] == "ok" and post["ZDD_RUNTIME"].isdigit()
    assert post["ZDD_SERVICES"] == "server property identity profile-server"
    assert post["ZDD_IMAGE_IDS"].startswith("server=sha256:") and post["ZDD_RELEASE"]
    assert "[sandbox] pre-deploy: pre-deploy says hi" in text and "[sandbox] post-deploy: post-deploy says hi" in text
    # order: pre-deploy before the lock, post-deploy after finish released it; a tier's hooks around it
    names = [r.name for r in s.report.steps]
    assert names.index("hook pre-deploy") < names.index("pull")
    assert names.index("finish") < names.index("hook post-deploy")
    assert (
        names.index("hook pre-tier (server, property)")
        < names.index("rollout server, property")
        < names.index("hook post-tier (server, property)")
        < names.index("rollout identity")
    )
    assert (
        recorded(tmp_path, "post-tier")["ZDD_TIER"] == "3"
        and recorded(tmp_path, "post-tier")["ZDD_SERVICES"] == "profile-server"
    )


def test_a_failing_pre_deploy_stops_before_the_lock_and_names_the_hook(tmp_path):
    hook(tmp_path, "pre-deploy", "echo checking the freeze\necho 'change freeze until Monday' >&2\nexit 3")
    hook(tmp_path, "post-deploy", "true")
    fake = deploy_host(version=2)
    s, out = session(fake, tmp_path)
    with pytest.raises(StepFailed) as e:
        deploy(s)
    assert str(e.value) == "hook pre-deploy failed (exit 3): change freeze until Monday"
    assert not isinstance(e.value, BadInput)  # exit 1
    assert not fake.seen("lock.sh") and not fake.seen("pull.sh") and not fake.tiers
    assert [c for c in fake.commands if "survey.sh" not in c] == []
    assert not (tmp_path / "post-deploy.env").exists()
    assert "[sandbox] pre-deploy: change freeze until Monday" in out.getvalue()


def test_a_pre_hook_past_its_timeout_is_stopped(tmp_path):
    hook(tmp_path, "pre-deploy", "sleep 30")
    fake = deploy_host(version=2)
    s, _ = session(fake, tmp_path, timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(StepFailed, match=r"hook pre-deploy failed \(timed out after 0.5s\)"):
        deploy(s)
    assert time.monotonic() - t0 < 5 and not fake.seen("lock.sh")


def test_a_non_executable_pre_hook_is_refused(tmp_path):
    hook(tmp_path, "pre-deploy", "true", mode=0o644)
    fake = deploy_host(version=2)
    s, _ = session(fake, tmp_path)
    with pytest.raises(BadInput, match="not executable"):
        deploy(s)
    assert not fake.seen("lock.sh")


def test_a_failing_post_deploy_is_a_warning_not_a_failure(tmp_path):
    hook(tmp_path, "post-deploy", "echo smoke test failed: /health 500\nexit 1")
    fake = deploy_host(version=2)
    s, out = session(fake, tmp_path)
    deploy(s)  # no exception: the deploy is good
    (rec,) = [r for r in s.report.steps if r.name == "hook post-deploy"]
    assert rec.status == "warned" and rec.detail == "exit 1: smoke test failed: /health 500"
    assert "[sandbox] WARN hook post-deploy" in out.getvalue()
    assert "FAIL" not in out.getvalue()


def test_a_failed_deploy_runs_post_deploy_with_failed(tmp_path):
    hook(tmp_path, "post-deploy", "true")
    fake = deploy_host(None, ("pull.sh", fail(1, stderr="pull access denied for server")), version=2)
    s, _ = session(fake, tmp_path)
    with pytest.raises(StepFailed):
        deploy(s)
    post = recorded(tmp_path, "post-deploy")
    assert post["ZDD_RESULT"] == "failed" and "pull access denied" in post["ZDD_ERROR"]
    assert post["ZDD_SERVICES"] == "server property identity profile-server"  # stopped before the plan
    assert "ZDD_RELEASE" not in post


def test_an_interrupted_deploy_is_aborted(tmp_path):
    hook(tmp_path, "post-deploy", "true")
    fake = deploy_host(version=2)
    fake.first("pull.sh", lambda call, f: (_ for _ in ()).throw(KeyboardInterrupt()))
    s, _ = session(fake, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        deploy(s)
    assert recorded(tmp_path, "post-deploy")["ZDD_RESULT"] == "aborted"


def test_skip_hooks_and_no_hooks_dir_run_nothing(tmp_path):
    hook(tmp_path, "pre-deploy", "exit 1")
    s, _ = session(deploy_host(version=2), tmp_path)
    deploy(s, hooks=False)
    assert not any(r.name.startswith("hook ") for r in s.report.steps)
    s, _ = session(deploy_host(version=2), tmp_path / "absent")
    deploy(s)
    assert not any(r.name.startswith(("hook ", "notify")) for r in s.report.steps)


def test_a_dry_run_lists_the_hooks_and_markers_and_runs_none(tmp_path):
    for name in ("pre-deploy", "post-deploy"):
        hook(tmp_path, name, "exit 1")
    with Receiver() as rx:
        notify = NotifyConfig(grafana_url=rx.url, grafana_token_env="GRAFANA_TOKEN", webhook_url=rx.url + "/chat")
        s, out = session(deploy_host(None, ("docker image ls", image_listing(2))), tmp_path, notify, dry_run=True)
        deploy(s)
    assert rx.requests == [] and not (tmp_path / "pre-deploy.env").exists()
    skipped = {r.name: r.detail for r in s.report.steps if r.status == "skipped"}
    assert skipped["hook pre-deploy"].startswith(f"dry run: would run {tmp_path}/pre-deploy with ZDD_COMMAND")
    assert "hook post-deploy" in skipped and skipped["notify"] == "dry run: would send to grafana, chat"
    text = out.getvalue()
    assert f"would send: POST {rx.url}/api/annotations (Authorization: Bearer $GRAFANA_TOKEN) (grafana)" in text
    assert GRAFANA not in text


def test_markers_are_sent_once_the_deploy_is_over_and_tokens_stay_secret(tmp_path, monkeypatch):
    hook(tmp_path, "post-deploy", "echo my token is $GRAFANA_TOKEN")
    with Receiver() as rx:
        notify = NotifyConfig(
            grafana_url=rx.url,
            grafana_token_env="GRAFANA_TOKEN",
            sentry_url=rx.url,
            sentry_org="remilia",
            sentry_project=("server",),
            sentry_token_env="SENTRY_AUTH_TOKEN",
            webhook_url=rx.url + "/chat",
        )
        fake = deploy_host(version=2)
        s, out = session(fake, tmp_path, notify)
        deploy(s)
    paths = rx.paths()
    assert "/api/annotations" in paths and "/chat" in paths
    assert "/api/0/organizations/remilia/releases/" in paths
    (dep,) = [r for r in rx.requests if r.path.endswith("/deploys/")]
    assert dep.body["environment"] == "sandbox" and dep.authorization == f"Bearer {SENTRY}"
    (ann,) = rx.to("/api/annotations")
    assert ann.authorization == f"Bearer {GRAFANA}" and ann.body["tags"][:2] == ["deploy", "sandbox"]
    assert ann.body["timeEnd"] >= ann.body["time"]
    (rec,) = [r for r in s.report.steps if r.name == "notify"]
    assert rec.status == "ok" and rec.detail.startswith("grafana annotation, sentry release ")
    text = out.getvalue()
    assert "[sandbox] post-deploy: my token is ***" in text
    for secret in (GRAFANA, SENTRY, TOKEN):
        assert secret not in text
        assert all(secret not in (c.stdin or "") + c.command for c in fake.calls if "pull.sh" not in c.command)


def test_markers_with_the_receiver_down_warn_once_and_the_deploy_is_good(tmp_path):
    down = f"http://127.0.0.1:{free_port()}"
    notify = NotifyConfig(grafana_url=down, grafana_token_env="GRAFANA_TOKEN", webhook_url=down + "/chat", timeout=1)
    s, out = session(deploy_host(version=2), tmp_path, notify)
    deploy(s)
    (rec,) = [r for r in s.report.steps if r.name == "notify"]
    assert rec.status == "warned" and rec.detail.startswith("not sent: grafana: ") and "; chat: " in rec.detail
    assert [ln for ln in out.getvalue().splitlines() if "WARN" in ln] == [
        ln for ln in out.getvalue().splitlines() if ln.startswith("[sandbox] WARN notify")
    ]
    assert len([ln for ln in out.getvalue().splitlines() if "WARN" in ln]) == 1


def test_a_swarm_rollback_runs_pre_and_post_rollback(tmp_path):
    from fabfile import sequence
    from fabfile.engines import SwarmEngine
    from tests.fakes import image_id, service_json, stack_services, stack_survey_text
    from tests.test_swarm import fake_manager
    from tests.test_swarm import session as swarm_session

    for name in ("pre-rollback", "post-rollback", "pre-deploy", "post-deploy"):
        hook(tmp_path, name, "true")
    services = stack_services(version=2, previous=1)
    services[2] = service_json("identity", image_id("identity", 1))  # never updated: no previous spec
    fake = fake_manager(stack_survey_text(services), log=[])
    s, _ = swarm_session(fake)
    s.host = dataclasses.replace(s.host, hooks=HooksConfig(dir=str(tmp_path)))
    sequence.rollback(s, SwarmEngine(s.host))
    pre, post = recorded(tmp_path, "pre-rollback"), recorded(tmp_path, "post-rollback")
    assert pre["ZDD_COMMAND"] == post["ZDD_COMMAND"] == "rollback" and pre["ZDD_RUN"] == post["ZDD_RUN"]
    assert pre["ZDD_IMAGES"].startswith("server=127.0.0.1:15000/zdd-sandbox/server:latest")
    assert "identity" not in post["ZDD_SERVICES"].split() and post["ZDD_RESULT"] == "ok"
    assert post["ZDD_IMAGE_IDS"].startswith("server=" + image_id("server", 1))
    assert not (tmp_path / "pre-deploy.env").exists() and not (tmp_path / "post-deploy.env").exists()
