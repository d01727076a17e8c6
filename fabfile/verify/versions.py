"""Which version answered, and when: read from a reply, counted with first/last seen.

A version is found with ``VerifySettings.version_regex`` (group 1 if the regex
has groups, else the whole match). Times are seconds since the loop started,
taken when the request or message was sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(slots=True)
class VersionSeen:
    """How often a version was served and when it was first/last seen (s since start)."""

    count: int
    first: float
    last: float


def extract_version(pattern: re.Pattern[str] | None, text: str) -> str | None:
    """Search ``text``; return group 1 if the regex has groups, else group 0."""
    if pattern is None:
        return None
    match = pattern.search(text)
    if match is None:
        return None
    return match.group(1) if pattern.groups else match.group(0)


def note_version(
    versions: dict[str, VersionSeen], name: str, t: float, count: int = 1, last: float | None = None
) -> None:
    """Count ``count`` sightings of ``name`` seen from ``t`` to ``last`` (default ``t``)."""
    last = t if last is None else last
    seen = versions.get(name)
    if seen is None:
        versions[name] = VersionSeen(count, t, last)
    else:
        seen.count += count
        seen.first = min(seen.first, t)
        seen.last = max(seen.last, last)


def merge_versions(tables: Iterable[Mapping[str, VersionSeen]]) -> dict[str, VersionSeen]:
    """Several per-URL tables as one, ordered by first seen."""
    merged: dict[str, VersionSeen] = {}
    for table in tables:
        for name, seen in table.items():
            note_version(merged, name, seen.first, seen.count, seen.last)
    return by_first_seen(merged)


def by_first_seen(versions: Mapping[str, VersionSeen]) -> dict[str, VersionSeen]:
    """The same table, ordered by first seen (then by name)."""
    return dict(sorted(versions.items(), key=lambda kv: (kv[1].first, kv[0])))
