"""A command run on a host: its argv, the directory it runs in, what it reads on stdin (a
secret never printed), and how a shipped host program (``fabfile/remote/*.sh``) becomes one.

:meth:`Command.render` is the only place a shell string is made, and it quotes every value;
:meth:`Command.describe` is what a dry run prints (secrets masked, a script by its name).
The builders of every command zdd runs are in :mod:`fabfile.commands` (and
:mod:`fabfile.commands_swarm`).
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from importlib import resources


@dataclass(frozen=True)
class Stdin:
    """What a command reads on stdin. ``secret`` input is never printed or logged."""

    text: str = field(repr=False)  # a secret must not leak through repr() into logs or test diffs
    label: str = ""  # what a dry run shows instead of the text
    secret: bool = False


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    cwd: str | None = None
    stdin: Stdin | None = None
    then: tuple[Command, ...] = field(default=())  # run after this one, only if it succeeded
    shown: tuple[str, ...] | None = None  # argv as a dry run prints it (a script's text by its name)
    limit: int | None = None  # seconds before the host kills it (coreutils `timeout`)
    dry_run_output: tuple[str, ...] = ()  # what a dry run pretends the host printed (placeholders)
    deadline: int | None = None  # seconds zdd waits for its end (default COMMAND_DEADLINE)
    explain: Command | None = field(default=None, repr=False)  # the same in explain mode (lib.sh): changes nothing

    def render(self) -> str:
        """The shell text sent to the host: ``cd DIR && argv [&& next ...]``, all quoted."""
        return self._join(self.argv, [c.render() for c in self.then])

    def _join(self, argv: tuple[str, ...], rest: list[str]) -> str:
        parts = []
        if self.cwd:
            parts.append("cd " + quote_path(self.cwd))
        if self.limit:
            argv = ("timeout", "--kill-after=10", str(self.limit), *argv)
        parts.append(shlex.join(argv))
        return " && ".join(parts + rest)

    def describe(self) -> str:
        """The command as a dry run prints it: stdin shown by its label, secrets masked,
        a shipped script by its name."""
        text = self._join(self.shown or self.argv, [c.describe() for c in self.then])
        if self.stdin is not None:
            text += f"  < {self.stdin.label}"
        return text

    def and_then(self, *more: Command) -> Command:
        return dataclasses.replace(self, then=self.then + more)


def quote_path(path: str) -> str:
    """Quote a remote path, keeping a leading ``~`` or ``~/`` expandable by the shell."""
    if path == "~":
        return "~"
    if path.startswith("~/"):
        rest = path[2:]
        return "~/" + shlex.quote(rest) if rest else "~/"
    return shlex.quote(path)


def script(name: str) -> str:
    """The text of a host-side helper script shipped in fabfile/remote/."""
    return resources.files("fabfile").joinpath("remote", name).read_text()


def host_script(name: str, *args: str, cwd: str | None = None) -> Command:
    """Run a shipped POSIX sh script on the host (fed on stdin, so nothing is installed)."""
    return Command(("sh", "-s", "--", *args), cwd=cwd, stdin=Stdin(script(name), f"fabfile/remote/{name}"))


# Parts a host program is sent with, between lib.sh and its own text.
PARTS = {"tier.sh": ("proxy.sh",)}


def program(name: str) -> str:
    """What runs a host program: the preamble every one shares (fabfile/remote/lib.sh), the
    parts it uses (PARTS), then its text."""
    return "\n".join(script(part) for part in ("lib.sh", *PARTS.get(name, ()), name))


# The host programs that can explain themselves (ZDD_EXPLAIN=1, see fabfile/remote/lib.sh): they
# read the host, change nothing and print the commands they would run.
EXPLAINS = frozenset({"tier.sh", "restore.sh", "finish.sh", "recover.sh", "pull.sh"})
EXPLAIN_ENV = "ZDD_EXPLAIN=1"


def host_program(
    name: str, *args: str, cwd: str | None = None, stdin: Stdin | None = None, dry_run_output: tuple[str, ...] = ()
) -> Command:
    """Run a shipped POSIX sh script, after the shared preamble, as ``sh -c 'LIB SCRIPT' NAME
    ARGS``: nothing is installed and stdin stays free (for a secret, a config, or a conversation
    with zdd). Its ``explain`` is the same run in explain mode; a secret on stdin is not sent to it."""
    argv, shown = ("sh", "-c", program(name), name, *args), ("sh", "-c", f"<fabfile/remote/{name}>", name, *args)
    explain = None
    if name in EXPLAINS:
        explain = Command(
            ("env", EXPLAIN_ENV, *argv),
            cwd=cwd,
            stdin=None if stdin and stdin.secret else stdin,
            shown=("env", EXPLAIN_ENV, *shown),
        )
    return Command(argv, cwd=cwd, stdin=stdin, shown=shown, dry_run_output=dry_run_output, explain=explain)
