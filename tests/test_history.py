"""history and status (fabfile/history.py) from a journal and a survey, and which run a
rollback goes back to."""

from __future__ import annotations

import time

import pytest

from fabfile import journal
from fabfile.engines.compose import status_lines
from fabfile.history import history_lines, rollback_target
from fabfile.plan import parse_survey
from fabfile.runner import BadInput
from tests.fakes import (
    FakeExecutor,
    fake_session,
    journal_text,
    run_events,
    sandbox_containers,
    survey_head,
    survey_text,
)

R1, R2, R3, R4 = "20250101-100000-1", "20250102-100000-2", "20250103-100000-3", "20250104-100000-4"
V1, V2, V3 = ("sha256:" + d * 64 for d in "123")


def runs(*events: list[dict]) -> list[journal.Run]:
    return journal.parse(journal_text(*events))


def deploy(run: str, server: tuple[str, str], result: str | None = "ok", **kw) -> list[dict]:
    """A deploy that took server from one image to another (the same: it did not roll)."""
    return run_events(run, images={"server": server, "redis": (V1, V1)}, result=result, **kw)


# --- history ---------------------------------------------------------------------------------------


def test_history_is_a_table_of_the_last_runs():
    lines = history_lines(
        runs(
            deploy("20241231-000000-0", (V1, V1)),
            deploy(R1, (V1, V2), verify={"failures": 3, "failures_without_retry": 5}),
            deploy(R2, (V2, V3), result="failed", seconds=4.4),
            run_events(R3, kind="recover", result=None),
        ),
        3,
    )
    header, *rows = lines
    assert header.split() == ["run", "when", "who", "what", "result", "time", "failed", "changes"]
    assert len(rows) == 3 and rows[0].startswith(R1)  # the last 3 runs, oldest first
    r1, r2, r3 = (row.split("  ") for row in rows)
    cells = [[c.strip() for c in row if c.strip()] for row in (r1, r2, r3)]
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(1_700_000_000))
    assert cells[0] == [R1, when, "alice@laptop", "deploy", "ok", "12s", "3/5", f"server {'1' * 12} → {'2' * 12}"]
    assert cells[1] == [R2, when, "alice@laptop", "deploy", "failed", "4s", "-", f"server {'2' * 12} → {'3' * 12}"]
    assert cells[2] == [R3, when, "alice@laptop", "recover", "unfinished", "-", "-", "-"]  # redis never rolled
    assert len({row.index("alice@laptop") for row in rows}) == 1  # the columns line up


# --- rollback_target -----------------------------------------------------------------------------

HISTORY = (deploy(R1, (V1, V1)), deploy(R2, (V1, V2)), deploy(R3, (V2, V3), result="failed"), deploy(R4, (V2, V3)))


def test_rollback_goes_back_to_the_successful_run_before_the_last():
    assert rollback_target(runs(*HISTORY), None).run == R2
    # a run that deployed the images that run now again is no step back
    assert rollback_target(runs(*HISTORY, deploy("20250105-100000-5", (V3, V3))), None).run == R2


def test_rollback_to_a_run_by_its_id_or_a_prefix():
    assert rollback_target(runs(*HISTORY), R1).run == R1
    assert rollback_target(runs(*HISTORY), "2025010").run == R4  # the last one that matches
    assert rollback_target(runs(*HISTORY), "20250102").run == R2


@pytest.mark.parametrize(
    "history, to, message",
    [
        ((deploy(R1, (V1, V2)),), None, "no earlier successful deploy"),
        ((deploy(R1, (V1, V2), result="failed"), deploy(R2, (V1, V2))), None, "no earlier successful deploy"),
        ((deploy(R1, (V1, V2), result=None), deploy(R2, (V1, V2))), None, "no earlier successful deploy"),
        ((), None, "no earlier successful deploy"),
        (HISTORY, R3, f"no successful run '{R3}' in the journal"),  # it failed
        (HISTORY, "2030", "no successful run '2030' in the journal"),
    ],
)
def test_no_run_to_roll_back_to_is_bad_input(history, to, message):
    with pytest.raises(BadInput, match=message):
        rollback_target(runs(*history), to)


# --- status --------------------------------------------------------------------------------------


def status(survey: str, *history: list[dict]) -> list[str]:
    s, _ = fake_session(FakeExecutor())
    return status_lines(s, parse_survey(survey, "caddy"), runs(*history))


def started(seconds_ago: int) -> list[dict]:
    """The sandbox's containers, server's started ``seconds_ago``; identity not there."""
    containers = [c for c in sandbox_containers() if c["Name"] != "/remilia-identity-1"]
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - seconds_ago))
    containers[0]["State"]["StartedAt"] = f"{stamp}.123456789Z"
    return containers


def test_status_of_a_quiet_host():
    lines = status(survey_head(survey_text(started(90))), deploy(R1, (V1, V2)))
    assert lines[0].startswith("server: a00000000000 running healthy image 011517147638 up ")
    assert 90 <= int(lines[0].rsplit(" ", 1)[1].rstrip("s")) <= 95
    assert "property: c00000000000 running healthy image 012347900126 up ?" in lines  # StartedAt unknown
    assert "identity: no container" in lines
    assert lines[-3:] == [
        "proxy caddy: routes by service name (its config file)",
        "lock: free",
        f"last run: {R1} deploy by alice@laptop: ok",
    ]


def test_status_of_a_host_in_the_middle_of_an_interrupted_run():
    holder = f"bob@desk pid 9 deploy since 2025-01-02 10:00:00 UTC (run {R2})"
    pinned = {"apps": {"http": {"servers": {"srv0": {"routes": [{"@id": "zdd-drain-hold"}]}}}}}  # zdd's config
    survey = survey_head(survey_text(started(0), running=pinned), lock=holder)
    lines = status(survey, deploy(R1, (V1, V2)), deploy(R2, (V2, V3), result=None, who="bob@desk"))
    assert lines[-4:] == [
        "proxy caddy: routes pinned to container addresses by an unfinished run",
        f"lock: {holder}",
        f"last run: {R1} deploy by alice@laptop: ok",
        f"unfinished: {R2} deploy (the next deploy or `fab recover` finishes it)",
    ]


# --- rollback on a Compose host: the kept image under the reference the compose files name now ------


def rollback_setup(server_image: str):
    from fabfile.engines.compose import ComposeEngine
    from tests.fakes import (
        FakeExecutor,
        fake_session,
        image_id,
        journal_text,
        run_events,
        sandbox_compose_json,
        sandbox_survey,
    )

    runs = journal_text(
        run_events("r1", images={"server": ("", image_id("server", 1))}),
        run_events("r2", images={"server": (image_id("server", 1), image_id("server", 2))}),
    )
    fake = FakeExecutor([("tail -n 5000", runs), ("docker image inspect", image_id("server", 1) + "\n")])
    s, _ = fake_session(fake)
    state = parse_survey(sandbox_survey(compose=sandbox_compose_json({"server": {"image": server_image}})), "caddy")
    return ComposeEngine(s.host), s, state


def test_rollback_tags_the_kept_image_as_the_tag_the_compose_files_name_now():
    """A tag pinned in .env moved since (app:${TAG}): tagging the old reference would change
    nothing; the image the service's reference names now is the one that must become the old image."""
    engine, s, state = rollback_setup("127.0.0.1:15000/zdd-sandbox/server:v3")
    kind, target = engine.rollback_target(s, state, None)
    from tests.fakes import image_id

    assert kind == "rollback to r1"
    assert target == ("r1", {"server": ("127.0.0.1:15000/zdd-sandbox/server:v3", image_id("server", 1))})


def test_rollback_of_a_service_pinned_by_digest_is_refused_in_one_line():
    engine, s, state = rollback_setup("127.0.0.1:15000/zdd-sandbox/server@sha256:" + "ab" * 32)
    with pytest.raises(BadInput, match=r"^server: the compose files name the image by digest"):
        engine.rollback_target(s, state, None)
