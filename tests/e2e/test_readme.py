"""Every shell command in README's code blocks runs (`reminet-staging` replaced by the
sandbox), so README cannot drift from the code."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests import sandbox as sb

README = (sb.ROOT / "README.md").read_text()


def readme_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", README, re.S)
    return [line.split("  #")[0].strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_the_readme_commands_are_these():
    # a new command in README needs a case below
    assert readme_commands() == [
        "scripts/demo.sh",
        "scripts/test.sh",
        "python3 -m venv .venv && .venv/bin/pip install -e .",
        ".venv/bin/fab -H reminet-staging deploy --dry-run",
        ".venv/bin/fab -H reminet-staging deploy",
        *SWARM,
    ]


# README's Docker Swarm block: tests/e2e/test_swarm.py and test_swarm_engine.py run these
# (scripts/test.sh runs swarm-up)
SWARM = [
    "scripts/sandbox.sh swarm-up --nodes 2",
    "scripts/sandbox.sh publish",
    ".venv/bin/fab -H sandbox-swarm deploy",
    ".venv/bin/fab -H sandbox-swarm rollback",
    ".venv/bin/fab -H sandbox-swarm status",
    ".venv/bin/fab -H sandbox-swarm drain-node zdd-node2",  # test_swarm_nodes.py
    "scripts/sandbox.sh swarm-down",
]


def test_ci_runs_the_readme_test_command():
    # scripts/test.sh is the command running this very test: CI must call exactly it
    assert "exec scripts/test.sh" in (sb.ROOT / ".ci" / "run").read_text()


def test_demo(settled):
    res = subprocess.run(["scripts/demo.sh"], cwd=sb.ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"verify: 0 of [\d,]+ requests failed", res.stdout), res.stdout


@pytest.mark.parametrize("line", [c for c in readme_commands() if c.startswith(".venv/bin/fab") and c not in SWARM])
def test_fab_commands_against_the_sandbox(settled, line):
    sb.publish("profile-server")
    res = subprocess.run(
        line.replace("reminet-staging", "sandbox"), shell=True, cwd=sb.ROOT, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_install_in_a_fresh_checkout(tmp_path):
    files = subprocess.run(["git", "ls-files", "-z"], cwd=sb.ROOT, capture_output=True, text=True, check=True).stdout
    archive = subprocess.run(
        ["tar", "-C", str(sb.ROOT), "--null", "-T", "-", "-cf", "-"],
        input=files.encode(),
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-C", str(tmp_path), "-xf", "-"], input=archive, check=True)
    [line] = [c for c in readme_commands() if "pip install" in c]
    res = subprocess.run(
        line,
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    listed = subprocess.run(
        [str(tmp_path / ".venv" / "bin" / "fab"), "--list"], cwd=tmp_path, capture_output=True, text=True
    )
    assert listed.returncode == 0 and "deploy" in listed.stdout, listed.stderr
