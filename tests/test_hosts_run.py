"""`fab -H a,b deploy`: one host after the other, stop at the first failure, one summary across
hosts at the end, one --json/--report file. Fabric's own program runs in-process; sessions and
the deploy's steps are fakes, so nothing connects anywhere."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from fabric.main import program
from invoke.exceptions import Exit

from fabfile import hosts_run, sequence, taskrun
from fabfile.config import load
from fabfile.outcome import HostResult
from fabfile.progress import Reporter
from fabfile.runner import Runner, StepFailed
from fabfile.session import Session
from tests.fakes import FakeExecutor, deploy_report, tier_timeline

ROOT = Path(__file__).resolve().parent.parent
HOSTS = load(ROOT / "hosts.toml")
TOKEN = "ghp_s3cr3t-packages-token"


class Hosts:
    """Fake sessions for the hosts of hosts.toml; which were opened and deployed, in order."""

    def __init__(self, fail: dict[str, str] | None = None, unreachable: tuple[str, ...] = (), marks: bool = False):
        self.fail = fail or {}
        self.unreachable = unreachable
        self.marks = marks  # the deploy's tier sends its marks, as compose_rollout records them
        self.opened: list[str] = []
        self.deployed: list[str] = []

    def open_session(self, c, dry_run=False, out=None) -> Session:
        name = c.original_host
        self.opened.append(name)
        if name in self.unreachable:
            raise Exit(f"[{name}] cannot connect over ssh: [Errno 111] Connection refused", code=1)
        return Session(name, HOSTS.host(name), Runner(FakeExecutor(), name, dry_run=dry_run), Reporter(name), cxn=c)

    def deploy(self, s: Session, engine, force=False, wait=False, verdict=None, hooks=True, canary=None, watch=None):
        self.deployed.append(s.name)
        with s.report.step("validate") as rec:
            rec.detail = "7 services in the compose project"
        with s.report.step("pull"):
            if self.fail.get(s.name) == "Ctrl-C":
                raise KeyboardInterrupt
            if s.name in self.fail:
                raise StepFailed(self.fail[s.name])
        if self.marks:
            s.report.timeline.append(tier_timeline())


@pytest.fixture
def hosts(monkeypatch):
    def make(**kw) -> Hosts:
        h = Hosts(**kw)
        monkeypatch.setattr(taskrun, "open_session", h.open_session)
        monkeypatch.setattr(sequence, "deploy", h.deploy)
        return h

    monkeypatch.setenv("GH_PACKAGES_TOKEN", TOKEN)
    monkeypatch.setenv("GH_ACTOR", "remilia-ci")
    monkeypatch.setattr(hosts_run, "_current", None)
    # fab's loader puts fabfile/ on sys.path and a fresh `fabfile` module in sys.modules: undo both after
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setitem(sys.modules, "fabfile", sys.modules["fabfile"])
    return make


def fab(*argv: str) -> int:
    """Run `fab ARGV` in this process, as the `fab` script does; its exit code."""
    try:
        program.run(["fab", "--search-root", str(ROOT), *argv])
    except SystemExit as e:
        return e.code
    return 0


def test_two_hosts_one_after_the_other_then_one_summary(hosts, capsys, tmp_path):
    h = hosts()
    assert fab("-H", "reminet-staging,reminet-prod", "deploy", "--json", str(tmp_path / "d.json")) == 0
    out = capsys.readouterr().out
    assert h.opened == h.deployed == ["reminet-staging", "reminet-prod"]
    # each host's own step lines and summary, then the one across hosts, once, at the very end
    assert out.index("[reminet-staging] deploy: ok") < out.index("[reminet-prod] ok   validate")
    assert out.count("deploy on 2 hosts") == 1
    tail = out[out.index("deploy on 2 hosts: ok") :].splitlines()
    assert tail[0].startswith("deploy on 2 hosts: ok in ")
    assert [ln.split()[:2] for ln in tail[3:]] == [["reminet-staging", "ok"], ["reminet-prod", "ok"]]
    doc = json.loads((tmp_path / "d.json").read_text())
    assert doc["result"] == "ok" and [x["host"] for x in doc["hosts"]] == ["reminet-staging", "reminet-prod"]


def test_the_first_failure_stops_the_run_and_later_hosts_are_untouched(hosts, capsys, tmp_path):
    h = hosts(fail={"reminet-staging": "pull failed: denied: permission_denied"})
    code = fab(
        "-H",
        "reminet-staging,reminet-prod",
        "deploy",
        "--json",
        str(tmp_path / "d.json"),
        "--report",
        str(tmp_path / "d.html"),
    )
    out, err = capsys.readouterr()
    assert code == 1
    assert h.opened == h.deployed == ["reminet-staging"]  # reminet-prod: no connection, no step
    assert "[reminet-prod]" not in out
    assert out.count("deploy on 2 hosts: FAILED") == 1
    rows = {ln.split()[0]: ln for ln in out[out.index("deploy on 2 hosts") :].splitlines()[3:]}
    assert rows["reminet-staging"].split()[1] == "failed"
    assert rows["reminet-staging"].endswith("deploy failed: pull failed: denied: permission_denied")
    assert rows["reminet-prod"].split()[1:] == ["not", "run"]
    assert err.strip() == "[reminet-staging] deploy failed: pull failed: denied: permission_denied"
    doc = json.loads((tmp_path / "d.json").read_text())
    assert (doc["result"], [x["result"] for x in doc["hosts"]]) == ("failed", ["failed", "not run"])
    assert doc["hosts"][1] == {
        "host": "reminet-prod",
        "title": "deploy",
        "result": "not run",
        **dict.fromkeys(doc["hosts"][0].keys() - {"host", "title", "result"}),
    }
    assert 'data-host="reminet-prod" data-result="not run"' in (tmp_path / "d.html").read_text()


def test_a_later_host_that_fails_ends_the_run_there(hosts, capsys):
    h = hosts(unreachable=("reminet-prod",))
    assert fab("-H", "reminet-staging,reminet-prod,sandbox", "deploy") == 1
    out, err = capsys.readouterr()
    assert h.opened == ["reminet-staging", "reminet-prod"] and h.deployed == ["reminet-staging"]
    assert out.count("deploy on 3 hosts: FAILED") == 1
    rows = {ln.split()[0]: ln for ln in out[out.index("deploy on 3 hosts") :].splitlines()[3:]}
    assert rows["reminet-prod"].split()[1] == "failed" and rows["reminet-prod"].endswith(
        "cannot connect over ssh: [Errno 111] Connection refused"
    )
    assert rows["sandbox"].split()[1:] == ["not", "run"]
    assert err.strip() == "[reminet-prod] cannot connect over ssh: [Errno 111] Connection refused"


def test_an_interrupted_host_is_the_last_one(hosts, capsys, tmp_path):
    h = hosts(fail={"reminet-staging": "Ctrl-C"})
    assert fab("-H", "reminet-staging,reminet-prod", "deploy", "--json", str(tmp_path / "d.json")) == 130
    assert h.opened == ["reminet-staging"]
    doc = json.loads((tmp_path / "d.json").read_text())
    assert (doc["result"], [x["result"] for x in doc["hosts"]]) == ("interrupted", ["interrupted", "not run"])
    assert doc["hosts"][0]["error"].startswith("deploy failed: interrupted: ")


def test_one_host_prints_no_summary_across_hosts(hosts, capsys, tmp_path):
    hosts()
    assert fab("-H", "reminet-staging", "deploy", "--json", str(tmp_path / "d.json")) == 0
    assert "deploy on 1 host" not in capsys.readouterr().out
    assert [x["host"] for x in json.loads((tmp_path / "d.json").read_text())["hosts"]] == ["reminet-staging"]


def test_the_json_never_holds_the_registry_token(hosts, capsys, tmp_path):
    hosts(fail={"reminet-staging": f"pull failed: login with {TOKEN} refused"})
    assert (
        fab("-H", "reminet-staging", "deploy", "--json", str(tmp_path / "d.json"), "--report", str(tmp_path / "d.html"))
        == 1
    )
    for name in ("d.json", "d.html"):
        text = (tmp_path / name).read_text()
        assert TOKEN not in text and "pull failed: login with *** refused" in text
    assert json.loads((tmp_path / "d.json").read_text())["hosts"][0]["steps"][1]["status"] == "failed"


def test_the_tiers_timeline_reaches_the_summary_the_json_and_the_page(hosts, capsys, tmp_path):
    hosts(marks=True)
    assert (
        fab("-H", "reminet-staging", "deploy", "--json", str(tmp_path / "d.json"), "--report", str(tmp_path / "d.html"))
        == 0
    )
    out = capsys.readouterr().out
    assert "  timeline (host clock, seconds from each tier's start):\n    tier 1 server, property: pin 0.1s" in out
    (tier,) = json.loads((tmp_path / "d.json").read_text())["hosts"][0]["timeline"]
    assert (tier["tier"], tier["seconds"], len(tier["phases"])) == (1, 7.0, 14)
    assert (tmp_path / "d.html").read_text().count('<g class="bar"') == 2


def test_a_json_file_that_cannot_be_written_is_one_line(hosts, capsys, tmp_path):
    hosts()
    assert fab("-H", "reminet-staging", "deploy", "--json", str(tmp_path / "no" / "d.json")) == 2
    assert capsys.readouterr().err.strip().startswith("deploy: cannot write ")


# --- the run registry on its own -------------------------------------------------------------


def result(host: str, ok: bool = True) -> HostResult:
    r = HostResult(host, "deploy")
    return r if ok else r.fail("deploy failed: x", 1)


def test_record_is_over_after_the_last_host_or_the_first_failure(monkeypatch):
    monkeypatch.setattr(hosts_run, "_current", None)
    assert hosts_run.record(result("a"), ["a", "b", "c"]) is None
    run = hosts_run.record(result("b", ok=False), ["a", "b", "c"])
    assert [(r.host, r.result) for r in run.everyone()] == [("a", "ok"), ("b", "failed"), ("c", "not run")]
    assert hosts_run.record(result("a"), ["a", "b"]) is None
    assert [r.host for r in hosts_run.record(result("b"), ["a", "b"]).everyone()] == ["a", "b"]


def test_record_without_a_host_list_is_a_run_of_one(monkeypatch):
    monkeypatch.setattr(hosts_run, "_current", None)
    assert [r.host for r in hosts_run.record(result("x"), []).everyone()] == ["x"]
    assert [r.host for r in hosts_run.record(result("b"), ["a", "b"]).everyone()] == ["b"]  # not next: alone


def test_aliases_as_fabric_keeps_them():
    assert [hosts_run.alias(h) for h in ("web", "deploy@web", "deploy@web:2222", "[::1]", "fe80::1")] == [
        "web",
        "web",
        "web",
        "::1",
        "fe80::1",
    ]


class FakeLoop:
    """The verify loop, already run: its report is the one the HTML tests draw."""

    def __init__(self, settings, **kw):
        self.settings = settings

    def start(self) -> FakeLoop:
        return self

    def stop(self):
        return deploy_report()


def test_the_json_shape_with_a_verify_loop(hosts, capsys, tmp_path, monkeypatch):
    from fabfile import verify as vloop

    monkeypatch.setattr(vloop, "BackgroundLoop", FakeLoop)
    monkeypatch.setenv("ZDD_SANDBOX_REGISTRY_PASSWORD", TOKEN)
    hosts()
    assert fab("-H", "sandbox", "deploy", "--strict", "--json", str(tmp_path / "d.json")) == 3
    doc = json.loads((tmp_path / "d.json").read_text())
    assert set(doc) == {"zdd_report", "title", "result", "started_at", "ended_at", "duration_s", "hosts"}
    (h,) = doc["hosts"]
    assert set(h) == {
        "host",
        "title",
        "result",
        "dry_run",
        "started_at",
        "ended_at",
        "duration_s",
        "steps",
        "switches",
        "timeline",
        "notes",
        "cost",
        "verdict",
        "verify_ok",
        "requests",
        "failed_requests",
        "verify",
        "error",
        "exit_code",
    }
    assert (h["host"], h["result"], h["exit_code"]) == ("sandbox", "failed", 3)
    assert h["error"] == "deploy: 3 request(s) failed during the deploy (strict)"
    assert (h["requests"], h["failed_requests"], h["verify_ok"]) == (480, 3, False)
    assert h["verdict"] == h["verify"]["verdict"] and len(h["verify"]["urls"]) == 2
    assert h["cost"] == {"remote_commands": 0, "proxy_loads": 0}
    assert [s["name"] for s in h["steps"]] == ["validate", "pull"]
    assert h["timeline"] == []  # the fake deploy's host sent no marks
    assert set(h["steps"][0]) == {"name", "status", "seconds", "detail", "started_at", "ended_at"}
    assert doc["started_at"] == h["started_at"] < h["ended_at"] == doc["ended_at"]
    assert "[sandbox] deploy: 3 request(s) failed during the deploy (strict)" in capsys.readouterr().err
