"""The progress line of long waits: rewritten in place on a terminal, absent from a log."""

import io

from fabfile.progress import Reporter


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
