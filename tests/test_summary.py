"""`inv summary deploy.json`: the deploy's JSON report as Markdown for a CI job summary."""

from __future__ import annotations

import pytest
from invoke import Config, Context
from invoke.exceptions import Exit

import tasks as inv_tasks
from fabfile import outcome
from fabfile.progress import StepRecord
from tests.fakes import deploy_report, deploy_result


@pytest.fixture
def report_file(tmp_path):
    doc = outcome.document("deploy", [deploy_result(deploy_report()), outcome.not_run("reminet-prod", "deploy")])
    path = tmp_path / "deploy.json"
    outcome.write_json(path, doc)
    return path


def summary(path) -> str:
    inv_tasks.summary(Context(Config()), str(path))


def test_markdown_table_across_hosts_then_each_host(report_file, capsys):
    summary(report_file)
    md = capsys.readouterr().out
    lines = md.splitlines()
    assert lines[0].startswith("### deploy on 2 hosts: FAILED in 13.0s")
    assert lines[2:6] == [
        "| host | result | time | failed requests | error |",
        "| --- | --- | ---: | ---: | --- |",
        "| reminet-staging | failed | 13.0s | 3 of 480 | deploy failed: identity: not healthy |",
        "| reminet-prod | not run |  |  |  |",
    ]
    assert "#### reminet-staging: failed in 13.0s" in lines
    assert "#### reminet-prod" not in md
    assert any(ln.startswith("**verify: FAIL** 3 of 480 requests failed") for ln in lines)
    assert any(ln.startswith("switched to the new containers (UTC): server ") for ln in lines)
    assert "<details><summary>4 steps</summary>" in lines
    assert "| rollout server, property | ok | 4.9s | server 1 → 1, property 1 → 1; healthy and switched |" in lines


def test_cells_cannot_break_the_table(tmp_path, capsys):
    r = outcome.HostResult(
        "h",
        "deploy",
        started_at=1.0,
        ended_at=2.0,
        steps=[StepRecord("pull", "failed", "a | b\nc <img src=x>", 0.1, 1.0)],
    )
    path = tmp_path / "d.json"
    outcome.write_json(path, outcome.document("deploy", [r]))
    summary(path)
    assert "| pull | failed | 0.1s | a \\| b c &lt;img src=x> |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "summary: cannot read "),
        ("not json", "is not JSON"),
        ('{"verdict": "0 of 10 requests failed"}', "is not a zdd report (deploy --json)"),
    ],
)
def test_a_file_that_is_not_a_report_is_one_line(tmp_path, content, message):
    path = tmp_path / "d.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(Exit) as e:
        summary(path)
    assert e.value.code == 2 and message in e.value.message and "\n" not in e.value.message
