"""The example GitHub Actions workflows: valid against GitHub's workflow schema, and every
`fab`/`inv` command line in them parses with the real task collections' own CLI parser."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from fabric.main import program as fab_program
from invoke import Program
from invoke.exceptions import ParseError
from invoke.parser import Parser, ParserContext
from ruamel.yaml import YAML  # comes with check-jsonschema

import fabfile
import tasks as inv_tasks

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "github-actions"
WORKFLOWS = sorted(EXAMPLES.glob("*.yaml"))
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
HOST = {"deploy-staging.yaml": "reminet-staging", "deploy-production.yaml": "reminet-prod"}


def load(path: Path) -> dict:
    return YAML(typ="safe").load(path.read_text())


def steps(path: Path) -> list[dict]:
    return [step for job in load(path)["jobs"].values() for step in job["steps"]]


def command_lines(run: str) -> list[list[str]]:
    """The `fab`/`inv` commands of a run: block, as argv (continuations joined, redirections and
    what follows `;`, `&&`, `||` or `|` cut off)."""
    out = []
    for line in run.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        for i, word in enumerate(words):
            if word in ("fab", "inv") and (i == 0 or words[i - 1] in (";", "&&", "||", "|", "then", "do")):
                argv = []
                for w in words[i:]:
                    if w in (";", "&&", "||", "|") or w.startswith(">") or w.startswith("<"):
                        break
                    argv.append(w)
                out.append(argv)
    return out


def parser_for(tool: str) -> Parser:
    """The CLI parser `fab` or `inv` builds for this repository's tasks."""
    if tool == "fab":
        core, contexts = fab_program.core_args() + fab_program.task_args(), fabfile.ns.to_contexts()
    else:
        prog = Program()
        core, contexts = prog.core_args() + prog.task_args(), inv_tasks.ns.to_contexts()
    return Parser(initial=ParserContext(args=core), contexts=contexts)


def parse(argv: list[str]) -> list:
    """Parse like the program would; ParseError for an unknown task, flag or extra word."""
    result = parser_for(argv[0]).parse_argv(argv[1:])
    if len(result) < 2:
        raise ParseError(f"no task in {shlex.join(argv)}")
    return result


def all_commands() -> list[tuple[str, list[str]]]:
    return [
        (path.name, argv)
        for path in WORKFLOWS
        for step in steps(path)
        if "run" in step
        for argv in command_lines(step["run"])
    ]


def test_both_workflows_exist():
    assert [p.name for p in WORKFLOWS] == ["deploy-production.yaml", "deploy-staging.yaml"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_valid_against_githubs_workflow_schema(path):
    assert CHECK_JSONSCHEMA.exists(), "check-jsonschema is in the test extra: scripts/bootstrap.sh installs it"
    res = subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_fab_and_inv_command_names_real_tasks_and_flags():
    commands = all_commands()
    assert {argv[0] for _, argv in commands} == {"fab", "inv"}
    for name, argv in commands:
        try:
            parse(argv)
        except ParseError as e:
            pytest.fail(f"{name}: {shlex.join(argv)}: {e}")


@pytest.mark.parametrize(
    "argv",
    [
        "fab -H h deploy --jsn deploy.json",  # a misspelt flag
        "fab -H h deploi",  # an unknown task
        "fab -H h deploy --strict extra",  # a stray word
        "inv summary",  # its file is missing
        "inv sumary deploy.json",
    ],
)
def test_the_check_catches_wrong_command_lines(argv):
    with pytest.raises(ParseError):
        parse(shlex.split(argv))


def test_command_lines_are_cut_at_redirections_and_operators():
    assert command_lines('inv summary deploy.json >> "$GITHUB_STEP_SUMMARY"') == [["inv", "summary", "deploy.json"]]
    assert command_lines("echo hi && fab -H a \\\n  deploy --strict || true") == [
        ["fab", "-H", "a", "deploy", "--strict"]
    ]
    assert command_lines("pip install fabric  # fab later") == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_the_deploy_as_the_issue_has_it(path):
    deploys = [argv for name, argv in all_commands() if name == path.name and argv[0] == "fab"]
    host = HOST[path.name]
    assert deploys == [["fab", "-H", host, "deploy", "--strict", "--json", "deploy.json", "--report", "deploy.html"]]
    (ctx,) = [c for c in parse(deploys[0]) if c.name == "deploy"]
    assert ctx.as_kwargs["strict"] and ctx.as_kwargs["json"] == "deploy.json"
    deploy_step = next(s for s in steps(path) if "fab -H" in s.get("run", ""))
    assert deploy_step["env"] == {
        "GH_PACKAGES_TOKEN": "${{ secrets.GH_PACKAGES_TOKEN }}",
        "GH_ACTOR": "${{ github.actor }}",
        # the release markers' tokens (hosts.toml's notify.*_env), as secrets
        "GRAFANA_TOKEN": "${{ secrets.GRAFANA_TOKEN }}",
        "SENTRY_AUTH_TOKEN": "${{ secrets.SENTRY_AUTH_TOKEN }}",
        "CHAT_WEBHOOK_URL": "${{ secrets.CHAT_WEBHOOK_URL }}",
    }
    assert "${{" not in deploy_step["run"]  # secrets reach fab through env, never inline


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_secrets_host_key_summary_and_artifact(path):
    text = path.read_text()
    wf = load(path)
    (job,) = wf["jobs"].values()
    assert wf["concurrency"]["cancel-in-progress"] is False
    assert job["environment"] == ("production" if "production" in path.name else "staging")
    assert wf["concurrency"]["group"].endswith(job["environment"])
    assert "StrictHostKeyChecking" not in text and "ssh-keyscan" not in text.split("\njobs:")[1]
    key_step = next(s for s in job["steps"] if "known_hosts" in s.get("run", ""))
    assert key_step["env"]["SSH_KEY"] == "${{ secrets.DEPLOY_SSH_KEY }}"
    assert "chmod 600 ~/.ssh/zdd_deploy_key" in key_step["run"] and "umask 077" in key_step["run"]
    assert f"Host {HOST[path.name]}" in key_step["run"]
    assert "${{" not in key_step["run"]  # secrets and variables reach the script through env, never inline
    summary = next(s for s in job["steps"] if "GITHUB_STEP_SUMMARY" in s.get("run", ""))
    assert summary["if"].startswith("always()")
    upload = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["if"] == "always()"
    assert set(upload["with"]["path"].split()) == {"deploy.html", "deploy.json"}
