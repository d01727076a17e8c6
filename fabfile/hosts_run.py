"""Several hosts in one run: ``fab -H reminet-staging,reminet-prod deploy``.

Fabric calls a task once per host, in ``-H`` order, in one process, and does not catch what
a call raises (``fabric.Executor.execute`` is a plain loop): the ``Exit`` of a failed host
ends the whole ``fab`` run, so the hosts after it are never touched. What Fabric does not do
is tell a task about the other hosts. This module reads the host list where Fabric's
Executor reads it (the running ``fab`` program's parsed ``-H``), collects each host's
result, and says when the run is over: after the last host, or at the first failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .outcome import HostResult, not_run


def alias(host: str) -> str:
    """``user@name:port`` as Fabric's Connection keeps it in ``original_host``: ``name``."""
    name = host.rpartition("@")[2]
    if name.count(":") == 1:  # name:port (an IPv6 address has several colons)
        name = name.partition(":")[0]
    return name.strip("[]")


def cli_hosts() -> list[str]:
    """The hosts given to the running ``fab`` with ``-H``, in order; [] when there is none
    (the task was called some other way)."""
    from fabric.main import program

    try:
        value = program.core[0].args.hosts.value
    except (AttributeError, IndexError, KeyError, TypeError):
        return []
    return [alias(h) for h in value.split(",")] if value else []


@dataclass
class HostsRun:
    """One task across the hosts of one ``fab`` run."""

    title: str
    hosts: list[str]
    results: list[HostResult] = field(default_factory=list)

    @property
    def next_host(self) -> str | None:
        return self.hosts[len(self.results)] if len(self.results) < len(self.hosts) else None

    @property
    def over(self) -> bool:
        return self.next_host is None or any(not r.ok for r in self.results)

    def everyone(self) -> list[HostResult]:
        """Each host's result in ``-H`` order; hosts after a failure as "not run"."""
        return self.results + [not_run(h, self.title) for h in self.hosts[len(self.results) :]]


_current: HostsRun | None = None


def record(result: HostResult, hosts: list[str] | None = None) -> HostsRun | None:
    """Add one host's result to the run it belongs to; returns the run once it is over
    (that was the last host, or it failed), else None. ``hosts``: the run's host list
    (default: ``-H``); a host that is not next in it is a run of its own."""
    global _current
    hosts = cli_hosts() if hosts is None else hosts
    if result.host not in hosts:
        hosts = [result.host]
    run = _current
    if run is None or run.title != result.title or run.hosts != hosts or run.next_host != result.host:
        run = HostsRun(result.title, hosts if hosts[0] == result.host else [result.host])
    run.results.append(result)
    _current = None if run.over else run
    return run if run.over else None
