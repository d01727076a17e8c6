"""The journal on the host: rollback to an earlier run's images after `:latest` moved and a
prune, `fab history` and `fab status`."""

from __future__ import annotations

import re

from tests import sandbox as sb


def test_rollback_after_a_prune_returns_to_the_previous_images_under_load(settled, tmp_path):
    v2 = sb.publish()
    assert sb.fab("deploy", "--no-verify", "--wait").returncode == 0
    v3 = sb.publish()
    assert sb.fab("deploy", "--no-verify", "--wait").returncode == 0
    assert all([c.version for c in sb.containers(svc)] == [v3] for svc in sb.APPS)
    assert sb.fab("prune").returncode == 0  # v2's images lost their tag: only zdd's keep tags hold them
    probe = sb.Verify("--host", "sandbox", json_path=tmp_path / "verify.json")
    res = sb.fab("rollback", "--no-verify", "--wait")
    rc, out, report = probe.stop()
    assert res.returncode == 0, res.stdout + res.stderr
    for svc in sb.APPS:
        assert [c.version for c in sb.containers(svc, all_states=True)] == [v2], svc
    assert rc == 0 and report["failures"] == 0, out
    # the three runs, newest last, each with what it changed
    hist = sb.fab("history", "-n", "3")
    assert hist.returncode == 0, hist.stderr
    rows = [ln for ln in hist.stdout.splitlines() if re.match(r"\s+\d{8}-\d{6}-\d+ ", ln)]
    assert [r.split()[4] for r in rows] == ["deploy", "deploy", "rollback"], hist.stdout
    assert all(" ok " in r and "server " in r and " → " in r for r in rows), hist.stdout
    # a later deploy moves forward again (`:latest` is pulled)
    assert sb.fab("deploy", "--no-verify", "--wait").returncode == 0
    assert all([c.version for c in sb.containers(svc)] == [v3] for svc in sb.APPS)


def test_status_matches_docker_compose_ps(settled):
    res = sb.fab("status")
    assert res.returncode == 0, res.stderr
    ps = sb.as_host_user("docker compose ps -a --format '{{.ID}} {{.Service}} {{.State}}'").stdout.split("\n")
    for line in filter(None, ps):
        cid, svc, state = line.split()
        assert re.search(rf"^(\[sandbox\])?\s+{re.escape(svc)}: {cid[:12]} {state} ", res.stdout, re.M), (
            line,
            res.stdout,
        )
    assert "proxy caddy: routes by service name" in res.stdout
    assert "lock: free" in res.stdout
    assert re.search(r"last run: \S+ .+ by \S+: ok", res.stdout), res.stdout  # kind: "deploy", "rollback to RUN"
