"""The pipeline on the sandbox: a real deploy under load drops nothing; a broken image
fails the deploy with the old containers serving; each step works on its own."""

import os
import re
import signal
import subprocess
import time

from tests import sandbox as sb

URLS_ARGS = ["--host", "sandbox"]


def _versions(service):
    return {c.version for c in sb.containers(service)}


def _cost(stdout: str) -> tuple[int, int]:
    m = re.search(r"cost: (\d+) remote commands, (\d+) proxy loads", stdout)
    assert m, stdout
    return int(m.group(1)), int(m.group(2))


def _started(container_id: str) -> float:
    out = sb.docker("inspect", "--format", "{{.State.StartedAt}}", container_id).strip()
    stamp, _, frac = out.rstrip("Z").partition(".")
    return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) + float("0." + (frac or "0"))


def test_deploy_rolls_every_app_with_zero_failed_requests(settled, tmp_path):
    before = {svc: _versions(svc) for svc in sb.APPS}
    old_ids = {svc: {c.id for c in sb.containers(svc)} for svc in sb.APPS}
    version = sb.publish()
    probe = sb.Verify(*URLS_ARGS, json_path=tmp_path / "verify.json")
    res = sb.fab("deploy", "--strict")
    rc, out, report = probe.stop()
    assert res.returncode == 0, res.stdout + res.stderr

    # every app runs only new-version containers, and Caddy serves the new version
    for svc in sb.APPS:
        running = sb.containers(svc)
        assert [c.version for c in running] == [version], (svc, running)
        assert not {c.id for c in running} & old_ids[svc]
        assert sb.get(f"/{svc}/fast").text == f"{svc} {version} fast"
        assert version not in before[svc]
    # a tier of two services rolls both at once: their new containers started together
    server, prop = sb.containers("server")[0], sb.containers("property")[0]
    assert abs(_started(server.id) - _started(prop.id)) < 1.5

    # the independent load loop (inv verify, stopped with Ctrl-C) saw nothing fail
    assert rc == 0, out
    assert report["failures"] == 0, out
    assert report["total"] >= 20 * report["elapsed_s"] * 0.8, "load below 20 req/s"
    slow = [u for u in report["urls"] if u["url"].endswith("/slow")]
    assert len(slow) == 4 and all(u["requests"] > 0 for u in slow)
    # both versions seen, with the switch time per service
    for svc in sb.APPS:
        fast = next(u for u in report["urls"] if u["url"].endswith(f"/{svc}/fast"))
        seen = {v["version"]: v for v in fast["versions"]}
        assert version in seen and len(seen) >= 2, (svc, seen)
        old_last = max(v["last_s"] for k, v in seen.items() if k != version)
        # one switch, no flapping: after the new version answered, the old one did not come back
        assert old_last <= seen[version]["first_s"] + 1.0, (svc, seen)
    assert "Version switches (first/last seen" in out

    # the deploy's own verification ends its summary; its steps, one line each
    assert re.search(r"verify: 0 of [\d,]+ requests failed, [\d,]+ if never retried, p99 \d+ ms", res.stdout), (
        res.stdout
    )
    for step in (
        "validate",
        "pull",
        "plan",
        "rollout server, property",
        "rollout identity",
        "rollout profile-server",
        "reload-caddy",
        "finish",
    ):
        assert re.search(rf"\[sandbox\] ok   {re.escape(step)}\s+[\d.]+s", res.stdout), step
    assert re.search(r"\[sandbox\] skip infra-up\s+[\d.]+s  unchanged: mongodb, redis", res.stdout)
    assert re.search(r"\[sandbox\] ok   finish .*kept the images of the last 3 runs; Total reclaimed space", res.stdout)
    assert "new image for server, property, identity, profile-server" in res.stdout
    # a handful of proxy loads: pin, one switch per tier, restore (tiers + 2)
    commands, loads = _cost(res.stdout)
    assert loads == 3 + 2 and commands <= 10, res.stdout
    # the drain really watched Caddy's counters (slow requests were in flight at the switch)
    drained = re.findall(r"\[sandbox\] ok   drain [\w, -]+?\s+[\d.]+s  after \d+s, (\d+) in flight at most", res.stdout)
    assert len(drained) == 3 and sum(map(int, drained)) > 0, res.stdout
    # a client that does not retry a closed keep-alive connection loses only what a reload's race
    # costs: Caddy closes its idle client connections when it loads a config, and a request sent
    # on one at that instant gets no answer. How many is a figure (bench_deploy.py's "failed, never
    # retrying"; a CI run saw 7 over 5 loads), not a behaviour: the bound only catches a change
    # that cuts far more than the reloads do
    assert report["stale_retries"] <= 3 * loads
    assert report["failures_without_retry"] <= 3 * loads


def test_deploy_with_nothing_changed_touches_nothing(settled):
    assert sb.fab("deploy", "--no-verify").returncode == 0  # whatever was pending is rolled
    ids = {svc: [c.id for c in sb.containers(svc, all_states=True)] for svc in sb.APPS + ["caddy", "redis"]}
    res = sb.fab("deploy", "--no-verify")
    assert res.returncode == 0, res.stdout + res.stderr
    assert {svc: [c.id for c in sb.containers(svc, all_states=True)] for svc in ids} == ids
    assert res.stdout.count("skip, unchanged") == 4
    assert _cost(res.stdout) == (4, 0)  # survey, lock, pull, finish (journal, unlock); no proxy load
    assert "skip reload-caddy" in res.stdout
    assert re.search(r"\[sandbox\] ok   finish\s+[\d.]+s  released the lock$", res.stdout, re.M)  # no prune


def test_broken_image_fails_fast_and_old_containers_keep_serving(settled, tmp_path):
    good = {svc: sb.containers(svc) for svc in sb.APPS}
    broken = sb.publish("--broken", "server")  # tier 1 of 3
    probe = sb.Verify(*URLS_ARGS, json_path=tmp_path / "verify.json")
    res = sb.fab("deploy")
    rc, out, report = probe.stop()
    try:
        assert res.returncode == 1, res.stdout + res.stderr
        assert "Traceback" not in res.stderr
        assert "not healthy" in res.stderr and "server:" in res.stderr
        assert "check exit 1" in res.stdout and "health: unhealthy" in res.stdout  # health output shown
        # failed on Docker's verdict (~5 s after start), not at health_timeout (30 s): the step also
        # holds the unwind (the new container removed), which a loaded CI machine took 15.6 s for
        m = re.search(r"\[sandbox\] FAIL rollout server\s+([\d.]+)s", res.stdout)
        assert m and float(m.group(1)) < 25, res.stdout
        # tier 1's old containers still serve, alone; nothing of the broken version is left
        for svc in ("server", "property"):
            [c] = sb.containers(svc, all_states=True)
            assert c.id == good[svc][0].id and c.version != broken
        # later tiers were not touched
        for svc in ("identity", "profile-server"):
            assert [c.id for c in sb.containers(svc)] == [c.id for c in good[svc]]
        assert "rollout identity" not in res.stdout
        # no request failed, and the broken version never answered one
        assert rc == 0 and report["failures"] == 0, out
        assert broken not in {v["version"] for v in report["versions"]}, report["versions"]
    finally:
        sb.publish("server")


def test_ctrl_c_after_a_switch_drops_nothing_and_the_next_deploy_converges(settled, tmp_path):
    version = sb.publish()
    probe = sb.Verify(*URLS_ARGS, json_path=tmp_path / "verify.json")
    proc = subprocess.Popen(
        [str(sb.BIN / "fab"), "-H", "sandbox", "deploy", "--no-verify"],
        cwd=sb.ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "ok   rollout server, property" in line:  # tier 1 switched; tier 2 is starting
            time.sleep(1.0)
            os.killpg(proc.pid, signal.SIGINT)  # a real Ctrl-C: the whole foreground group
            break
    rest, _ = proc.communicate(timeout=60)
    text = "".join(seen) + rest
    assert proc.returncode == 130, text
    assert "Traceback" not in text
    # tier 1 stays on the new version (never undone): its old container, out of rotation, is
    # drained and stopped by the host on its own (websockets keep it a few seconds)
    deadline = time.monotonic() + 30
    while [c.version for c in sb.containers("server")] != [version] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [c.version for c in sb.containers("server")] == [version]
    for svc in ("identity", "profile-server"):
        assert [c.version for c in sb.containers(svc, all_states=True)] != [version]
        assert len(sb.containers(svc, all_states=True)) == 1, svc  # its new container was removed
    # the next deploy finishes the job: one container per service, all on the new version
    res = sb.fab("deploy", "--no-verify", "--wait")
    rc, out, report = probe.stop()
    assert res.returncode == 0, res.stdout + res.stderr
    assert "server: skip, unchanged" in res.stdout and "identity: roll" in res.stdout
    for svc in sb.APPS:
        assert [c.version for c in sb.containers(svc, all_states=True)] == [version], svc
    assert rc == 0 and report["failures"] == 0, out


def test_rollout_service_alone(settled):
    version = sb.publish("identity")
    others = {svc: [c.id for c in sb.containers(svc)] for svc in sb.APPS if svc != "identity"}
    assert sb.fab("pull").returncode == 0
    res = sb.fab("rollout-service", "identity")
    assert res.returncode == 0, res.stdout + res.stderr
    assert [c.version for c in sb.containers("identity")] == [version]
    assert {svc: [c.id for c in sb.containers(svc)] for svc in others} == others


def test_rollout_service_starts_a_stopped_service(settled):
    sb.as_host_user("docker compose stop property >/dev/null 2>&1 && docker compose rm -f property >/dev/null 2>&1")
    assert sb.containers("property") == []
    res = sb.fab("rollout-service", "property")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "rollout property" in res.stdout and "property 0 → 1" in res.stdout
    [c] = sb.containers("property")
    assert c.health == "healthy"


def test_replica_count_is_preserved(settled):
    sb.as_host_user(
        "docker compose up -d --no-deps --no-recreate --scale profile-server=2 --wait profile-server >/dev/null 2>&1"
    )
    old = {c.id for c in sb.containers("profile-server")}
    assert len(old) == 2
    res = sb.fab("rollout-service", "profile-server")
    assert res.returncode == 0, res.stdout + res.stderr
    new = sb.containers("profile-server")
    assert len(new) == 2 and not {c.id for c in new} & old
    assert "profile-server 2 → 2" in res.stdout
    sb.as_host_user(
        "docker compose up -d --no-deps --no-recreate --scale profile-server=1 profile-server >/dev/null 2>&1"
    )


def test_each_step_runs_alone(sandbox):
    for step, expect in (("infra-up", "infra-up"), ("reload-caddy", "reload-caddy"), ("prune", "prune")):
        res = sb.fab(step)
        assert res.returncode == 0, res.stdout + res.stderr
        assert re.search(rf"\[sandbox\] ok   {expect}\s+[\d.]+s", res.stdout), res.stdout


def test_a_held_lock_blocks_a_second_deploy_until_unlocked(sandbox):
    key = "_var_lib_zdd-sandbox_home_remilia"  # the project's resolved directory
    lock = sb.STATE / "home" / ".zdd" / "locks" / key
    assert not lock.exists()
    sb.as_host_user(
        f"mkdir -p ~/.zdd/locks/{key} && echo 'alice@laptop pid 1 deploy since yesterday' > ~/.zdd/locks/{key}/holder"
    )
    try:
        ids = {svc: [c.id for c in sb.containers(svc)] for svc in sb.APPS}
        res = sb.fab("deploy", "--no-verify")
        assert res.returncode == 1
        assert "another deploy holds the lock (locked by: alice@laptop pid 1 deploy since yesterday)" in res.stderr
        assert "fab -H sandbox unlock" in res.stderr
        assert {svc: [c.id for c in sb.containers(svc)] for svc in sb.APPS} == ids
        res = sb.fab("unlock")
        assert res.returncode == 0 and "was locked by: alice@laptop" in res.stdout
        assert not lock.exists()
    finally:
        subprocess.run(["rm", "-rf", str(lock)])
