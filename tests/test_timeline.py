"""A tier's timeline: tier.sh's `mark` lines parsed, the phases per service, the summary line and
the tier in the --json report."""

from __future__ import annotations

import json

import pytest

from fabfile import outcome
from fabfile.timeline import Mark, Phase, host_line, parse_mark
from tests.fakes import TIER_BEGIN, tier_timeline

# --- parse_mark ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, mark",
    [
        ("mark 1764461234.517 healthy server 3f2a9c", Mark(1764461234.517, "healthy", "server", "3f2a9c")),
        ("mark 1764461234 begin", Mark(1764461234.0, "begin")),
        ("mark 1764461234.5 canary-10\n", Mark(1764461234.5, "canary-10")),
        ("mark 1764461234.5 up server", Mark(1764461234.5, "up", "server")),
        ("mark 1764461234.5 started server 3f2a more words", Mark(1764461234.5, "started", "server", "3f2a")),
        ("mark 1764461234.5 what-next", Mark(1764461234.5, "what-next")),  # unknown: kept
    ],
)
def test_a_mark_line(line, mark):
    assert parse_mark(line) == mark


@pytest.mark.parametrize(
    "line",
    [
        "",
        "mark",
        "mark 1764461234.5",
        "mark soon begin",
        "mark -1 begin",
        "mark 1.2.3 begin",
        "mark nan begin",
        "mark inf begin",
        "mark 1_764_461_234 begin",
        "mark .5 begin",
        "marks 1764461234 begin",
        "pinned",
        "new server 3f2a zdd_default=172.18.0.9",
        "progress server: 0/1 healthy, 2 s of 60",
    ],
)
def test_other_lines_are_not_marks(line):
    assert parse_mark(line) is None


# --- phases ----------------------------------------------------------------------------------


def test_phases_of_a_two_service_tier():
    t = tier_timeline()
    assert t.origin == TIER_BEGIN and t.seconds == 7.0
    assert t.phases() == {
        "server": [
            Phase("pin", 0.0, 0.1),
            Phase("start", 0.15, 0.9),
            Phase("boot", 0.9, 1.9),
            Phase("wait", 1.9, 4.05),
            Phase("switch", 4.05, 4.25),  # no canary: from ready
            Phase("drain", 4.25, 5.35),
            Phase("stop", 5.36, 7.0),
        ],
        "property": [
            Phase("pin", 0.0, 0.1),
            Phase("start", 0.15, 1.25),
            Phase("boot", 1.25, 3.65),
            Phase("wait", 3.65, 4.05),
            Phase("switch", 4.05, 4.25),
            Phase("drain", 4.25, 5.35),
            Phase("stop", 5.36, 7.0),
        ],
    }
    assert t.slowest() == "property"
    assert t.line() == (
        "tier 1 server, property: pin 0.1s · start 1.1s · boot 2.4s · wait 0.4s · switch 0.2s · drain 1.1s"
        " · stop 1.6s (7.0s, slowest: property)"
    )


def test_a_failed_tier_has_the_phases_it_reached():
    t = tier_timeline(2, ["identity"], "mark 1000.0 begin\nmark 1000.125 pinned\nmark 1000.25 up\nfailed identity\n")
    assert t.phases() == {"identity": [Phase("pin", 0.0, 0.125)]}
    assert t.line() == "tier 2 identity: pin 0.1s (0.2s)"
    started = tier_timeline(2, ["identity"], "mark 1000 begin\nmark 1000.5 up\nmark 1001.5 started identity c1\n")
    assert started.phases() == {"identity": [Phase("start", 0.5, 1.5)]}  # never healthy: no boot, no wait


def test_a_tier_without_marks():
    t = tier_timeline(1, ["server"], "")
    assert t.origin is None and t.seconds is None and t.slowest() == ""
    assert t.phases() == {"server": []}
    assert t.line() == "tier 1 server: no marks from the host"
    assert t.to_dict() == {
        "tier": 1,
        "services": ["server"],
        "begin_at": None,
        "seconds": None,
        "marks": [],
        "phases": [],
    }


def test_canary_steps_between_ready_and_the_switch():
    t = tier_timeline(
        1,
        ["server"],
        "mark 100 begin\nmark 100.1 pinned\nmark 100.2 up\nmark 101 started server a\nmark 102 healthy server a\n"
        "mark 102.5 ready\nmark 102.6 canary-10\nmark 132.6 canary-50\nmark 162.75 switch\nmark 163 switched\n"
        "mark 165 drained\nmark 165.01 retired\n",
    )
    assert [p for p in t.phases()["server"] if p.phase in ("wait", "canary", "switch", "drain")] == [
        Phase("wait", 2.0, 2.5),
        Phase("canary", 2.5, 62.75),
        Phase("switch", 62.75, 63.0),
        Phase("drain", 63.0, 65.0),
    ]
    assert "stop" not in [p.phase for p in t.phases()["server"]]  # the old containers not seen gone
    assert t.line() == (
        "tier 1 server: pin 0.1s · start 0.8s · boot 1.0s · wait 0.5s · canary 60.2s · switch 0.2s · drain 2.0s (65.0s)"
    )


def test_without_a_healthcheck_the_wait_starts_at_started_and_unknown_marks_change_nothing():
    marks = "mark 10 up\nmark 11 started worker w1\nmark 11.5 started worker w2\nmark 12 ready\nmark 12.2 switched\n"
    t = tier_timeline(3, ["worker"], marks)
    assert t.origin == 10.0  # no begin: the first mark
    phases = [Phase("start", 0.0, 1.5), Phase("wait", 1.5, 2.0), Phase("switch", 2.0, 2.2)]
    assert t.phases() == {"worker": phases}  # the last container started decides
    odd = tier_timeline(3, ["worker"], marks + "mark 12.1 logs-shipped worker w1\n")
    assert odd.phases() == {"worker": phases}
    assert odd.to_dict()["marks"][-1] == {"t": 2.1, "what": "logs-shipped", "service": "worker", "container": "w1"}


def test_the_slowest_service_is_only_named_when_there_are_several():
    line = tier_timeline(1, ["server"], "mark 1 begin\nmark 1.5 up\nmark 2 started server a\n").line()
    assert line == "tier 1 server: start 0.5s (1.0s)"


# --- the JSON report -------------------------------------------------------------------------


def test_the_tiers_in_the_json_report():
    host = outcome.HostResult(
        "reminet-staging",
        "deploy",
        started_at=TIER_BEGIN - 20,
        ended_at=TIER_BEGIN + 30,
        timeline=[
            tier_timeline(),
            tier_timeline(
                2, ["identity"], "mark 1764461244.5 begin\nmark 1764461244.6 pinned\nmark 1764461244.75 up\n"
            ),
        ],
    ).fail("deploy failed: identity: not healthy", 1)
    doc = json.loads(json.dumps(outcome.document("deploy", [host, outcome.not_run("reminet-prod", "deploy")])))
    first, second = doc["hosts"][0]["timeline"]
    assert list(first) == ["tier", "services", "begin_at", "seconds", "marks", "phases"]
    assert (first["tier"], first["services"], first["begin_at"], first["seconds"]) == (
        1,
        ["server", "property"],
        "2025-11-30T00:07:14.000+00:00",
        7.0,
    )
    assert len(first["marks"]) == 16
    assert first["marks"][5] == {"t": 0.9, "what": "started", "service": "server", "container": "3f2a"}
    assert first["marks"][0] == {"t": 0.0, "what": "begin", "service": "", "container": ""}
    assert len(first["phases"]) == 14
    assert first["phases"][8] == {"service": "property", "phase": "start", "start": 0.15, "end": 1.25}
    assert [p["phase"] for p in first["phases"] if p["service"] == "server"] == [
        "pin",
        "start",
        "boot",
        "wait",
        "switch",
        "drain",
        "stop",
    ]
    assert second == {
        "tier": 2,
        "services": ["identity"],
        "begin_at": "2025-11-30T00:07:24.500+00:00",
        "seconds": 0.25,
        "marks": [
            {"t": 0.0, "what": "begin", "service": "", "container": ""},
            {"t": 0.1, "what": "pinned", "service": "", "container": ""},
            {"t": 0.25, "what": "up", "service": "", "container": ""},
        ],
        "phases": [{"service": "identity", "phase": "pin", "start": 0.0, "end": 0.1}],
    }
    assert doc["hosts"][1]["timeline"] is None  # not run


def test_a_host_without_marks_has_an_empty_timeline():
    doc = outcome.document("deploy", [outcome.HostResult("h", "deploy", started_at=1.0, ended_at=2.0)])
    assert doc["hosts"][0]["timeline"] == []


def test_host_line_reads_marks_and_a_containers_docker_times():
    """tier.sh's container line carries Docker's RFC 3339 times (nanoseconds, Z); Docker's zero
    time (never started) is no mark; any other line is not the timeline's."""
    assert host_line("mark 100.5 ready") == [Mark(100.5, "ready")]
    assert host_line("mark x ready") == []
    marks = host_line(
        "container server abc 2026-11-30T00:29:03.626628932Z 2026-11-30T00:29:04.7Z 2026-11-30T00:29:06.5Z"
        " 2026-11-30T00:29:07.5Z"
    )
    base = 1795998540.0  # 2026-11-30T00:29:00Z
    assert [(m.what, m.service, m.container, round(m.t - base, 3)) for m in marks] == [
        ("created", "server", "abc", 3.627),
        ("started", "server", "abc", 4.7),
        ("healthy", "server", "abc", 6.5),
    ]
    assert [m.what for m in host_line("container s c 2026-11-30T00:29:03Z 0001-01-01T00:00:00Z")] == ["created"]
    assert host_line("new server abc net=1.2.3.4") is None
    assert host_line("healthy after 3s") is None
