"""The runner's waits are bounded: a command whose end never comes (a connection that died
half-open, a host that hangs) is given up after its deadline, never waited on forever."""

from __future__ import annotations

import os
import time

from fabfile import commands as cmds
from fabfile.runner import SshExecutor


class SilentChannel:
    """An SSH channel whose command never ends and never prints (a half-open connection)."""

    def __init__(self):
        self.r, self.w = os.pipe()
        self.closed = False

    def fileno(self) -> int:
        return self.r

    def exec_command(self, command: str) -> None: ...
    def sendall(self, data: bytes) -> None: ...
    def shutdown_write(self) -> None: ...
    def recv_ready(self) -> bool:
        return False

    def recv_stderr_ready(self) -> bool:
        return False

    def exit_status_ready(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


class Cxn:
    def __init__(self, chan):
        self.chan = chan
        self.client = self

    def open(self) -> None: ...
    def get_transport(self):
        return self

    def open_session(self):
        return self.chan


def test_a_command_that_never_ends_is_given_up_after_its_deadline():
    chan = SilentChannel()
    t0 = time.monotonic()
    res = SshExecutor(Cxn(chan))("sleep infinity", None, deadline=1.0)
    assert 1.0 <= time.monotonic() - t0 < 3.0
    assert not res.ok and res.first_error_line() == "no answer from the host within 1 s" and chan.closed


def test_every_command_has_a_deadline_and_the_long_ones_a_longer_one():
    from fabfile.config import HostConfig

    h = HostConfig(name="h")
    assert cmds.pull(h, ["server"], None, 900).deadline == 960
    assert cmds.lock("k", "acquire", "me", "120", stale=1800).deadline == 180
    assert cmds.restore(h, "k", "cad", ["old"], detach=False, timeout=40).deadline == 100
    assert cmds.image_prune().deadline is None  # the runner's default (COMMAND_DEADLINE) applies


class LateOutputChannel(SilentChannel):
    """sshd's order for a command whose output outlives it: the exit status first, the rest of
    the output a moment later, then EOF."""

    def __init__(self, late: bytes, after: float, eof: bool = True):
        super().__init__()
        self.t0, self.late, self.after, self.eof = time.monotonic(), late, after, eof
        self.eof_received = False

    def _due(self) -> bool:
        return bool(self.late) and time.monotonic() - self.t0 >= self.after

    def recv_ready(self) -> bool:
        return self._due()

    def recv(self, n: int) -> bytes:
        out, self.late = self.late, b""
        self.eof_received = self.eof
        return out

    def exit_status_ready(self) -> bool:
        return True

    def recv_exit_status(self) -> int:
        return 0


def test_output_that_arrives_after_the_exit_status_is_read_to_its_end():
    chan = LateOutputChannel(b'[{"Id": "abc"}]\n', after=0.8)
    res = SshExecutor(Cxn(chan))("docker inspect abc", None, deadline=10)
    assert res.ok and res.stdout == '[{"Id": "abc"}]\n'


def test_without_eof_the_output_is_waited_for_a_bounded_grace_after_the_exit_status():
    from fabfile.config_limits import OUTPUT_GRACE

    chan = LateOutputChannel(b"late\n", after=0.8, eof=False)
    t0 = time.monotonic()
    res = SshExecutor(Cxn(chan))("leaves a child holding its output", None, deadline=30)
    assert res.ok and res.stdout == "late\n"
    assert OUTPUT_GRACE <= time.monotonic() - t0 < OUTPUT_GRACE + 3


def test_a_conversation_reads_lines_that_arrive_after_the_exit_status():
    chan = LateOutputChannel(b"switched\ndone\n", after=0.8)
    conv = SshExecutor(Cxn(chan)).converse("tier.sh")
    lines = []
    while (line := conv.readline(5)) is not None:
        lines.append(line)
    assert lines == ["switched", "done"]
