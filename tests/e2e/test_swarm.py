"""Engine swarm on the sandbox's Swarm stack (scripts/sandbox.sh swarm-up): a deploy under load
moves every app to the new image with nothing dropped, tier after tier; a broken image is rolled
back by Swarm and fails the deploy naming the service; `fab rollback` returns to the previous
images under load; a deploy with nothing to do changes nothing.

The stack runs on a Docker engine of its own (a second dockerd in swarm mode, which zdd reaches
through the sandbox's sshd on port 22023). These run with every ZDD_E2E=1 run (scripts/test.sh):
the swarm_sandbox fixture runs scripts/sandbox.sh swarm-up when the stack does not answer.
"""

import json
import re
import subprocess
import time
from datetime import datetime

import pytest

from tests import sandbox as sb

pytestmark = pytest.mark.swarm

HOST = "sandbox-swarm"
URLS_ARGS = ["--host", HOST]


def fab(*args: str) -> subprocess.CompletedProcess:
    return sb.fab(*args, host=HOST)


@pytest.fixture
def settled(swarm_sandbox):
    """Every app on what the registry has now, one task each, answering."""
    res = fab("deploy", "--no-verify")
    assert res.returncode == 0, res.stdout + res.stderr
    sb.swarm_serves()
    yield sb


def when(stamp: str) -> float:
    """An RFC 3339 time as Docker prints it (nanoseconds), as a Unix time."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00").timestamp()


def running_since(service: str) -> float:
    """When the last of a service's running tasks was reported running (Swarm: healthy)."""
    ids = sb.swarm_docker("service", "ps", "-q", "--filter", "desired-state=running", f"{sb.SWARM_STACK}_{service}")
    tasks = json.loads(sb.swarm_docker("inspect", *ids.split()))
    return max(when(t["Status"]["Timestamp"]) for t in tasks)


def spec_images(*services: str) -> dict[str, str]:
    return {svc: sb.swarm_service(svc)["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] for svc in services}


def test_deploy_under_load_moves_every_app_with_zero_failed_requests(settled, tmp_path):
    before = {svc: sb.swarm_versions(svc) for svc in sb.APPS}
    assert sb.swarm_on_worker(*sb.APPS), "no app task runs on the worker"
    version = sb.publish()
    probe = sb.Verify(*URLS_ARGS, json_path=tmp_path / "verify.json")
    res = fab("deploy", "--strict")
    rc, out, report = probe.stop(
        settle=12
    )  # an old task that ignores SIGTERM serves its pooled connections until it dies
    assert res.returncode == 0, res.stdout + res.stderr
    # with the verify loop, the deploy waits for Swarm's verdict (the loop covers the monitor window)
    assert re.search(rf"\[{HOST}\] ok   rollout profile-server\s+[\d.]+s  profile-server completed", res.stdout), (
        res.stdout
    )
    assert "swarm verdict" not in res.stdout

    for svc in sb.APPS:
        # every task, on both nodes, runs the new image (each node's own pull of it)
        tasks = sb.swarm_tasks(svc)
        assert len(tasks) == 2 and {v for _, v in tasks} == {version}, (svc, tasks)
        assert sb.swarm_versions(svc) == {version}, svc
        assert version not in before[svc]
        assert sb.get(f"/{svc}/fast", base=sb.SWARM_HTTP).text == f"{svc} {version} fast"
        assert sb.swarm_update_status(svc)["State"] == "completed", svc
    # tiers in order: a tier's updates started once every task of the tier before was replaced
    # (its new tasks running, healthy); not necessarily after Swarm's `completed`, which comes
    # after the monitor window (the unit tests show the overlap: with a 2 s window it may not)
    status = {svc: sb.swarm_update_status(svc) for svc in sb.APPS}
    for earlier, later in ((("server", "property"), "identity"), (("identity",), "profile-server")):
        assert max(running_since(s) for s in earlier) <= when(status[later]["StartedAt"]), (earlier, later)

    # the independent load loop saw nothing fail, and both versions answered
    assert rc == 0 and report["failures"] == 0, out
    assert report["total"] >= 20 * report["elapsed_s"] * 0.8, "load below 20 req/s"
    for svc in sb.APPS:
        fast = next(u for u in report["urls"] if u["url"].endswith(f"/{svc}/fast"))
        assert version in {v["version"] for v in fast["versions"]}, (svc, fast["versions"])

    for step in (
        "validate",
        "pull",
        "plan",
        "rollout server, property",
        "rollout identity",
        "rollout profile-server",
        "finish",
    ):
        assert re.search(rf"\[{HOST}\] ok   {re.escape(step)}\s+[\d.]+s", res.stdout), step
    assert "new digest for server, property, identity, profile-server" in res.stdout
    assert re.search(rf"\[{HOST}\] skip reload-caddy\s+[\d.]+s  not needed", res.stdout), res.stdout
    assert re.search(r"cost: \d+ remote commands, 0 proxy loads", res.stdout), res.stdout
    assert re.search(r"verify: 0 of [\d,]+ requests failed", res.stdout), res.stdout


def test_deploy_with_nothing_changed_touches_nothing(settled):
    started = {svc: sb.swarm_update_status(svc).get("StartedAt") for svc in sb.APPS}
    images = spec_images(*sb.APPS)
    res = fab("deploy", "--no-verify")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("skip, unchanged") == 4
    assert re.search(rf"\[{HOST}\] skip infra-up\s+[\d.]+s  unchanged: mongodb, redis", res.stdout), res.stdout
    assert "cost: 4 remote commands, 0 proxy loads" in res.stdout  # survey, lock, pull, finish
    assert {svc: sb.swarm_update_status(svc).get("StartedAt") for svc in sb.APPS} == started
    assert spec_images(*sb.APPS) == images


def test_a_proxy_that_reaches_the_apps_by_service_name_is_noted_and_the_sandboxs_is_not(settled):
    """Validation reads the config the proxy's task runs: the sandbox's Caddyfile gives Caddy the
    tasks' addresses (dynamic upstreams); the same routes by service name are noted."""
    caddyfile = sb.STATE / "home" / sb.SWARM_STACK / "caddy" / "Caddyfile"
    ours = caddyfile.read_text()
    proxy = sb.swarm_docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={sb.SWARM_STACK}_caddy")
    reload = ["exec", proxy.split()[0], "caddy", "reload", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
    res = fab("deploy", "--dry-run")
    assert res.returncode == 0 and "the proxy reaches" not in res.stdout, res.stdout + res.stderr
    by_name = "".join(f"\thandle_path /by-name/{n}/* {{\n\t\treverse_proxy {n}:8080\n\t}}\n" for n in sb.APPS[1:])
    try:
        caddyfile.write_text(ours.replace("\thandle {", by_name + "\thandle {", 1))
        sb.swarm_docker(*reload)
        res = fab("deploy", "--dry-run")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "the proxy reaches property, identity, profile-server by service name" in res.stdout, res.stdout
    finally:
        caddyfile.write_text(ours)
        sb.swarm_docker(*reload)


def test_broken_image_is_rolled_back_by_swarm_and_fails_the_deploy(settled, tmp_path):
    good = sb.swarm_versions("server")
    later = spec_images("identity", "profile-server")
    broken = sb.publish("--broken", "server")  # tier 1 of 3
    probe = sb.Verify(*URLS_ARGS, json_path=tmp_path / "verify.json")
    res = fab("deploy")
    sb.swarm_wait_state("server", "rollback_completed")  # the load goes on while Swarm finishes its rollback
    rc, out, report = probe.stop(
        settle=12
    )  # an old task that ignores SIGTERM serves its pooled connections until it dies
    try:
        assert res.returncode == 1, res.stdout + res.stderr
        assert "Traceback" not in res.stderr
        assert re.search(r"server: rollback_(started|completed)", res.stderr), res.stderr
        # failed on Swarm's verdict (a few seconds), not at the ceiling (health_timeout + 60 s)
        m = re.search(rf"\[{HOST}\] FAIL rollout server\s+([\d.]+)s", res.stdout)
        assert m and float(m.group(1)) < 45, res.stdout
        assert "rollout identity" not in res.stdout
        assert spec_images("identity", "profile-server") == later  # later tiers untouched
        # Swarm finished its rollback: the good version serves, alone
        assert sb.swarm_update_status("server")["State"] == "rollback_completed"
        assert sb.swarm_versions("server") == good
        assert rc == 0 and report["failures"] == 0, out
        assert broken not in {v["version"] for v in report["versions"]}, report["versions"]
    finally:
        sb.publish("server")


def test_rollback_returns_to_the_previous_images_under_load(settled, tmp_path):
    # the services roll back stop-first, as a compose file without rollback_config leaves them
    # (Swarm's default): zdd's rollback must still start the old tasks first
    for svc in sb.APPS:
        sb.swarm_docker(
            "service", "update", "--detach", "--quiet", "--rollback-order", "stop-first", f"{sb.SWARM_STACK}_{svc}"
        )
    assert {sb.swarm_service(svc)["Spec"]["RollbackConfig"]["Order"] for svc in sb.APPS} == {"stop-first"}
    before = {svc: sb.swarm_versions(svc) for svc in sb.APPS}
    version = sb.publish()
    res = fab("deploy", "--no-verify")
    assert res.returncode == 0, res.stdout + res.stderr
    assert all(sb.swarm_versions(svc) == {version} for svc in sb.APPS)
    # the spec a rollback returns to, with the rollback settings it then uses: start-first
    for svc in sb.APPS:
        assert sb.swarm_service(svc)["PreviousSpec"]["RollbackConfig"]["Order"] == "start-first", svc

    probe = sb.Verify(*URLS_ARGS, json_path=tmp_path / "verify.json")
    res = fab("rollback")
    rc, out, report = probe.stop(
        settle=12
    )  # an old task that ignores SIGTERM serves its pooled connections until it dies
    assert res.returncode == 0, res.stdout + res.stderr
    assert sb.swarm_on_worker(*sb.APPS), "no app task runs on the worker"
    for svc in sb.APPS:
        tasks = sb.swarm_tasks(svc)  # both nodes restored
        assert len(tasks) == 2 and {v for _, v in tasks} == before[svc], (svc, tasks)
        assert sb.swarm_versions(svc) == before[svc], svc
        [old] = before[svc]
        assert sb.get(f"/{svc}/fast", base=sb.SWARM_HTTP).text == f"{svc} {old} fast"
        assert sb.swarm_update_status(svc)["State"] == "rollback_completed"
    # tiers in reverse order
    order = [res.stdout.index(f"ok   rollback {t}") for t in ("profile-server", "identity", "server, property")]
    assert order == sorted(order), res.stdout
    assert rc == 0 and report["failures"] == 0, out

    # Swarm keeps one previous spec: a second rollback has nothing to do
    again = fab("rollback")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("skip, its last update was rolled back already (rollback_completed)") == 4
    # and the next deploy rolls forward again
    res = fab("deploy", "--no-verify")
    assert res.returncode == 0, res.stdout + res.stderr
    assert all(sb.swarm_versions(svc) == {version} for svc in sb.APPS)


def test_a_rollback_in_an_earlier_tiers_monitor_window_fails_a_later_tier(settled):
    """Tier 1's task crashes while Swarm still monitors it and a later tier runs: Swarm rolls
    tier 1 back, and the later tier's run fails at once naming it (--wait: the run also waits for
    Swarm's verdict on the last tier, so the crash falls inside the run whenever it comes)."""
    svc = "server"  # tier 1 of 3
    good = sb.swarm_versions(svc)
    try:
        with sb.swarm_monitor_window(svc, 60):
            bad = sb.publish("--die-after", "25", svc)
            sb.publish("identity")  # tier 2 rolls too (tier 3, profile-server, has nothing new)
            res = fab("deploy", "--no-verify", "--wait")
            assert res.returncode == 1, res.stdout + res.stderr
            assert "Traceback" not in res.stderr
            # tier 1 was done (its tasks replaced) and a later tier ran when Swarm rolled server back
            assert re.search(rf"\[{HOST}\] ok   rollout server\s+[\d.]+s  server replaced", res.stdout), res.stdout
            assert re.search(rf"\[{HOST}\] FAIL rollout identity ", res.stdout), res.stdout
            assert re.search(rf"{svc}: (paused|rollback_(started|completed))", res.stderr), res.stderr
            sb.swarm_wait_state(svc, "rollback_completed")
            assert sb.swarm_versions(svc) == good and bad not in good
    finally:
        sb.publish(svc)  # a good :latest again


def test_a_rollback_in_the_last_tiers_monitor_window_is_journaled_after_fab_returned(settled):
    """fab deploy returns once the last tier's tasks are replaced; Swarm then rolls back a task
    that crashes in its monitor window: the monitor job journals that verdict, status shows it,
    and the old version serves again."""
    svc = "profile-server"  # the last tier
    good = sb.swarm_versions(svc)
    try:
        with sb.swarm_monitor_window(svc, 60):  # a long window, a crash well inside it
            bad = sb.publish("--die-after", "30", svc)
            t0 = time.time()
            res = fab("deploy", "--no-verify")
            assert res.returncode == 0, res.stdout + res.stderr
            assert f"left to the host: Swarm monitors {svc} until its monitor window ends" in res.stdout, res.stdout
            assert sb.swarm_versions(svc) == {bad}
            holder = (sb.SWARM_LOCK / "holder").read_text()
            assert holder.startswith("swarm monitor job "), holder
            verdict = sb.swarm_verdict(t0, timeout=120)
            assert verdict.get("result") == "failed" and verdict["services"] == svc, verdict
            assert verdict["error"].startswith(f"{svc}: rollback_"), verdict
            sb.swarm_wait_state(svc, "rollback_completed")
            assert sb.swarm_versions(svc) == good
            status = fab("status")
            assert re.search(rf"Swarm's verdict on {svc}: failed: {svc}: rollback_", status.stdout), status.stdout
    finally:
        sb.publish(svc)  # a good :latest again


def test_a_deploy_right_after_one_waits_for_its_monitor_job_then_finds_nothing_to_do(settled):
    """Back to back: the second deploy finds Swarm still monitoring the first one's update (the
    monitor job holds the lock); it waits for the job instead of refusing, then skips everything."""
    svc = "profile-server"
    with sb.swarm_monitor_window(svc, 20):
        sb.publish(svc)
        t0 = time.time()
        first = fab("deploy", "--no-verify")
        assert first.returncode == 0, first.stdout + first.stderr
        assert f"left to the host: Swarm monitors {svc}" in first.stdout, first.stdout
        assert (sb.SWARM_LOCK / "holder").read_text().startswith("swarm monitor job ")
        assert sb.swarm_update_status(svc)["State"] == "updating"
        second = fab("deploy", "--no-verify")
        assert second.returncode == 0, second.stdout + second.stderr
        assert "waited for the previous deploy's job" in second.stdout + second.stderr, second.stdout
        assert second.stdout.count("skip, unchanged") == 4, second.stdout
        assert sb.swarm_update_status(svc)["State"] == "completed"
        assert sb.swarm_verdict(t0).get("result") == "completed"


def test_status_shows_the_stack(settled):
    # an old task that ignores SIGTERM (identity) still runs for its stop grace after an update
    deadline = time.monotonic() + 30
    while True:
        res = fab("status")
        assert res.returncode == 0, res.stdout + res.stderr
        if (
            all(re.search(rf"\[{HOST}\]   {re.escape(svc)}\s+2/2\s", res.stdout) for svc in sb.APPS)
            or time.monotonic() > deadline
        ):
            break
        time.sleep(1)
    for svc, replicas in (*((svc, 2) for svc in sb.APPS), ("caddy", 1), ("redis", 1)):
        assert re.search(rf"\[{HOST}\]   {re.escape(svc)}\s+{replicas}/{replicas}\s+[0-9a-f]{{12}}", res.stdout), (
            svc,
            res.stdout,
        )
    assert f"{sb.SWARM_STACK}_server.1" in res.stdout
    # tasks per node: both nodes, each with its tasks
    for node in (sb.swarm_engine_info()["Name"], sb.WORKER_NAME):
        assert re.search(rf"\[{HOST}\]\s+node {re.escape(node)}: [1-9]\d* task\(s\)", res.stdout), (node, res.stdout)
    assert f"[{HOST}]   lock: free" in res.stdout and re.search(
        rf"\[{HOST}\]   last run: \S+ deploy by \S+: ok", res.stdout
    ), res.stdout


def test_history_reads_the_stacks_journal_and_rollback_to_a_run_is_refused(settled):
    res = fab("history")
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"\d{8}-\d{6}-\d+\s+\d{4}-\d\d-\d\d \d\d:\d\d\s+\S+\s+deploy\s+ok", res.stdout), res.stdout
    res = fab("rollback", "--to", "20260101-000000-1")
    assert res.returncode == 2
    assert "engine swarm returns each service to Swarm's previous spec only" in res.stderr
