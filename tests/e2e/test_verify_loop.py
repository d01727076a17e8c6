"""inv verify catches today's deploy dropping requests."""

import re

from tests import sandbox as sb


def test_naive_force_recreate_is_reported_as_failures(settled, tmp_path):
    probe = sb.Verify("--host", "sandbox", json_path=tmp_path / "verify.json")
    res = sb.run([str(sb.ROOT / "scripts" / "sandbox.sh"), "naive-redeploy"])
    rc, out, report = probe.stop()
    assert res.returncode == 0, res.stderr
    assert rc == 1, out
    assert report["failures"] > 0
    assert re.search(r"FAIL \(max allowed 0\): [\d,]+ of [\d,]+ requests failed", out)
    assert "failing URLs: http://127.0.0.1:18080/" in out and "failing seconds: " in out
    failed_seconds = [row["second"] for row in report["timeline"] if row["failures"]]
    assert failed_seconds
    assert {f["url"] for f in report["failure_list"]} <= set(report["settings"]["urls"])
    assert all(f["time"] and f["reason"] for f in report["failure_list"])
    # the timeline marks the seconds that failed
    assert re.search(r"fail +\d+ .*FAIL", out) or "<--" in out
