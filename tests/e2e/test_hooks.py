"""Hooks and release markers on the sandbox: a deploy runs pre-deploy and post-deploy with the
run's facts and sends the Grafana annotation, the Sentry release and deploy and the chat
message to a local receiver (127.0.0.1 only); a failing pre-deploy changes no container; with
the receiver down the deploy still succeeds with one warning; no token shows anywhere."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

from dotenv import dotenv_values

from tests import sandbox as sb
from tests.receiver import Receiver, free_port

GRAFANA = "glsa_e2e-grafana-s3cret"
SENTRY = "sntrys_e2e-sentry-s3cret"


def registry_token() -> str:
    env = dotenv_values(sb.ROOT / ".env") if (sb.ROOT / ".env").exists() else {}
    return env.get("ZDD_SANDBOX_REGISTRY_PASSWORD") or (sb.STATE / "registry" / "password").read_text().strip()


def setup(tmp_path: Path, url: str, pre: str = "", post: str = "") -> dict[str, str]:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    for name, body in (("pre-deploy", pre), ("post-deploy", post)):
        path = hooks / name
        path.write_text(f"#!/bin/sh\nenv | grep '^ZDD_' | sort > '{tmp_path}/{name}.env'\necho {name} ran\n{body}\n")
        path.chmod(0o755)
    extra = f"""
[hosts.sandbox.hooks]
dir = "hooks"
timeout = 60

[hosts.sandbox.notify]
grafana_url = "{url}"
grafana_token_env = "GRAFANA_TOKEN"
sentry_url = "{url}"
sentry_org = "remilia"
sentry_project = ["server", "identity"]
sentry_token_env = "SENTRY_AUTH_TOKEN"
webhook_url = "{url}/chat"
environment = "sandbox-e2e"
timeout = 2
"""
    path = sb.hosts_file(tmp_path, extra=extra)
    return {
        "FABRIC_HOSTS_FILE": str(path),
        "GRAFANA_TOKEN": GRAFANA,
        "SENTRY_AUTH_TOKEN": SENTRY,
        "ZDD_SANDBOX_REGISTRY_PASSWORD": registry_token(),
    }


def facts(tmp_path: Path, name: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (tmp_path / f"{name}.env").read_text().splitlines())


def ids() -> dict[str, set[str]]:
    return {svc: {c.id for c in sb.containers(svc)} for svc in sb.APPS}


def test_a_deploy_runs_the_hooks_and_sends_every_marker(settled, tmp_path):
    version = sb.publish("server", "identity")
    with Receiver() as rx:
        env = setup(tmp_path, rx.url)
        res = sb.fab(
            "deploy",
            "--no-verify",
            "--wait",
            "--json",
            str(tmp_path / "d.json"),
            "--report",
            str(tmp_path / "d.html"),
            env=env,
        )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    pre, post = facts(tmp_path, "pre-deploy"), facts(tmp_path, "post-deploy")
    assert pre["ZDD_HOST"] == post["ZDD_HOST"] == "sandbox" and pre["ZDD_RUN"] == post["ZDD_RUN"]
    assert pre["ZDD_COMMAND"] == "deploy" and pre["ZDD_PERFORMER"]
    assert pre["ZDD_SERVICES"] == "server property identity profile-server"  # before the plan: configured
    assert "server=" in pre["ZDD_IMAGES"]
    assert post["ZDD_SERVICES"] == "server identity" and post["ZDD_RESULT"] == "ok"
    assert post["ZDD_RUNTIME"].isdigit() and post["ZDD_IMAGES"].startswith("server=")
    assert "[sandbox] pre-deploy: pre-deploy ran" in out and "[sandbox] post-deploy: post-deploy ran" in out
    # the markers, as the receiver got them
    (ann,) = rx.to("/api/annotations")
    assert ann.authorization == f"Bearer {GRAFANA}"
    assert ann.body["tags"] == ["deploy", "sandbox", "server", "identity"] and "text" in ann.body
    assert ann.body["time"] < ann.body["timeEnd"]
    (rel,) = [r for r in rx.requests if r.path == "/api/0/organizations/remilia/releases/"]
    release = post["ZDD_RELEASE"]
    assert rel.authorization == f"Bearer {SENTRY}"
    assert rel.body["version"] == release and rel.body["projects"] == ["server", "identity"]
    (dep,) = rx.to(f"/api/0/organizations/remilia/releases/{quote(release, safe='')}/deploys/")
    assert dep.body["environment"] == "sandbox-e2e" and dep.authorization == f"Bearer {SENTRY}"
    (chat,) = rx.to("/chat")
    assert chat.body["text"].startswith("[sandbox] deploy: ok in ") and "server, identity" in chat.body["text"]
    assert chat.authorization == ""
    # no token anywhere: output, JSON, HTML, the host's journal
    journal = sb.as_host_user("cat ~/.zdd/journal/*.jsonl").stdout
    assert post["ZDD_RUN"] in journal
    for text in (out, (tmp_path / "d.json").read_text(), (tmp_path / "d.html").read_text(), journal):
        for token in (GRAFANA, SENTRY, env["ZDD_SANDBOX_REGISTRY_PASSWORD"]):
            assert token not in text
    doc = json.loads((tmp_path / "d.json").read_text())
    notify = next(s for s in doc["hosts"][0]["steps"] if s["name"] == "notify")
    assert notify["status"] == "ok", notify
    assert {c.version for svc in ("server", "identity") for c in sb.containers(svc)} == {version}


def test_a_failing_pre_deploy_changes_no_container_and_names_the_hook(settled, tmp_path):
    sb.publish("property")
    before = ids()
    journal = sb.as_host_user("cat ~/.zdd/journal/*.jsonl 2>/dev/null; true").stdout
    with Receiver() as rx:
        env = setup(tmp_path, rx.url, pre="echo 'change freeze until Monday' >&2; exit 3")
        res = sb.fab("deploy", "--no-verify", env=env)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "hook pre-deploy failed (exit 3): change freeze until Monday" in out
    assert ids() == before
    assert rx.requests == [] and not (tmp_path / "post-deploy.env").exists()
    assert sb.as_host_user("cat ~/.zdd/journal/*.jsonl 2>/dev/null; true").stdout == journal  # no run, no lock


def test_with_the_receiver_down_the_deploy_succeeds_and_warns_once(settled, tmp_path):
    env = setup(tmp_path, f"http://127.0.0.1:{free_port()}")
    res = sb.fab("deploy", "--no-verify", env=env)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    warned = [ln for ln in out.splitlines() if ln.startswith("[sandbox] WARN")]
    assert len(warned) == 1 and warned[0].startswith("[sandbox] WARN notify"), out
    assert facts(tmp_path, "post-deploy")["ZDD_RESULT"] == "ok"
    for token in (GRAFANA, SENTRY):
        assert token not in out
    assert os.environ.get("GRAFANA_TOKEN") != GRAFANA  # the test's own environment was not changed


def test_a_canary_abort_is_marked_as_such(settled, tmp_path):
    """A release answering 500 is stopped at its first canary step: post-deploy hears
    ZDD_RESULT=aborted, the annotation is tagged aborted, the chat message says so, and no
    Sentry deploy is recorded for a release that never carried the traffic."""
    before = ids()
    good = {svc: [c.id for c in sb.containers(svc)] for svc in sb.APPS}  # in order, for restore_latest
    sb.publish("--fail-after", "0", "server", "property")  # tier 1
    try:
        with Receiver() as rx:
            env = setup(tmp_path, rx.url)
            text = Path(env["FABRIC_HOSTS_FILE"]).read_text()
            canary = "\n[hosts.sandbox.canary]\nstep_seconds = 4\nmin_requests = 5\nmax_error_rate = 0.01\n"
            Path(env["FABRIC_HOSTS_FILE"]).write_text(text + canary)
            probe = sb.Verify("--host", "sandbox", json_path=tmp_path / "verify.json")  # the canary's traffic
            res = sb.fab("deploy", "--no-verify", "--canary", "10", env=env)
            probe.stop()
    finally:
        sb.restore_latest(good)
    out = res.stdout + res.stderr
    assert res.returncode == 1 and "canary: " in out, out
    assert ids() == before  # the old containers serve; the new ones were removed
    assert facts(tmp_path, "post-deploy")["ZDD_RESULT"] == "aborted"
    (ann,) = rx.to("/api/annotations")
    assert ann.body["tags"][-1] == "aborted", ann.body
    (chat,) = rx.to("/chat")
    assert "aborted" in chat.body["text"], chat.body
    assert not [r for r in rx.requests if r.path.endswith("/deploys/")]
    for token in (GRAFANA, SENTRY):
        assert token not in out
