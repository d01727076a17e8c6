"""What a run of ``deploy`` or ``rollback`` is, for the hooks (:mod:`fabfile.hooks`) and the
release markers (:mod:`fabfile.notify`): pure data, no I/O.

:class:`RunFacts` starts with what is known before anything changes (the host, the run id,
who, the app services configured and the image references the compose files name) and
learns from the plan which services roll and the image each runs afterwards; at the end,
the result: ``ok``, ``failed``, ``aborted`` (interrupted — Ctrl-C, SIGTERM — or, later, a
canary that gave up) or ``rolled-back`` (a step that undid the release on its own, e.g. a
watch after the deploy). A step reports ``aborted``/``rolled-back`` by raising an exception
with a ``zdd_result`` attribute (see :func:`result_of`); anything else that fails is ``failed``.

**The release name** (Sentry's ``version``, ``ZDD_RELEASE``), from the services that rolled:
each one's *release tag* is its image reference's tag, or the first 12 hex digits of the
image it runs (the image ID under Compose, the repo digest under Swarm) when the tag is
missing or moves (:data:`MOVING_TAGS`: ``latest``, ``main``, ``stable``...). When every
service has the same release tag, that is the name (``v1.4.2``, ``3f2a9c1b7d0e``); otherwise
``SERVICE@TAG`` for each, sorted by service and joined by ``+`` (``identity@v2+server@v1.4.2``).
Characters Sentry refuses (``/``, ``\\``, whitespace) become ``-``; a name over 200 characters
(or one Sentry reserves: ``latest``, ``.``, ``..``) becomes ``zdd-`` and 12 hex digits of its
sha256. No service rolled: no release.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, field

from .journal import new_run_id, who

RESULTS = ("ok", "failed", "aborted", "rolled-back")
MOVING_TAGS = frozenset(
    {
        "latest",
        "main",
        "master",
        "stable",
        "edge",
        "nightly",
        "dev",
        "develop",
        "head",
        "staging",
        "production",
        "prod",
        "current",
    }
)
MAX_RELEASE = 200


def result_of(error: BaseException | None) -> str:
    """The run's result for ``ZDD_RESULT`` and the markers: ``ok`` without an error; an
    interruption is ``aborted``; an error that carries ``zdd_result`` (a canary abort, a watch
    rollback) says its own; anything else ``failed``."""
    if error is None:
        return "ok"
    own = getattr(error, "zdd_result", None)
    if own in RESULTS:
        return own
    return "aborted" if isinstance(error, KeyboardInterrupt) else "failed"


def performer(environ: dict[str, str] | None = None) -> str:
    """Who runs this: the GitHub user who started the workflow (in GitHub Actions), else the
    journal's ``user@machine``."""
    env = os.environ if environ is None else environ
    if env.get("GITHUB_ACTIONS") == "true" and env.get("GITHUB_ACTOR"):
        return f"{env['GITHUB_ACTOR']} (GitHub Actions)"
    return who()


def tag_of(ref: str) -> str:
    """The tag of an image reference (``""`` when it has none)."""
    name = ref.partition("@")[0]
    last = name.rsplit("/", 1)[-1]
    return last.partition(":")[2]


def short_id(image: str) -> str:
    """An image ID or digest (``sha256:...``) as its first 12 hex digits."""
    return image.rpartition(":")[2][:12] if image else ""


def release_tag(ref: str, image: str) -> str:
    """One service's part of the release name: its tag, or its image's short id when the tag
    is missing or moving."""
    tag = tag_of(ref)
    if tag and tag.lower() not in MOVING_TAGS:
        return tag
    return short_id(image) or tag or "unknown"


def release_name(images: dict[str, tuple[str, str]]) -> str:
    """The release name (module docstring) of the services that rolled: service -> (image
    reference, image ID or digest it runs now). ``""`` when nothing rolled."""
    if not images:
        return ""
    tags = {name: release_tag(ref, image) for name, (ref, image) in images.items()}
    values = set(tags.values())
    name = values.pop() if len(values) == 1 else "+".join(f"{n}@{t}" for n, t in sorted(tags.items()))
    name = re.sub(r"[/\\\s]", "-", name)
    if len(name) > MAX_RELEASE or name in ("latest", ".", ".."):
        name = "zdd-" + hashlib.sha256(name.encode()).hexdigest()[:12]
    return name


@dataclass
class RunFacts:
    """One run of ``deploy`` or ``rollback``, as the hooks and markers see it."""

    host: str
    command: str  # deploy | rollback
    services: list[str]  # configured until the plan; then those that roll
    images: dict[str, str]  # service -> image reference (as the compose files name it)
    run: str = field(default_factory=new_run_id)
    performer: str = field(default_factory=performer)
    started: float = field(default_factory=time.time)  # wall clock
    ids: dict[str, str] = field(default_factory=dict)  # once planned: service -> image ID/digest it runs
    planned: bool = False
    result: str = ""  # once over: one of RESULTS
    ended: float | None = None
    error: str = ""  # the one-line failure, when there was one
    verdict: str = ""  # the verify loop's verdict, when it ran

    def plan(self, event: dict) -> None:
        """Learn from the journal's ``plan`` event which services roll and what they run after."""
        rolling = {n: v for n, v in event.get("services", {}).items() if v.get("roll")}
        self.services = list(rolling)
        self.images = {n: str(v.get("ref") or self.images.get(n, "")) for n, v in rolling.items()}
        self.ids = {n: str(v.get("after") or "") for n, v in rolling.items()}
        self.planned = True

    @property
    def release(self) -> str:
        """The release name (module docstring); ``""`` before the plan or when nothing rolls."""
        if not self.planned:
            return ""
        return release_name({n: (self.images.get(n, ""), self.ids.get(n, "")) for n in self.services})

    def over(self, error: BaseException | None) -> None:
        """The run is over: its result, when, and its one-line error."""
        self.result, self.ended = result_of(error), time.time()
        if error is None:
            self.error = ""
        elif isinstance(error, KeyboardInterrupt):
            self.error = "interrupted (Ctrl-C or SIGTERM)"
        else:
            self.error = (str(error).splitlines() or [type(error).__name__])[0]

    @property
    def runtime(self) -> float:
        return (self.ended or time.time()) - self.started

    def env(self, tier: tuple[int, list[str]] | None = None) -> dict[str, str]:
        """The ``ZDD_*`` variables a hook gets (README "Hooks")."""
        services = self.services if tier is None else [n for n in tier[1] if n in self.services]
        env = {
            "ZDD_HOST": self.host,
            "ZDD_RUN": self.run,
            "ZDD_PERFORMER": self.performer,
            "ZDD_COMMAND": self.command,
            "ZDD_SERVICES": " ".join(services),
            "ZDD_IMAGES": " ".join(f"{n}={self.images[n]}" for n in services if self.images.get(n)),
        }
        if self.planned:
            env["ZDD_IMAGE_IDS"] = " ".join(f"{n}={self.ids[n]}" for n in services if self.ids.get(n))
            env["ZDD_RELEASE"] = self.release
        if tier is not None:
            env["ZDD_TIER"] = str(tier[0])
        if self.result:
            env["ZDD_RESULT"] = self.result
            env["ZDD_RUNTIME"] = str(round(self.runtime))
            if self.error:
                env["ZDD_ERROR"] = self.error
        return env
