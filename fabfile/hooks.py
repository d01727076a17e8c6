"""Hooks: the team's own executables, run **where fab runs** (never on the host) at fixed
points of ``deploy`` and ``rollback`` (:mod:`fabfile.sequence`), with the run's facts in
``ZDD_*`` variables (:meth:`fabfile.release.RunFacts.env`).

They live in ``hooks.dir`` of hosts.toml (default ``.zdd/hooks``, relative to the hosts file),
one file per hook, named:

* ``pre-deploy`` / ``pre-rollback`` – after validate, before the lock and any change;
* ``pre-tier`` / ``post-tier`` – before a tier that rolls something starts / once it switched;
* ``post-deploy`` / ``post-rollback`` – once the run is over (lock released), whatever its
  result (``ZDD_RESULT``).

A pre-hook (``pre-deploy``, ``pre-rollback``, ``pre-tier``) that exits non-zero or runs past
``hooks.timeout`` stops the run: exit 1, the hook named with its last output line (before a
tier, the tiers that switched stay switched). A post-hook's failure is one warning line and a
``warned`` step; it never turns a good run bad. A missing file is no hook; a file that is not
executable is refused (pre) or warned about (post). Output (stdout and stderr) is printed as it
comes, each line prefixed with the host and the hook's name, secrets masked. Hooks run in
fab's working directory with fab's environment plus the ``ZDD_*`` variables; a dry run lists
the hooks it would run, and ``--skip-hooks`` runs none.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from .outcome import redact
from .release import RunFacts
from .runner import BadInput, StepFailed
from .session import Session, secrets

NAMES = ("pre-deploy", "post-deploy", "pre-rollback", "post-rollback", "pre-tier", "post-tier")
KILL_GRACE = 3.0  # seconds between SIGTERM and SIGKILL of a hook past its timeout


def path_of(s: Session, name: str) -> Path | None:
    """The hook's file, when there is one."""
    path = Path(s.host.hooks.dir) / name
    return path if path.is_file() else None


def before(
    s: Session, name: str, facts: RunFacts, enabled: bool = True, tier: tuple[int, list[str]] | None = None
) -> None:
    """Run a pre-hook; StepFailed (the run stops) when it fails or times out."""
    ran = _hook(s, name, facts, enabled, tier)
    if ran is None:
        return
    code, last = ran
    if code != 0:
        why = f"timed out after {s.host.hooks.timeout:g}s" if code is None else f"exit {code}"
        raise StepFailed(f"hook {name} failed ({why})" + (f": {last}" if last else ""))


def after(
    s: Session, name: str, facts: RunFacts, enabled: bool = True, tier: tuple[int, list[str]] | None = None
) -> None:
    """Run a post-hook; a failure is reported (a ``warned`` step), never raised."""
    try:
        _hook(s, name, facts, enabled, tier, post=True)
    except StepFailed as e:  # not executable
        s.report.record(f"hook {name}", "warned", str(e))


def _hook(
    s: Session, name: str, facts: RunFacts, enabled: bool, tier: tuple[int, list[str]] | None, post: bool = False
) -> tuple[int | None, str] | None:
    """Run one hook as a step: (exit code or None when it timed out, its last output line);
    None when there is no such hook, hooks are skipped, or a dry run."""
    path = path_of(s, name)
    if not enabled or path is None:
        return None
    step = f"hook {name}" + (f" ({', '.join(n for n in tier[1] if n in facts.services)})" if tier else "")
    if not os.access(path, os.X_OK):
        problem = f"hook {name}: {path} is not executable (chmod +x it, or remove it)"
        if post:
            raise StepFailed(problem)
        raise BadInput(problem)
    env = facts.env(tier)
    if s.r.dry_run:
        s.report.skip(step, f"dry run: would run {path} with " + " ".join(sorted(env)))
        return None
    hidden = set(secrets(s.host))
    t0 = time.monotonic()
    code, last = run(
        path,
        env,
        s.host.hooks.timeout,
        lambda line: print(f"[{s.name}] {name}: {redact(line, hidden)}", file=s.r.out, flush=True),
    )
    last = redact(last, hidden)[:200]
    why = "ok" if code == 0 else f"timed out after {s.host.hooks.timeout:g}s" if code is None else f"exit {code}"
    status = "ok" if code == 0 else "warned" if post else "failed"
    s.report.record(step, status, why + (f": {last}" if last else ""), time.monotonic() - t0)
    return code, last


def run(path: Path, env: dict[str, str], timeout: float, say) -> tuple[int | None, str]:
    """Run one executable with fab's environment plus ``env``, passing each line of its output
    (stdout and stderr) to ``say`` as it comes; (exit code, last non-empty line). Past
    ``timeout`` it is stopped (its whole process group: SIGTERM, then SIGKILL) and the code is
    None. An interruption (Ctrl-C, SIGTERM of fab) stops it too, and goes on."""
    proc = subprocess.Popen(
        [str(path)],
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    last = [""]

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            if line.strip():
                last[0] = line.strip()
            say(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code: int | None = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        code = None
    except BaseException:
        _stop(proc)
        raise
    reader.join(timeout=2)
    return code, last[0]


def _stop(proc: subprocess.Popen) -> None:
    """Stop a hook and whatever it started."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
