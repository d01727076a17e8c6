"""Guarded releases: canary steps at the proxy, judged on what the proxy saw per upstream.

Between a tier's *health* and its *switch* (fabfile/engines/compose_rollout.py), each canary
step loads a config in which every rolling service's upstreams are its old and its new
containers' addresses, each repeated by its weight under Caddy's ``random`` policy, so that the new
ones get the step's share of the requests. The same config adds an access log of its own
(a file in the proxy container) with a ``log_append`` field (Caddy 2.8+) naming the upstream
that answered each request, so the host can count, per upstream address, the answers, the
5xx among them (Caddy's own 502s for an upstream that refused count too) and their latency
(a histogram). zdd judges those counts every second (:func:`judge`); a breach sends the tier
back to its old containers.

The configs are built by :class:`fabfile.proxy.Routing`; tier.sh loads them and counts the
log (fabfile/remote/proxy.sh); what is here, the judgement, is pure and unit-tested.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import zip_longest

from .config_model import CanaryConfig

QUIET_STEPS = 3  # a step whose new containers stay under min_requests passes after this many step_seconds
# upper edges (ms) of the latency histogram tier.sh counts; one more bucket above the last
BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


@dataclass(frozen=True)
class Counts:
    """What the proxy logged for some upstream addresses: answers, 5xx, latency histogram."""

    total: int = 0
    errors: int = 0
    buckets: tuple[int, ...] = ()

    def __add__(self, other: Counts) -> Counts:
        buckets = tuple(x + y for x, y in zip_longest(self.buckets, other.buckets, fillvalue=0))
        return Counts(self.total + other.total, self.errors + other.errors, buckets)

    @property
    def rate(self) -> float:
        return self.errors / self.total if self.total else 0.0

    def p95_ms(self) -> float | None:
        """The upper edge of the bucket holding the 95th percentile (the last edge × 2 above it)."""
        if not self.total or not self.buckets:
            return None
        rank, seen = math.ceil(0.95 * self.total), 0
        for i, n in enumerate(self.buckets):
            seen += n
            if seen >= rank:
                return float(BUCKETS_MS[i]) if i < len(BUCKETS_MS) else BUCKETS_MS[-1] * 2.0
        return BUCKETS_MS[-1] * 2.0


def parse_stats(lines: list[str]) -> dict[str, Counts]:
    """tier.sh's ``stats ADDR TOTAL ERRORS B0 B1 ...`` lines, by upstream address."""
    out: dict[str, Counts] = {}
    for line in lines:
        parts = line.split()
        if len(parts) < 4 or parts[0] != "stats" or not all(p.isdigit() for p in parts[2:]):
            continue
        out[parts[1]] = out.get(parts[1], Counts()) + Counts(
            int(parts[2]), int(parts[3]), tuple(int(p) for p in parts[4:])
        )
    return out


def total(stats: dict[str, Counts], addrs: list[str]) -> Counts:
    out = Counts()
    for a in addrs:
        out = out + stats.get(a, Counts())
    return out


def judge(service: str, new: Counts, old: Counts, c: CanaryConfig) -> str | None:
    """A breach of the canary's thresholds by ``service``'s new containers, described with
    its figures; None while there is none (or too few answers to judge)."""
    if new.total < max(c.min_requests, 1):
        return None
    if new.rate > c.max_error_rate:
        return (
            f"{service}: {new.errors} of {new.total} answers from the new containers failed "
            f"({new.rate:.1%}, more than max_error_rate {c.max_error_rate:.1%})"
        )
    if c.max_latency_ratio and old.total >= c.min_requests:
        pn, po = new.p95_ms(), old.p95_ms()
        if pn is not None and po and pn / po > c.max_latency_ratio:
            return (
                f"{service}: the new containers' p95 latency is {pn:.0f} ms against {po:.0f} ms for the old "
                f"(× {pn / po:.1f}, more than max_latency_ratio {c.max_latency_ratio:g})"
            )
    return None


@dataclass
class Steps:
    """When a canary step is over: ``step_seconds`` passed and each service's new containers
    answered ``min_requests`` in it, or QUIET_STEPS × ``step_seconds`` passed (a quiet
    service: noted, not failed)."""

    config: CanaryConfig
    started: float = 0.0
    at_start: dict[str, int] = field(default_factory=dict)  # service -> new answers when the step began

    def elapsed(self, now: float) -> float:
        return now - self.started

    def begin(self, now: float, new_totals: dict[str, int]) -> None:
        self.started, self.at_start = now, dict(new_totals)

    def over(self, now: float, new_totals: dict[str, int]) -> tuple[bool, list[str]]:
        """(over, the quiet services) at ``now``."""
        elapsed = now - self.started
        if elapsed < self.config.step_seconds:
            return False, []
        short = [s for s, n in new_totals.items() if n - self.at_start.get(s, 0) < self.config.min_requests]
        if not short:
            return True, []
        if elapsed >= QUIET_STEPS * self.config.step_seconds:
            return True, short
        return False, []
