"""The journal (fabfile/journal.py): runs read back from the host's events, the unfinished run,
the plan's images, no secret in any event; and what a deploy does with an interrupted run:
recovers it (recover.sh), takes over the lock of a zdd on this machine that is gone, and
refuses one held from elsewhere."""

from __future__ import annotations

import json
import re
import shlex
import socket

import pytest

from fabfile import journal, locking
from fabfile.plan import image_table, make_plan, parse_survey
from fabfile.runner import StepFailed
from tests.fakes import (
    FakeExecutor,
    cid,
    dead_pid,
    deploy,
    deploy_host,
    fail,
    fake_session,
    image_id,
    image_listing,
    journal_text,
    ok,
    run_events,
    sandbox_containers,
    sandbox_survey,
    survey_head,
    survey_text,
)

TOKEN = "s3cr3t-t0ken"
R1, R2, R3 = "20250101-100000-1", "20250102-100000-2", "20250103-100000-3"
OLD = {"server": cid("a")[:12], "property": cid("c")[:12], "identity": cid("e")[:12]}


@pytest.fixture(autouse=True)
def token(monkeypatch):
    monkeypatch.setenv("ZDD_SANDBOX_REGISTRY_PASSWORD", TOKEN)


# --- parse, unfinished ---------------------------------------------------------------------------


def test_parse_groups_events_by_run_with_each_tiers_progress():
    text = (
        journal_text(
            run_events(
                R1,
                images={"server": ("sha256:01", "sha256:02")},
                tiers=[(41, ["server", "property"], ["a1", "c1"], ("new", "switched", "retired"))],
            ),
            run_events(
                R2,
                kind="rollback to " + R1,
                tiers=[(51, ["server"], ["a2"], ("new", "undone")), (52, ["identity"], [], ("new", "switched"))],
                result=None,
            ),
        )
        + "not json\n"
        + json.dumps({"event": "orphan"})
        + "\n"
        + json.dumps({"run": "no-start", "event": "end"})
        + "\n"
    )
    r1, r2 = journal.parse(text)
    assert (r1.run, r1.kind, r1.ok, r1.end["result"]) == (R1, "deploy", True, "ok")
    assert r1.images_after() == {"server": "sha256:02"}
    [t] = r1.tiers
    assert (t.pid, t.services, t.old, t.switched, t.retired, t.undone, t.finished) == (
        "41",
        ["server", "property"],
        ["a1", "c1"],
        True,
        True,
        False,
        True,
    )
    assert (r2.kind, r2.end, r2.ok) == ("rollback to " + R1, None, False)
    undone, switched = r2.tiers
    assert (undone.undone, undone.switched, undone.finished) == (True, False, True)
    assert (switched.switched, switched.retired, switched.finished, switched.old) == (True, False, False, [])


def test_unfinished_is_the_last_run_that_never_ended_and_not_ones_own():
    runs = journal.parse(journal_text(run_events(R1, result=None), run_events(R2), run_events(R3, result=None)))
    assert journal.unfinished(runs).run == R3
    assert journal.unfinished(runs, own=R3).run == R1  # the run now starting is not someone else's
    assert journal.unfinished(journal.parse(journal_text(run_events(R1), run_events(R2, result="failed")))) is None
    assert journal.unfinished([]) is None


# --- the plan's images -----------------------------------------------------------------------------


def test_plan_event_before_and_after_images():
    state = parse_survey(survey_text(sandbox_containers()), "caddy")
    images = image_table(image_listing(2))
    images["127.0.0.1:15000/zdd-sandbox/server:latest"] = image_id("server", 1)  # server: nothing new
    plans = make_plan(["server", "property"], state, images)
    event = journal.plan_event(R1, state, plans, images)
    server, prop = event["services"]["server"], event["services"]["property"]
    assert (event["run"], event["event"]) == (R1, "plan")
    assert (prop["roll"], prop["before"], prop["after"], prop["old"]) == (
        True,
        [image_id("property", 1)],
        image_id("property", 2),
        [OLD["property"]],
    )
    assert prop["ref"] == "127.0.0.1:15000/zdd-sandbox/property:latest"
    assert (server["roll"], server["before"], server["after"]) == (
        False,
        [image_id("server", 1)],
        image_id("server", 1),
    )
    assert json.loads(journal.line(event)) == event


# --- no secret in the journal ----------------------------------------------------------------------


def journal_sent(fake: FakeExecutor) -> list[dict]:
    """Every journal line zdd sent the host: on the stdin of lock.sh and finish.sh, and in tier.sh's
    conversations."""
    lines = [
        x
        for c in fake.calls
        if c.stdin and ("lock.sh" in c.command or "finish.sh" in c.command)
        for x in c.stdin.splitlines()
    ]
    lines += [x.removeprefix("journal ") for conv in fake.tiers for x in conv.sent if x.startswith("journal ")]
    return [json.loads(x) for x in lines]


def test_no_event_of_a_deploy_holds_the_registry_token():
    fake = deploy_host(version=2)
    s, out = fake_session(fake)
    deploy(s)
    assert TOKEN == fake.calls[fake.index("pull.sh")].stdin  # the token did reach the login
    events = journal_sent(fake)
    assert sorted(e["event"] for e in events) == ["end", "plan", "start"]
    (run,) = {e["run"] for e in events}  # one run
    assert TOKEN not in json.dumps(events)
    start = journal.start_event(run, "deploy")
    end = journal.end_event(run, "failed", 1.0, [{"name": "pull", "detail": "x"}], {"failures": 0}, "boom")
    assert TOKEN not in journal.line(start) + journal.line(end)
    assert start["who"] == journal.who() and end["error"] == "boom"


# --- a deploy after an interrupted run ---------------------------------------------------------------


def interrupted_run() -> list[dict]:
    """A deploy that died in its second tier, before the switch (its first tier is done)."""
    return run_events(
        R1,
        tiers=[
            (4241, ["server", "property"], [OLD["server"], OLD["property"]], ("new", "switched", "retired")),
            (4242, ["identity"], [OLD["identity"]], ("new",)),
        ],
        result=None,
    )


def test_deploy_recovers_an_interrupted_run_then_surveys_again():
    half = sandbox_containers(extra={"identity": 1})  # the interrupted tier's new identity container, running
    next(c for c in half if c["Id"] == cid("e1"))["Image"] = image_id("identity", 2)
    before = survey_head(sandbox_survey(half), journal=interrupted_run())
    fake = deploy_host(
        [before, sandbox_survey()],
        ("recover.sh", ok(f"recovered identity: removed the new containers: {cid('e1')[:12]}\n")),
    )
    s, out = fake_session(fake)
    deploy(s)
    survey1, lock, recover, survey2 = (
        fake.index("survey.sh"),
        fake.index("lock.sh acquire"),
        fake.index("recover.sh"),
        fake.index("survey.sh", after=0),
    )
    assert survey1 < lock < recover < survey2 < fake.index("pull.sh") < fake.index("finish.sh")
    # only the unfinished tier, as the journal left it: pid, not switched, its services and old containers
    assert (
        f"recover.sh project {R1} 1 4242 '' identity {OLD['identity']} '' 1700000002 -f docker-compose.yaml"
        in fake.calls[recover].command
    )
    rec = next(r for r in s.report.steps if r.name == "recover")
    assert rec.status == "ok" and rec.detail.startswith(
        f"run {R1} (deploy, alice@laptop) was interrupted; recovered identity: removed the new containers"
    )
    # planned on the state read after the recovery: nothing changed, nothing rolls
    assert fake.tiers == [] and out.getvalue().count("skip, unchanged") == 4


def test_a_run_that_ended_with_a_tier_it_never_heard_switch_is_finished_by_the_next():
    """Its SSH connection dropped as its first tier switched: its client unwound as if before the
    switch and wrote its end, while the host's tier.sh went on. The next deploy recovers that tier
    (waits for the tier.sh, or retires the old containers) before it plans; runs before it are not
    looked at again."""
    dropped = run_events(
        R1,
        tiers=[(4241, ["server", "property"], [OLD["server"], OLD["property"]], ("new", "switched"))],
        result="failed",
    )
    older = run_events("20240101-000000-1", tiers=[(11, ["identity"], [OLD["identity"]], ("new", "switched"))])
    fake = deploy_host(
        [survey_head(sandbox_survey(), journal=older + dropped), sandbox_survey()],
        (
            "recover.sh",
            ok("recovered server,property: waited for its tier.sh to drain and retire the old containers\n"),
        ),
    )
    s, out = fake_session(fake)
    deploy(s)
    recover = fake.calls[fake.index("recover.sh")].command
    assert f"recover.sh project {R1} 1 4241 1 server,property " in recover
    assert fake.index("recover.sh") < fake.index("pull.sh") and out.getvalue().count("recover") >= 1
    assert len([c for c in fake.calls if "recover.sh" in c.command]) == 1  # not the older run
    rec = next(r for r in s.report.steps if r.name == "recover")
    assert rec.detail.startswith(f"run {R1} (deploy, alice@laptop) left a tier to the host; recovered server,property")


def test_a_run_that_ended_with_every_tier_finished_is_left_alone():
    done = run_events(R1, tiers=[(4241, ["server"], [OLD["server"]], ("new", "switched", "retired"))], result="ok")
    fake = deploy_host(survey_head(sandbox_survey(), journal=done))
    s, out = fake_session(fake)
    deploy(s)
    assert not fake.seen("recover.sh")


def test_a_failed_recovery_fails_the_deploy_and_releases_the_lock():
    fake = deploy_host(
        survey_head(sandbox_survey(), journal=interrupted_run()),
        (
            "recover.sh",
            fail(1, "recovered identity: its tier.sh 4242 did not stop within 30s\n", "docker: cannot connect"),
        ),
    )
    s, out = fake_session(fake)
    with pytest.raises(StepFailed, match=f"could not recover run {R1}: docker: cannot connect"):
        deploy(s)
    assert not fake.seen("pull.sh")
    finish = fake.calls[fake.index("finish.sh")]
    assert '"result": "failed"' in finish.stdin
    assert f"finish.sh project '{journal.who()} pid " in finish.command  # its own holder: the lock is released


def holder_line(host: str, pid: int, client: str | None = None) -> str:
    client = locking.client_id() if client is None else client
    return f"bob@{host} pid {pid}.{client} deploy since 2025-01-01 10:00:00 UTC (run {R1})"


def test_the_lock_of_a_zdd_on_this_machine_that_is_gone_is_taken_over():
    holder = holder_line(socket.gethostname(), dead_pid())
    fake = deploy_host(None, ("lock.sh acquire", fail(1, f"locked by: {holder}\n")))
    s, out = fake_session(fake)
    deploy(s)
    takeover = fake.calls[fake.index("lock.sh takeover")]
    assert takeover.command.endswith(" " + shlex.quote(holder))  # replaces exactly that holder
    assert [json.loads(x)["event"] for x in takeover.stdin.splitlines()] == ["start"]
    assert f"took over the lock of a zdd that is gone ({holder})" in s.notes
    assert fake.index("lock.sh acquire") < fake.index("lock.sh takeover") < fake.index("pull.sh")


@pytest.mark.parametrize(
    "holder",
    [
        holder_line("elsewhere.example", 1),
        holder_line(socket.gethostname(), 1),  # pid 1 never is gone
        # a CI runner elsewhere with this machine's host name: its pid means nothing here
        holder_line(socket.gethostname(), 999_999, client="0f0f0f0f-4026531836"),
        holder_line(socket.gethostname(), 999_999).replace(".", " ", 1),
    ],
    ids=["another machine", "a live process here", "same host name, another machine", "no machine id"],
)
def test_a_lock_that_may_still_be_held_is_not_taken_over(holder):
    fake = deploy_host(None, ("lock.sh acquire", fail(1, f"locked by: {holder}\n")))
    s, out = fake_session(fake)
    with pytest.raises(
        StepFailed,
        match=re.escape(
            f"another deploy holds the lock (locked by: {holder}); if it is gone, run: fab -H sandbox unlock"
        ),
    ):
        deploy(s)
    assert len(fake.calls) == 2 and fake.matching("lock.sh acquire") == [1]  # the survey, the lock: nothing else


def test_a_deploy_that_waited_for_the_lock_plans_from_the_host_as_it_is_then():
    """Back to back: the run before still held the lock (its restore job); once it is ours,
    the host is read again, so the plan never counts or pins the old run's draining containers."""
    fake = deploy_host(None, ("lock.sh acquire", ok("waited for the previous deploy's job 42\nlocked\n")))
    s, out = fake_session(fake)
    deploy(s)
    surveys = fake.matching("survey.sh")
    assert len(surveys) == 2 and surveys[0] < fake.index("lock.sh acquire") < surveys[1] < fake.index("pull.sh")
    assert "waited for the previous deploy's job 42" in s.notes


def test_a_deploy_that_got_the_lock_at_once_reads_the_host_once():
    fake = deploy_host()
    s, out = fake_session(fake)
    deploy(s)
    assert len(fake.matching("survey.sh")) == 1


def test_a_lock_that_cannot_be_taken_on_a_full_disk_stops_the_run_in_one_line():
    fake = deploy_host(
        None,
        (
            "lock.sh acquire",
            fail(
                3, "cannot write the journal /home/u/.zdd/journal/k.jsonl (disk full?): the deploy lock was not taken\n"
            ),
        ),
    )
    s, out = fake_session(fake)
    with pytest.raises(
        StepFailed,
        match=r"^cannot write the journal .*the deploy lock was not taken; nothing was "
        r"changed$",
    ):
        deploy(s)
    assert len(fake.calls) == 2  # the survey and the lock: nothing else ran
