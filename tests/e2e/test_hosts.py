"""Several hosts per run, and the example workflows' own command lines, on the sandbox: a
second sandbox project stands in for a second host."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
from dotenv import dotenv_values

from tests import sandbox as sb
from tests.test_workflows import command_lines
from tests.test_workflows import steps as workflow_steps

SECOND = sb.STATE / "home" / "remilia2"
WORKFLOW = sb.ROOT / "examples" / "github-actions" / "deploy-staging.yaml"


@pytest.fixture(scope="module")
def second_project():
    """~/remilia2: the sandbox's stack again, as its own compose project (Caddy on 18082)."""
    (SECOND / "caddy").mkdir(parents=True, exist_ok=True)
    compose = (sb.STACK / "docker-compose.yaml").read_text().replace("127.0.0.1:18080:80", "127.0.0.1:18082:80")
    (SECOND / "docker-compose.yaml").write_text(compose)
    (SECOND / "caddy" / "Caddyfile").write_text((sb.STACK / "caddy" / "Caddyfile").read_text())
    subprocess.run(["chown", "-R", "zddsbx", str(SECOND)], check=True)
    up = subprocess.run(
        ["su", "-s", "/bin/sh", "zddsbx", "-c", "cd ~/remilia2 && docker compose up -d --wait --wait-timeout 90"],
        capture_output=True,
        text=True,
    )
    assert up.returncode == 0, up.stderr
    yield
    subprocess.run(
        ["su", "-s", "/bin/sh", "zddsbx", "-c", "cd ~/remilia2 && docker compose down -v -t 2"], capture_output=True
    )
    subprocess.run(["rm", "-rf", str(SECOND)])


def _two_hosts(tmp_path):
    text = (sb.ROOT / "hosts.toml").read_text()
    block = text[text.index("[hosts.sandbox]") :]
    second = block.replace("[hosts.sandbox", "[hosts.sandbox2").replace('dir = "~/remilia"', 'dir = "~/remilia2"')
    second = re.sub(r"(?s)\[hosts\.sandbox2\.verify\].*", "[hosts.sandbox2.verify]\nenabled = false\n", second)
    path = tmp_path / "hosts.toml"
    path.write_text(text + "\n" + second)
    return {"FABRIC_HOSTS_FILE": str(path)}


def _ids(project: str) -> list[str]:
    return sorted(sb.docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}").split())


def test_several_hosts_stop_at_the_first_failure_with_one_summary(settled, second_project, tmp_path):
    env = _two_hosts(tmp_path)
    sb.publish("--broken", "server")
    first_host_before, second_host_before = _ids("remilia2"), _ids("remilia")
    try:
        res = sb.run(
            [
                str(sb.BIN / "fab"),
                "-H",
                "sandbox2,sandbox",
                "deploy",
                "--no-verify",
                "--json",
                str(tmp_path / "deploy.json"),
            ],
            env=env,
            timeout=600,
        )
        assert res.returncode != 0, res.stdout
        assert "Traceback" not in res.stdout + res.stderr
        # the second host was not touched: same containers, and zdd never connected to it
        assert _ids("remilia") == second_host_before
        assert "[sandbox] ok   validate" not in res.stdout
        # the first host failed and kept its old containers serving
        assert _ids("remilia2") == first_host_before
        # one summary across hosts, at the end, naming both
        tail = res.stdout[res.stdout.rindex("sandbox2") :]
        assert re.search(r"sandbox\s+not run", tail), res.stdout
        doc = json.loads((tmp_path / "deploy.json").read_text())
        assert [(h["host"], h["result"]) for h in doc["hosts"]] == [("sandbox2", "failed"), ("sandbox", "not run")]
    finally:
        sb.publish("server")


def test_the_workflow_deploy_command_line_runs_against_the_sandbox(settled, tmp_path):
    """The staging workflow's own `fab` and `inv summary` lines, with the sandbox for the host."""
    commands = [argv for step in workflow_steps(WORKFLOW) if "run" in step for argv in command_lines(step["run"])]
    [deploy] = [a for a in commands if a[0] == "fab"]
    [summary] = [a for a in commands if a[:2] == ["inv", "summary"]]
    assert deploy[:3] == ["fab", "-H", "reminet-staging"] and "--json" in deploy and "--report" in deploy
    sb.publish("property")
    # as in the workflow, the token comes from the environment (the job's secrets), not .env
    token = dotenv_values(sb.ROOT / ".env")["ZDD_SANDBOX_REGISTRY_PASSWORD"]
    env = {**os.environ, "FABRIC_HOSTS_FILE": str(sb.ROOT / "hosts.toml"), "ZDD_SANDBOX_REGISTRY_PASSWORD": token}
    res = subprocess.run(
        [str(sb.BIN / "fab"), "-r", str(sb.ROOT), "-H", "sandbox", *deploy[3:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads((tmp_path / "deploy.json").read_text())
    assert doc["result"] == "ok" and doc["hosts"][0]["failed_requests"] == 0, doc["hosts"][0]
    assert "<svg" in (tmp_path / "deploy.html").read_text()
    md = subprocess.run(
        [str(sb.BIN / "inv"), "-r", str(sb.ROOT), *summary[1:]], cwd=tmp_path, capture_output=True, text=True
    )
    assert md.returncode == 0, md.stderr
    assert "sandbox" in md.stdout and "0 of" in md.stdout, md.stdout
