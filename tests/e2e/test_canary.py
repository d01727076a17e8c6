"""Canary steps on the sandbox, under load: a good release is seen beside the old one during
its steps, then alone; a release that answers 500 (healthy all the same) is stopped at its
first step, its traffic back on the old containers, later tiers untouched."""

from __future__ import annotations

import json
import time

import pytest

from tests import chaos
from tests import sandbox as sb

CANARY = """
[hosts.sandbox.canary]
steps = [10, 50]
step_seconds = 4
min_requests = 5
max_error_rate = 0.01
"""
TIER1 = ("server", "property")  # hosts.toml's first tier


def env(tmp_path, one_tier: bool = False) -> dict[str, str]:
    path = sb.hosts_file(tmp_path, extra=CANARY)
    if one_tier:  # all four apps in one tier: one canary for the four
        text = path.read_text().replace("[hosts.sandbox]\n", f"[hosts.sandbox]\nrollout = [{sb.APPS!r}]\n", 1)
        path.write_text(text.replace("'", '"'))
    return {"FABRIC_HOSTS_FILE": str(path)}


def seen(report: dict, svc: str) -> dict[str, tuple[float, float]]:
    """Each version's first and last answer over the service's URLs (/fast and /slow): the steps
    share a service's requests, whatever their route."""
    out: dict[str, tuple[float, float]] = {}
    for u in report["urls"]:
        if f"/{svc}/" in u["url"]:
            for v in u["versions"]:
                first, last = out.get(v["version"], (v["first_s"], v["last_s"]))
                out[v["version"]] = (min(first, v["first_s"]), max(last, v["last_s"]))
    return out


def back_as_before(before: dict[str, list[str]], old: dict[str, str]) -> None:
    """The very containers that served before, and nothing else, answer with their version."""
    for svc in sb.APPS:
        assert [c.id for c in sb.containers(svc, all_states=True)] == before[svc], svc
        assert all(sb.get(f"/{svc}/fast").text.startswith(f"{svc} {old[svc]}") for _ in range(5))


def test_a_good_release_is_seen_beside_the_old_during_the_steps_then_alone(settled, tmp_path):
    old = {svc: sb.containers(svc)[0].version for svc in sb.APPS}  # each app's, as earlier tests left them
    new = sb.publish()
    probe = sb.Verify("--host", "sandbox", json_path=tmp_path / "verify.json")
    res = sb.fab(
        "deploy",
        "--no-verify",
        "--watch",
        "3",
        "--json",
        str(tmp_path / "d.json"),
        env=env(tmp_path, True),
        timeout=400,
    )
    rc, out, report = probe.stop()
    text = res.stdout + res.stderr
    assert res.returncode == 0, text
    assert "watch server, property, identity, profile-server" in text and "3 s clean: " in text, text
    assert rc == 0 and report["failures"] == 0, out
    steps = [
        s for s in json.loads((tmp_path / "d.json").read_text())["hosts"][0]["steps"] if s["name"].startswith("canary ")
    ]
    both = "server, property, identity, profile-server"
    assert [s["name"] for s in steps] == [f"canary {both} 10 %", f"canary {both} 50 %"], text
    # each step judged real answers of the new containers: each service's new ones answered in
    # it, min_requests (5) of them, or fewer and the step passed after its quiet limit saying so
    # (the figures add up over the steps; random weighted choice leaves a 10 % share uneven)
    before: dict[str, int] = {}
    for s, percent in zip(steps, (10, 50)):
        assert s["status"] == "ok", s
        answers = {part.split()[0]: int(part.split()[2]) for part in s["detail"].split("; ")}
        for svc, n in answers.items():
            assert n > before.get(svc, 0), (svc, s)
            quiet = any(
                svc in ln.split(f"canary {percent} %: ", 1)[1].split(" answered fewer than ")[0].split(", ")
                for ln in text.splitlines()
                if f"canary {percent} %: " in ln and "passed unjudged" in ln
            )
            assert n - before.get(svc, 0) >= 5 or quiet, (svc, s, text)
        before = answers
    for svc in sb.APPS:  # old and new answered side by side for seconds, not only at an instant
        versions = seen(report, svc)
        assert versions[old[svc]][1] - versions[new][0] >= 4, (svc, versions)
    for svc in sb.APPS:  # then only the new answer (the host retires the old ones on its own)
        assert all(sb.get(f"/{svc}/fast").text.startswith(f"{svc} {new}") for _ in range(10))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any([c.version for c in sb.containers(s)] != [new] for s in sb.APPS):
        time.sleep(0.5)
    assert all([c.version for c in sb.containers(svc)] == [new] for svc in sb.APPS)


def test_a_release_answering_500_is_stopped_at_its_first_step(settled, tmp_path):
    before = {svc: [c.id for c in sb.containers(svc)] for svc in sb.APPS}
    old = {svc: sb.containers(svc)[0].version for svc in sb.APPS}  # each app's, as earlier tests left them
    sb.publish("--fail-after", "0")
    try:
        stopped_at_first_step(tmp_path, before, old)
    finally:
        sb.restore_latest(before)


def stopped_at_first_step(tmp_path, before: dict[str, list[str]], old: dict[str, str]) -> None:
    probe = sb.Verify("--host", "sandbox", json_path=tmp_path / "verify.json")
    res = sb.fab("deploy", "--no-verify", "--json", str(tmp_path / "d.json"), env=env(tmp_path), timeout=400)
    rc, out, report = probe.stop()
    text = res.stdout + res.stderr
    assert res.returncode == 1, text
    assert "canary: server: " in text or "canary: property: " in text, text
    assert "answers from the new containers failed" in text and "more than max_error_rate 1.0%" in text, text
    doc = json.loads((tmp_path / "d.json").read_text())
    assert doc["result"] in ("failed", "aborted")
    names = [s["name"] for s in doc["hosts"][0]["steps"]]
    assert "canary server, property 10 %" in names and "canary server, property 50 %" not in names, names
    # the old containers serve, no new one is left, the later tiers were never touched
    for svc in sb.APPS:
        assert [c.id for c in sb.containers(svc, all_states=True)] == before[svc], svc
        assert [c.version for c in sb.containers(svc)] == [old[svc]]
    # the canary really got traffic: some requests to the first tier failed, no more than its share
    failed, sent = dict.fromkeys(sb.APPS, 0), dict.fromkeys(sb.APPS, 0)
    for u in report["urls"]:  # /SERVICE/fast and /SERVICE/slow
        failed[u["url"].split("/")[3]] += u["failures"]
        sent[u["url"].split("/")[3]] += u["requests"]
    assert sum(failed[s] for s in TIER1) > 0, failed
    assert all(failed[s] == 0 for s in sb.APPS if s not in TIER1), failed
    assert sum(failed[s] for s in TIER1) <= 0.1 * sum(sent[s] for s in TIER1), (failed, sent)
    # the breach is in the journal with its figures
    history = sb.fab("history", "-n", "1", env=env(tmp_path))
    assert " failed " in history.stdout, history.stdout
    journal = sb.as_host_user("cat ~/.zdd/journal/*.jsonl").stdout.splitlines()
    breach = json.loads(next(line for line in reversed(journal) if '"canary-breach"' in line))
    assert breach["service"] in TIER1 and breach["new"]["5xx"] >= 5 and breach["max_error_rate"] == 0.01


@pytest.mark.parametrize("how", ["SIGTERM", "ssh-drop"])
def test_an_interruption_in_a_canary_step_sends_the_traffic_back_before_removing_the_new(settled, tmp_path, how):
    """`deploy --canary 10`, interrupted while the new containers have 10 % of the traffic: the
    host sends it back to the old ones, waits for what is in flight, then removes the new ones
    (no request fails); the next deploy converges."""
    o = chaos.under_load(f"{how} in a canary step", tmp_path, chaos.canary_interrupted(how))
    assert "never reached" not in " ".join(o.notes), o.notes
    assert "after the interruption only the old version ran" in o.notes, o.notes
    assert o.exits[0] != 0 and o.exits[-1] == 0, o.notes
    assert o.dropped == 0 and o.requests > 100, f"{o.failed} of {o.requests} requests failed: {o.notes}"
    assert o.containers == {svc: 1 for svc in sb.APPS} and o.versions_ok and o.lock_free


WATCH = """
[hosts.sandbox.watch]
seconds = 30
min_requests = 5
max_error_rate = 0.01
"""


def test_a_release_that_fails_after_its_switch_is_switched_back_by_the_watch(settled, tmp_path):
    """The new version passes its healthcheck and answers well for 6 s, then 500: the watch
    after the switch sees it and sends the traffic straight back to the old containers, which
    were kept running out of rotation; the new ones are removed."""
    before = {svc: [c.id for c in sb.containers(svc)] for svc in sb.APPS}
    old = {svc: sb.containers(svc)[0].version for svc in sb.APPS}  # each app's, as earlier tests left them
    sb.publish("--fail-after", "6")
    try:
        path = sb.hosts_file(tmp_path, extra=WATCH)
        text = path.read_text().replace("[hosts.sandbox]\n", f"[hosts.sandbox]\nrollout = [{sb.APPS!r}]\n", 1)
        path.write_text(text.replace("'", '"'))
        probe = sb.Verify("--host", "sandbox", json_path=tmp_path / "verify.json")
        res = sb.fab("deploy", "--no-verify", env={"FABRIC_HOSTS_FILE": str(path)}, timeout=400)
        rc, out, report = probe.stop()
    finally:
        sb.restore_latest(before)
    text = res.stdout + res.stderr
    assert res.returncode == 1, text
    assert "watch: " in text and "answers from the new containers failed" in text, text
    took = float(text.split("went back to the previous containers in ")[1].split(" s")[0])
    assert took <= 5, text
    back_as_before(before, old)
    assert report["failures"] > 0  # the breach itself, seen by clients
    assert report["failures"] <= 0.25 * report["total"], (report["failures"], report["total"])
    journal = sb.as_host_user("cat ~/.zdd/journal/*.jsonl").stdout
    assert '"event":"watch-breach"' in journal and '"event": "returned"' in journal
    assert sb.fab("status").returncode == 0


def test_a_tier_that_fails_while_later_tiers_start_is_switched_back_at_once(settled, tmp_path):
    """Three tiers under a watch: tier 1's release answers 500 from 4 s after it started, while
    tiers 2 and 3 start. The watch judges the tiers switched so far as each later one starts,
    so tier 1 goes back then, not after the last switch (measured before: 540 failed requests
    with canary steps); the tier starting at that moment is undone, later ones never start."""
    before = {svc: [c.id for c in sb.containers(svc)] for svc in sb.APPS}
    old = {svc: sb.containers(svc)[0].version for svc in sb.APPS}
    sb.publish("--fail-after", "4")
    try:
        path = sb.hosts_file(tmp_path, extra=WATCH)
        probe = sb.Verify("--host", "sandbox", json_path=tmp_path / "verify.json")
        res = sb.fab("deploy", "--no-verify", "--json", str(tmp_path / "d.json"), env={"FABRIC_HOSTS_FILE": str(path)})
        rc, out, report = probe.stop()
    finally:
        sb.restore_latest(before)
    text = res.stdout + res.stderr
    assert res.returncode == 1, text
    assert "watch, while a later tier started: " in text and "answers from the new containers failed" in text, text
    steps = {s["name"]: s["status"] for s in json.loads((tmp_path / "d.json").read_text())["hosts"][0]["steps"]}
    assert steps["rollout server, property"] == "ok", steps  # switched, then sent back
    assert steps.get("rollout profile-server") != "ok", steps  # the last tier never switched
    assert not any(name.startswith("watch ") for name in steps), steps  # not the watch after the last switch
    back_as_before(before, old)
    times = sorted(f["t"] for f in report["failure_list"])
    assert times, "the release never failed a request: the test proves nothing"
    assert times[-1] - times[0] < 8, times  # judged about every second, switched back in one load
    journal = sb.as_host_user("cat ~/.zdd/journal/*.jsonl").stdout
    assert '"event":"watch-breach"' in journal and '"event": "returned"' in journal
