"""Real operating conditions on the sandbox, under load (tests/chaos.py; scripts/chaos.py runs
every scenario and prints the table): never remove what serves, and the next deploy converges
without `fab unlock`."""

from __future__ import annotations

import pytest

from tests import chaos


def assert_converged(o: chaos.Outcome) -> None:
    assert o.exits[-1] == 0, o.notes
    assert o.dropped == 0, f"{o.failed} of {o.requests} requests failed: {o.notes}"
    assert o.requests > 100  # the load really ran
    assert o.containers == {svc: 1 for svc in chaos.sb.APPS}, o.containers
    assert o.versions_ok and o.lock_free


def test_a_compose_run_job_runs_through_a_deploy_untouched(settled, tmp_path):
    """Before: the job was pinned into Caddy (502s), counted into --scale and stopped."""
    o = chaos.under_load("job", tmp_path, chaos.with_job)
    assert o.exits[0] == 0 and o.job_running is True
    assert_converged(o)


@pytest.mark.parametrize(
    "point, how",
    [
        ("in-switch", "SIGTERM"),
        ("in-switch", "ssh-drop"),
        ("after-start", "SIGKILL"),
        ("in-drain", "ssh-drop"),
    ],  # Ctrl-C after a switch: tests/e2e/test_deploy.py; every point and way: scripts/chaos.py
)
def test_an_interruption_at_a_point_of_the_tier_never_removes_what_serves(settled, tmp_path, point, how):
    o = chaos.under_load(f"{how} at {point}", tmp_path, chaos.interrupted_at(point, how))
    assert "never reached" not in " ".join(o.notes)
    # no request sent after a new version first answered goes to an old one (0.0 s in every
    # scenario measured): nothing routes back to old containers being drained. Before: a run
    # whose connection dropped at the switch loaded the proxy's file at once, and the old
    # version, reached by service name again, answered requests sent 14 s after the switch
    assert o.back_on_old < 2, o.back_on_old
    if how in ("SIGTERM", "Ctrl-C"):
        assert o.exits[0] == 130
    assert_converged(o)


def test_a_full_zdd_directory_refuses_the_deploy_before_any_change(settled, tmp_path):
    o = chaos.under_load("full", tmp_path, chaos.full_disk)
    assert o.exits[0] == 1
    refused = next(n for n in o.notes if n.startswith("refused in "))
    assert float(refused.split()[2].rstrip("s:")) < 30 and "cannot " in refused, refused
    assert not any(n.startswith("left running") for n in o.notes), o.notes
    assert_converged(o)


def test_two_clients_with_one_host_name_at_one_instant_one_proceeds(settled, tmp_path):
    o = chaos.under_load("race", tmp_path, chaos.lock_race)
    assert "1 of 2 proceeded" in o.notes, o.notes
    assert_converged(o)


def test_two_deploys_back_to_back(settled, tmp_path):
    """The second starts as the first returns (CI merged twice): it waits for the first's restore
    job, reads the host again, plans with nothing of the first's draining containers."""
    o = chaos.under_load("back to back", tmp_path, chaos.back_to_back)
    assert o.exits[:2] == [0, 0], o.notes
    assert_converged(o)


def test_a_rollback_with_tags_pinned_in_env_returns_to_the_images_before(settled, tmp_path):
    """Before: with `image: app:${APP_TAG}` the rollback planned "unchanged" for every service
    and was recorded as a successful rollback that changed nothing."""
    o = chaos.under_load("pinned", tmp_path, chaos.rollback_pinned, publish=False)
    assert o.exits[:3] == [0, 0, 0], o.notes
    assert o.notes[0].startswith("rollback returned to "), o.notes
    assert_converged(o)  # and the next deploy moves forward to pin-b again
