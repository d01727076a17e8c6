"""The layer that runs commands on a host (or prints them, in a dry run).

Steps and engines build :class:`~fabfile.commands.Command` objects and hand them here:

* :meth:`Runner.read` – a probe that changes nothing (``ps``, ``inspect``, ``caddy adapt``);
  it runs even in a dry run, so the printed plan is the one the host would really get.
* :meth:`Runner.change` – anything that changes the host; a dry run prints it instead. A host
  program that can explain itself (``Command.explain``, fabfile/remote/lib.sh) is run in explain
  mode instead: it reads the host's real state, changes nothing, and prints the commands it
  would run (``run``/``wait``/``load`` lines), which the dry run prints.

Secrets reach the host only on stdin (``Stdin(secret=True)``) and are never printed.
"""

from __future__ import annotations

import os
import select
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from .command import Command
from .config_limits import COMMAND_DEADLINE, OUTPUT_GRACE
from .progress import emit


class StepFailed(Exception):
    """An expected failure of a step: one line, plus optional detail for the operator."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail


class BadInput(StepFailed):
    """The input is wrong (hosts.toml, the host's compose project, a missing secret): found
    before anything changed; exit 2."""


@dataclass
class CommandResult:
    ok: bool
    stdout: str = ""
    stderr: str = ""
    exited: int = 0

    def first_error_line(self) -> str:
        for text in (self.stderr, self.stdout):
            lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
            if lines:
                return lines[-1][:300]
        return f"exit status {self.exited}"


class Executor(Protocol):
    """Runs one shell command on the host, feeding ``stdin`` and then closing it."""

    def __call__(self, command: str, stdin: str | None, deadline: float | None = None) -> CommandResult: ...


class SshExecutor:
    """Runs commands on an open Fabric connection's SSH transport, one channel each.

    Invoke's ``in_stream`` feeds stdin a byte at a time with a 10 ms sleep between reads
    (a 1.5 KB script took 15 s), so stdin is sent here in one write, then EOF.
    """

    explains = True  # a dry run runs host programs in explain mode through it (see Runner)

    def __init__(self, cxn: Any):
        self.cxn = cxn

    def __call__(self, command: str, stdin: str | None, deadline: float | None = None) -> CommandResult:
        """Run a command; after ``deadline`` seconds without its end (a connection that died
        half-open, a host that hangs) give up on it: a failed result, never a wait forever."""
        chan = self._channel(command)
        if stdin:
            chan.sendall(stdin.encode())
        chan.shutdown_write()
        return _ChannelPending(chan).wait(deadline)

    def converse(self, command: str) -> Conversation:
        """Start a command whose stdin stays open: lines go both ways while it runs."""
        return _ChannelConversation(self._channel(command))

    def _channel(self, command: str) -> Any:
        self.cxn.open()
        chan = self.cxn.client.get_transport().open_session()
        chan.exec_command(command)
        return chan


class _ChannelPending:
    def __init__(self, chan: Any):
        self.chan = chan
        self.out, self.err = bytearray(), bytearray()
        self.result: CommandResult | None = None
        self._exited_at: float | None = None

    def _ended(self) -> bool:
        """All of the command's output is in. sshd sends the exit status as the command exits,
        while the rest of its output may still be in the pipe (a large `docker inspect` arrived
        cut): the end is EOF after the exit status, or, when a child the command left behind
        holds its output open, OUTPUT_GRACE seconds of nothing after the exit status."""
        if self.chan.recv_ready() or self.chan.recv_stderr_ready() or not self.chan.exit_status_ready():
            return False
        if getattr(self.chan, "eof_received", False):
            return True
        if self._exited_at is None:
            self._exited_at = time.monotonic()
        return time.monotonic() - self._exited_at >= OUTPUT_GRACE

    def _drain(self) -> None:
        while self.chan.recv_ready():
            self.out += self.chan.recv(65536)
        while self.chan.recv_stderr_ready():
            self.err += self.chan.recv_stderr(65536)

    def wait(self, deadline: float | None = None) -> CommandResult:
        if self.result is None:
            end = time.monotonic() + deadline if deadline else None
            try:
                while True:
                    select.select([self.chan], [], [], 0.5)
                    self._drain()
                    if self._ended():
                        break
                    if end is not None and time.monotonic() > end:
                        self.result = CommandResult(
                            ok=False,
                            stdout=self.out.decode(errors="replace"),
                            stderr=f"no answer from the host within {deadline:.0f} s",
                            exited=-1,
                        )
                        return self.result
                code = self.chan.recv_exit_status()
            finally:
                self.chan.close()
            self.result = CommandResult(
                ok=code == 0,
                stdout=self.out.decode(errors="replace"),
                stderr=self.err.decode(errors="replace"),
                exited=code,
            )
        return self.result


class Conversation(Protocol):
    """A command that reads lines from zdd and prints lines back while it runs."""

    def send(self, line: str) -> None: ...

    def readline(self, timeout: float) -> str | None: ...  # None: it ended; "" : nothing yet

    def close(self) -> CommandResult: ...

    def close_early(self) -> None: ...  # hang up; the command goes on by itself on the host


class _ChannelConversation(_ChannelPending):
    def __init__(self, chan: Any):
        super().__init__(chan)
        self.pos = 0

    def send(self, line: str) -> None:
        try:
            self.chan.sendall((line + "\n").encode())
        except OSError:
            pass  # it ended; the next readline says so

    def readline(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while True:
            self._drain()
            nl = self.out.find(b"\n", self.pos)
            if nl >= 0:
                line = self.out[self.pos : nl].decode(errors="replace")
                self.pos = nl + 1
                return line
            if self._ended():
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return ""
            select.select([self.chan], [], [], min(left, 0.5))

    def close(self) -> CommandResult:
        try:
            self.chan.shutdown_write()
        except OSError:
            pass
        return self.wait()

    def close_early(self) -> None:
        """Hang up without waiting for the end: the command goes on by itself on the host."""
        try:
            self.chan.close()
        except OSError:
            pass


class _Scripted:
    """A dry run's (or a plain executor's) conversation: the lines the command's builder
    says the host would print, played back; what is sent is printed, not run."""

    def __init__(self, lines: tuple[str, ...], echo: Any = None):
        self.lines = list(lines)
        self.echo = echo

    def send(self, line: str) -> None:
        if self.echo:
            self.echo(line)

    def readline(self, timeout: float) -> str | None:
        return self.lines.pop(0) if self.lines else None

    def close(self) -> CommandResult:
        return CommandResult(ok=True)

    def close_early(self) -> None:
        return None


EXPLAINED = ("run", "wait", "load")  # the words of a host program's explanation (fabfile/remote/lib.sh)


class _Explaining:
    """A dry run's conversation with a host program in explain mode: its explanation lines are
    printed as they come, the rest (the protocol, with placeholders) is read by zdd as usual."""

    def __init__(self, conv: Conversation, show: Any, echo: Any):
        self.conv, self.show, self.echo = conv, show, echo

    def send(self, line: str) -> None:
        self.echo(line)
        self.conv.send(line)

    def readline(self, timeout: float) -> str | None:
        while True:
            line = self.conv.readline(timeout)
            if not line or line.split(" ", 1)[0] not in EXPLAINED:
                return line
            self.show(line)

    def close(self) -> CommandResult:
        while (line := self.conv.readline(5.0)) is not None:
            if line.split(" ", 1)[0] in EXPLAINED:
                self.show(line)
        return self.conv.close()

    def close_early(self) -> None:
        self.close()  # an explanation ends by itself: read it to the end


@dataclass
class Runner:
    execute: Executor
    host: str
    dry_run: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    history: list[str] = field(default_factory=list)  # every command, as described (masked)
    remote_commands: int = 0  # commands really sent to the host

    def _exec(self, cmd: Command) -> CommandResult:
        self.history.append(cmd.describe())
        self.remote_commands += 1
        t0 = time.monotonic()
        deadline = cmd.deadline or COMMAND_DEADLINE
        res = self.execute(cmd.render(), cmd.stdin.text if cmd.stdin is not None else None, deadline)
        if os.environ.get("ZDD_TRACE"):
            emit(
                f"[{self.host}] trace {time.monotonic() - t0:5.2f}s exit {res.exited}: {cmd.describe()[:160]}",
                file=sys.stderr,
            )
        return res

    def read(self, cmd: Command, what: str | None = None) -> str:
        """Run a read-only probe; its stdout, or StepFailed naming ``what``."""
        res = self._exec(cmd)
        if not res.ok:
            raise StepFailed(f"{what or cmd.argv[0]} failed: {res.first_error_line()}", res.stdout + res.stderr)
        return res.stdout

    def probe(self, cmd: Command) -> CommandResult:
        """Run a read-only probe and return its outcome, failed or not."""
        return self._exec(cmd)

    def _would_run(self, cmd: Command) -> CommandResult:
        """A dry run's stand-in for a change: printed (secrets masked), counted as succeeded,
        answering what its builder says the host would print."""
        self.history.append(cmd.describe())
        emit(f"[{self.host}] would run: {cmd.describe()}", file=self.out)
        return CommandResult(ok=True, stdout="".join(line + "\n" for line in cmd.dry_run_output))

    def _explains(self, cmd: Command) -> bool:
        return cmd.explain is not None and bool(getattr(self.execute, "explains", False))

    def _show(self, line: str) -> None:
        """One line of a host program's explanation, as the dry run prints it."""
        word, _, rest = line.partition(" ")
        if word == "run":
            self.history.append(rest)
        emit(f"[{self.host}] would {word}: {rest}", file=self.out)

    def _explain(self, cmd: Command) -> CommandResult:
        """A dry run of a host program that explains itself: run in explain mode (it reads the
        host and changes nothing), its explanation printed; answers the rest of what it printed
        (or, when it printed nothing else, what its builder says the host would print)."""
        assert cmd.explain is not None
        emit(f"[{self.host}] {cmd.argv[3]} explains (changing nothing):", file=self.out)
        res = self._exec(cmd.explain)
        rest = []
        for line in res.stdout.splitlines():
            if line.split(" ", 1)[0] in EXPLAINED:
                self._show(line)
            else:
                rest.append(line)
        if not res.ok:
            self.note(f"could not explain {cmd.argv[3]}: {res.first_error_line()}")
            return self._would_run(cmd)
        return CommandResult(ok=True, stdout="".join(line + "\n" for line in rest or cmd.dry_run_output))

    def change(self, cmd: Command, what: str | None = None, check: bool = True) -> CommandResult:
        """Run a command that changes the host; in a dry run print it (or its explanation by
        the host) and pretend success."""
        if self.dry_run:
            return self._explain(cmd) if self._explains(cmd) else self._would_run(cmd)
        res = self._exec(cmd)
        if check and not res.ok:
            raise StepFailed(
                f"{what or ' '.join(cmd.argv[:3])} failed: {res.first_error_line()}", (res.stdout + res.stderr).strip()
            )
        return res

    def converse(self, cmd: Command, labels: dict[str, str] | None = None) -> Conversation:
        """Start a command that talks with zdd over stdin/stdout (its stdin label says what
        is sent). A dry run prints it and plays back ``cmd.dry_run_output``; what zdd would
        send is printed by the ``labels`` of its first word."""
        if self.dry_run:

            def echo(line: str) -> None:
                word = line.split(" ", 1)[0]
                emit(f"[{self.host}] would send: {(labels or {}).get(word, word)}", file=self.out)

            if self._explains(cmd) and getattr(self.execute, "converse", None) is not None:
                assert cmd.explain is not None
                emit(f"[{self.host}] {cmd.argv[3]} explains (changing nothing):", file=self.out)
                self.history.append(cmd.explain.describe())
                self.remote_commands += 1
                return _Explaining(self.execute.converse(cmd.explain.render()), self._show, echo)  # type: ignore[attr-defined]
            self._would_run(cmd)
            return _Scripted(cmd.dry_run_output, echo)
        self.history.append(cmd.describe())
        self.remote_commands += 1
        opener = getattr(self.execute, "converse", None)
        if opener is None:
            raise TypeError("this executor cannot hold a conversation")
        return opener(cmd.render())

    def note(self, text: str) -> None:
        emit(f"[{self.host}]   {text}", file=self.out)
