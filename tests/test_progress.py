"""The progress line of long waits: rewritten in place on a terminal, absent from a log."""

import io

from fabfile.progress import Reporter
from tests.fakes import tier_timeline


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_rewrites_one_line_on_a_terminal_and_is_cleared_by_the_next_step():
    out = Tty()
    r = Reporter("h", out=out)
    r.progress("server: 0/1 healthy, 2 s of 60")
    r.progress("server: 1/1 healthy, 3 s of 60")
    r.record("rollout server", "ok", "1 → 1", 3.0)
    text = out.getvalue()
    assert text.count("\r\x1b[2K[h] ... server: ") == 2
    assert text.endswith("\r\x1b[2K[h] ok   rollout server                  3.0s  1 → 1\n")


def test_progress_is_silent_in_a_log():
    out = io.StringIO()
    r = Reporter("h", out=out)
    r.progress("server: 0/1 healthy, 2 s of 60")
    r.record("rollout server", "ok", "", 1.0)
    assert out.getvalue() == "[h] ok   rollout server                  1.0s\n"


def test_the_summary_shows_each_tiers_timeline_after_the_steps():
    out = io.StringIO()
    r = Reporter("h", out=out)
    r.record("rollout server, property", "ok", "healthy and switched", 4.3)
    r.timeline += [tier_timeline(), tier_timeline(2, ["identity"], "mark 5 begin\nmark 5.125 pinned\nmark 5.25 up\n")]
    r.summary("deploy", ["a note"])
    lines = out.getvalue().splitlines()
    start = lines.index("  timeline (host clock, seconds from each tier's start):")
    assert lines[start - 1].startswith("  rollout server, property  ok         4.3s")
    assert lines[start + 1 :] == [
        "    tier 1 server, property: pin 0.1s · start 1.1s · boot 2.4s · wait 0.4s · switch 0.2s · drain 1.1s"
        " · stop 1.6s (7.0s, slowest: property)",
        "    tier 2 identity: pin 0.1s (0.2s)",
        "  a note",
    ]


def test_no_timeline_no_timeline_lines():
    out = io.StringIO()
    r = Reporter("h", out=out)
    r.record("pull", "ok", "", 1.0)
    r.summary("deploy")
    assert "timeline" not in out.getvalue()
