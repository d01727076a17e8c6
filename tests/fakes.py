"""Shared fakes for the unit tests: a scripted executor and realistic host data.

Nothing here talks to a host, Docker or the network.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fabfile import journal as zdd_journal
from fabfile import sequence
from fabfile.config import load
from fabfile.engines import engine_for
from fabfile.outcome import HostResult
from fabfile.progress import Reporter, StepRecord
from fabfile.runner import CommandResult, Runner
from fabfile.session import Session
from fabfile.timeline import TierTimeline, parse_mark
from fabfile.verify import OK, Recorder, Report, VerifySettings, WsRecorder


def ok(stdout: str = "") -> CommandResult:
    return CommandResult(ok=True, stdout=stdout, exited=0)


def fail(exited: int = 1, stdout: str = "", stderr: str = "") -> CommandResult:
    return CommandResult(ok=False, stdout=stdout, stderr=stderr, exited=exited)


_SCRIPT_RE = re.compile(r"^#\s*(\S+\.sh)\b")


def _program(command: str) -> tuple[str]:
    """A shipped script run as ``sh -c SCRIPT NAME ARGS`` is shown as ``sh -c NAME ARGS``: its
    text (which names other scripts and commands) must not match the rules."""
    try:
        words = shlex.split(command)
    except ValueError:
        return (command,)
    for i in range(len(words) - 2):
        if words[i] == "sh" and words[i + 1] == "-c" and words[i + 2].count("\n") > 2:
            return (command.replace(" " + shlex.quote(words[i + 2]), "", 1),)
    return (command,)


@dataclass
class Call:
    command: str
    stdin: str | None
    script: str  # "wait_healthy.sh" when stdin is one of fabfile/remote/*.sh, else ""

    @property
    def subject(self) -> str:
        return f"{self.command} {self.script}".strip()


Response = (
    Any  # CommandResult | str | list[CommandResult | str] | Callable[[Call, "FakeExecutor"], CommandResult | str]
)


class FakeExecutor:
    """An Executor that answers commands from scripted rules and records every call.

    A rule is ``(pattern, response)``; ``pattern`` is a substring (or a tuple of substrings
    that must all occur) of the rendered command. A shipped host script fed on stdin is
    matched by its name too (``"wait_healthy.sh"``). The first matching rule wins. A response
    is an CommandResult, a str (stdout of a success), a list (answered in turn, the last one
    repeated) or a callable ``(call, fake) -> CommandResult | str``. An unmatched command fails the
    test at once.
    """

    def __init__(self, rules: Iterable[tuple[Any, Response]] = ()):
        self.rules: list[tuple[tuple[str, ...], Response]] = []
        self.calls: list[Call] = []
        self.tiers: list[Any] = []  # FakeConversation of each tier.sh started
        self.tier_script: Callable | None = None
        self.reporters: list[tuple[tuple[str, ...], Callable[[str], list[str]]]] = []
        for pattern, response in rules:
            self.on(pattern, response)

    def on(self, pattern: str | tuple[str, ...], response: Response) -> FakeExecutor:
        pats = (pattern,) if isinstance(pattern, str) else tuple(pattern)
        if isinstance(response, list):
            response = list(response)
        self.rules.append((pats, response))
        return self

    def first(self, pattern: str | tuple[str, ...], response: Response) -> FakeExecutor:
        """Add a rule that takes precedence over the existing ones."""
        self.on(pattern, response)
        self.rules.insert(0, self.rules.pop())
        return self

    def __call__(self, command: str, stdin: str | None, deadline: float | None = None) -> CommandResult:
        m = _SCRIPT_RE.match(stdin or "")
        call = Call(*_program(command), stdin, m.group(1) if m else "")
        self.calls.append(call)
        for pats, response in self.rules:
            if all(p in call.subject for p in pats):
                return self._answer(response, call)
        raise AssertionError(f"unexpected command sent to the host: {command!r}")

    def on_report(self, pattern: str | tuple[str, ...], answer: Callable[[str], list[str]]) -> FakeExecutor:
        """A host program that reads nothing and reports (swarm_tier.sh): ``answer(command)``
        is every line it prints before it ends."""
        self.reporters.append(((pattern,) if isinstance(pattern, str) else tuple(pattern), answer))
        return self

    def converse(self, command: str) -> Any:
        """tier.sh: answered by ``tier_script`` (see :func:`tier_host`); a reporting program by
        its :meth:`on_report` rule."""
        command = _program(command)[0]
        for pats, answer in self.reporters:
            if all(p in command for p in pats):
                self.calls.append(Call(command, None, pats[0]))
                conv = FakeConversation(
                    command, lambda sent, answer=answer: answer(command) if not sent else [], ends=True
                )
                self.tiers.append(conv)
                return conv
        self.calls.append(Call(command, None, "tier.sh" if "tier.sh" in command else ""))
        if self.tier_script is None:
            raise AssertionError(f"unexpected conversation with the host: {command[:120]!r}")
        conv = FakeConversation(command, self.tier_script)
        self.tiers.append(conv)
        return conv

    def interrupt(self, call: Call | None = None, fake: Any = None) -> CommandResult:
        """``kill -TERM`` of tier.sh: it undoes and ends, as the real one does."""
        for conv in self.tiers:
            if not conv.ended:
                conv.pending.append("failed interrupted: new containers removed")
                conv.produced.append(conv.pending[-1])
                conv.ended = True
        return ok()

    def _answer(self, response: Response, call: Call) -> CommandResult:
        if isinstance(response, list):
            response = response.pop(0) if len(response) > 1 else response[0]
        if callable(response) and not isinstance(response, CommandResult):
            response = response(call, self)
        if isinstance(response, str):
            return ok(response)
        assert isinstance(response, CommandResult), response
        return response

    # --- queries ---------------------------------------------------------------------------

    @property
    def commands(self) -> list[str]:
        return [c.command for c in self.calls]

    def matching(self, *pats: str) -> list[int]:
        """Indexes of the calls whose command (or script name) contains every pattern."""
        return [i for i, c in enumerate(self.calls) if all(p in c.subject for p in pats)]

    def index(self, *pats: str, after: int = -1) -> int:
        for i in self.matching(*pats):
            if i > after:
                return i
        raise AssertionError(
            f"no call matching {pats} after #{after}:\n"
            + "\n".join(f"  #{i} {c.subject}" for i, c in enumerate(self.calls))
        )

    def seen(self, *pats: str) -> bool:
        return bool(self.matching(*pats))


# --- realistic host data ---------------------------------------------------------------------


def cid(tag: str) -> str:
    """A full 64-hex container id whose 12-char short form starts with ``tag`` (hex)."""
    return (tag + "0" * 64)[:64]


def short(full: str) -> str:
    return full[:12]


def reverse_proxy_route(path: str, *dials: str) -> dict:
    """One ``handle_path PATH/* { reverse_proxy DIALS }`` block as ``caddy adapt`` prints it."""
    return {
        "match": [{"path": [f"{path}/*"]}],
        "handle": [
            {
                "handler": "subroute",
                "routes": [
                    {"handle": [{"handler": "rewrite", "strip_path_prefix": path}]},
                    {"handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": d} for d in dials]}]},
                ],
            }
        ],
    }


def caddy_config(*routes: dict) -> dict:
    """A whole adapted Caddyfile (``:80 { ... }``) with the given routes and a fallback."""
    return {
        "admin": {"listen": "localhost:2019"},
        "apps": {
            "http": {
                "servers": {
                    "srv0": {
                        "listen": [":80"],
                        "routes": [
                            {
                                "handle": [
                                    {
                                        "handler": "subroute",
                                        "routes": [
                                            *routes,
                                            {
                                                "handle": [
                                                    {
                                                        "handler": "subroute",
                                                        "routes": [
                                                            {
                                                                "handle": [
                                                                    {
                                                                        "handler": "static_response",
                                                                        "body": "zdd sandbox",
                                                                        "status_code": 200,
                                                                    }
                                                                ]
                                                            },
                                                        ],
                                                    }
                                                ]
                                            },
                                        ],
                                    }
                                ],
                                "terminal": True,
                            }
                        ],
                        "automatic_https": {"disable": True},
                    }
                }
            }
        },
    }


SANDBOX_APPS = ("server", "property", "identity", "profile-server")


def sandbox_caddy_config() -> dict:
    """scripts/sandbox/stack/caddy/Caddyfile, adapted."""
    return caddy_config(*(reverse_proxy_route(f"/{s}", f"{s}:8080") for s in SANDBOX_APPS))


PROXY_NETWORK = "remilia_default"


def networks_json(*names: str, ip: str = "172.18.0.2") -> str:
    """``docker inspect --format '{{json .NetworkSettings.Networks}}'`` of one container."""
    return json.dumps({n: {"IPAddress": ip, "NetworkID": f"net-{n}"} for n in names})


def inspect_json(containers: dict[str, dict[str, str]]) -> str:
    """``docker inspect`` of containers: full id → {network: ip}."""
    return json.dumps(
        [
            {
                "Id": full,
                "Name": f"/c-{full[:6]}",
                "NetworkSettings": {"Networks": {n: {"IPAddress": ip} for n, ip in nets.items()}},
            }
            for full, nets in containers.items()
        ]
    )


def inspect_responder(containers: dict[str, dict[str, str]]) -> Callable[[Call, FakeExecutor], str]:
    """Answer ``docker inspect ID...`` with the named containers (short or full ids)."""

    def answer(call: Call, fake: FakeExecutor) -> str:
        args = call.command.split()[2:]
        wanted = {full: nets for full, nets in containers.items() if any(full.startswith(a) for a in args)}
        return inspect_json(wanted)

    return answer


def compose_config_json(patch: dict[str, dict] | None = None) -> str:
    """``docker compose config --format json`` of the sandbox stack; ``patch`` adds keys to
    (or, with a None value, removes) services."""
    app = {"expose": ["8080"], "restart": "unless-stopped"}
    svc: dict[str, dict] = {s: {**app, "image": f"127.0.0.1:15000/zdd-sandbox/{s}:latest"} for s in SANDBOX_APPS}
    svc["mongodb"] = {"image": "127.0.0.1:15000/zdd-sandbox/base:latest"}
    svc["redis"] = {"image": "127.0.0.1:15000/zdd-sandbox/base:latest"}
    svc["caddy"] = {
        "image": "127.0.0.1:15000/zdd-sandbox/base:latest",
        "ports": [{"mode": "ingress", "host_ip": "127.0.0.1", "target": 80, "published": "18080", "protocol": "tcp"}],
    }
    return json.dumps({"name": "remilia", "services": patched(svc, patch)})


def patched(services: dict[str, dict], patch: dict[str, dict] | None) -> dict[str, dict]:
    """Services with keys added (or, for a None value, the service removed)."""
    for name, keys in (patch or {}).items():
        if keys is None:
            services.pop(name, None)
        else:
            services[name] = {**services.get(name, {}), **keys}
    return services


# --- tier.sh, simulated ---------------------------------------------------------------------


class FakeConversation:
    """tier.sh's side of the conversation, simulated: ``script(sent)`` returns the lines the
    host prints after zdd has sent ``sent`` (a list of the lines so far); None ends it."""

    def __init__(self, command: str, script: Callable[[list[str]], list[str] | None], ends: bool = False):
        self.command = command
        self.script = script
        self.sent: list[str] = []
        self.pending: list[str] = list(script([]) or [])
        self.produced: list[str] = list(self.pending)
        self.ended = ends  # a program that only reports ends after its lines
        self.closed = False

    def send(self, line: str) -> None:
        self.sent.append(line)
        more = self.script(list(self.sent))
        if more is None:
            self.ended = True
        else:
            self.pending += more
            self.produced += more

    @property
    def said(self) -> list[str]:
        """What zdd sent, its journal lines left out."""
        return [x for x in self.sent if not x.startswith("journal ")]

    def readline(self, timeout: float) -> str | None:
        if self.pending:
            return self.pending.pop(0)
        return None if self.ended or self.closed else ""

    def close_early(self) -> None:
        self.closed = True

    def close(self) -> CommandResult:
        self.closed = True
        failed = [line for line in self.produced if line.startswith("failed")]
        return fail(1, failed[-1]) if failed else ok()


def tier_host(
    new: dict[str, list[str]],
    *,
    health: str = "ok",
    ip: str = "172.18.0.9",
    network: str = "remilia_default",
    drained: str = "after 1s, 2 in flight at most",
    log: list | None = None,
) -> Callable[[list[str]], list[str] | None]:
    """A tier.sh that starts ``new`` (service -> new ids) and answers as the real one does;
    ``health`` "ok", "unhealthy" or "silent" (never answers: a hang)."""

    def script(sent: list[str]) -> list[str] | None:
        if log is not None:
            log.append(list(sent))
        if sent and sent[-1].startswith("journal "):
            return []  # appended to the host's journal; nothing printed
        sent = [x for x in sent if not x.startswith("journal ")]
        if not sent:
            return ["pid 4242"]
        last = sent[-1]
        if len(sent) == 1:
            if not (last.startswith("pin ") or last == "nopin"):
                return ["failed no pin line from zdd"]
            out = ["pinned"] + [f"new {svc} {cid} {network}={ip}" for svc, ids in new.items() for cid in ids]
            if health == "unhealthy":
                detail = json.dumps(
                    {
                        "Status": "unhealthy",
                        "FailingStreak": 3,
                        "Log": [{"ExitCode": 1, "Output": "wget: server returned error: 503"}],
                    }
                )
                return out + [
                    f"detail-health /remilia-x-2 {detail}",
                    "detail-log abc panic: boom",
                    "failed not healthy: server:abc=running/unhealthy",
                ]
            if health == "silent":
                return out + ["progress server 0/1, 5 s of 60"]
            return out + ["progress server 0/1, 1 s of 60", "healthy after 3s"]
        if last.startswith("switch ") or last == "go":
            return ["switched", f"drained {drained}", "retired"]
        return ["failed aborted before the switch: new containers removed"]

    return script


# --- survey.sh, simulated ---------------------------------------------------------------------


def container_json(
    cid_: str,
    service: str,
    image: str,
    ip: str,
    *,
    state: str = "running",
    health: str = "healthy",
    config_hash: str = "",
    network: str = PROXY_NETWORK,
    labels: dict | None = None,
) -> dict:
    """One container as ``docker inspect`` prints it (the fields zdd reads)."""
    return {
        "Id": cid_,
        "Name": f"/remilia-{service}-1",
        "Image": image,
        "State": {"Status": state, **({"Health": {"Status": health}} if health != "none" else {})},
        "Config": {
            "Labels": {
                "com.docker.compose.service": service,
                "com.docker.compose.config-hash": config_hash or f"hash-{service}",
                **(labels or {}),
            }
        },
        "NetworkSettings": {"Networks": {network: {"IPAddress": ip}}},
        "Mounts": [],
    }


def image_id(service: str, version: int = 1) -> str:
    return "sha256:" + f"{version:02d}{zlib.crc32(service.encode()):010d}".ljust(64, "0")


def survey_text(
    containers: list[dict],
    *,
    compose: str | None = None,
    hashes: dict[str, str] | None = None,
    proxy: str | None = "cad",
    proxy_config: dict | None = None,
    running: dict | None = None,
    version: str = "v2.11.7",
) -> str:
    """What survey.sh prints for the sandbox stack: sections ``=== NAME RC``."""
    compose = compose or compose_config_json()
    services = json.loads(compose)["services"]
    hashes = hashes if hashes is not None else {s: f"hash-{s}" for s in services}
    config = proxy_config if proxy_config is not None else sandbox_caddy_config()
    parts = [
        f"=== compose 0\n{compose}",
        "=== hashes 0\n" + "".join(f"{s} {h}\n" for s, h in hashes.items()),
        f"=== containers 0\n{json.dumps(containers)}",
    ]
    if proxy:
        parts += [
            f"=== proxy-container 0\n{cid(proxy)}",
            f"=== proxy-config 0\n{json.dumps(config)}",
            f"=== proxy-running 0\n{json.dumps(running if running is not None else config)}",
            f"=== proxy-version 0\n{version} h1:abc=",
        ]
    return "\n".join(parts) + "\n"


def sandbox_containers(version: int = 1, extra: dict[str, int] | None = None) -> list[dict]:
    """One running container per sandbox app (``extra``: more of a service), infra and Caddy."""
    out, n = [], 10
    for svc in (*SANDBOX_APPS, "mongodb", "redis"):
        image = image_id(svc, version) if svc in SANDBOX_APPS else image_id("base")
        for i in range(1 + (extra or {}).get(svc, 0)):
            out.append(container_json(cid(f"{n:x}{i}"), svc, image, f"172.18.0.{n + i}"))
        n += 2
    out.append(container_json(cid("cad"), "caddy", image_id("base"), "172.18.0.2", health="none"))
    return out


def image_listing(version: int = 1) -> str:
    """``docker image ls`` after a pull of ``version`` of every sandbox app."""
    return (
        "".join(f"127.0.0.1:15000/zdd-sandbox/{s}:latest {image_id(s, version)}\n" for s in SANDBOX_APPS)
        + f"127.0.0.1:15000/zdd-sandbox/base:latest {image_id('base')}\n"
    )


# --- a deploy's verify report ----------------------------------------------------------------

A, B, WS = "http://svc.test/server/fast", "http://svc.test/property/slow", "ws://svc.test/beetle"
SWITCH_AT = 5.2  # s after the loop started: the proxy switched server and property to v2


def deploy_report() -> Report:
    """12 s of requests to two URLs, v1 until the switch at 5.2 s, v2 after; 3 failures in
    second 5 on A; one websocket disconnect with a 0.4 s gap."""
    rec = Recorder([A, B])
    for i in range(240):
        t = i / 20
        for url in (A, B):
            if url == A and 5.0 <= t < 5.15:
                rec.record(url, t, 0.002, "status 502", "status 502: Bad Gateway")
            else:
                rec.record(url, t, 0.03, OK, version="v1" if t < SWITCH_AT + 0.1 else "v2")
    ws = WsRecorder([WS], 2)
    stats = ws.urls[WS]
    stats.connected(), stats.connected()
    stats.answered(0, 1.0, 1.01, "v1")
    stats.broke(0, 5.3, 1001, "going away", was_working=True)
    stats.connected()
    stats.answered(0, 5.6, 5.7, "v2")
    rec.stopped_mono = rec.started_mono + 12.0
    ws.finish(12.0)
    return Report(VerifySettings(urls=[A, B], ws_urls=[WS]), rec, ws=ws)


def deploy_result(report: Report) -> HostResult:
    """reminet-staging's deploy around ``report``: its first tier switched at SWITCH_AT, its
    second failed."""
    t0 = report.started_wall
    step = [
        ("validate", "ok", 0.3, "7 services in the compose project", -1.0),
        ("pull", "ok", 0.7, "new image for server, property", -0.7),
        ("rollout server, property", "ok", 4.9, "server 1 → 1, property 1 → 1; healthy and switched", SWITCH_AT - 4.9),
        ("rollout identity", "failed", 2.0, "", 6.0),
    ]
    steps = [StepRecord(name, status, detail, seconds, t0 + start) for name, status, seconds, detail, start in step]
    return HostResult(
        "reminet-staging",
        "deploy",
        started_at=t0 - 1.0,
        ended_at=t0 + 12.0,
        steps=steps,
        notes=["a note"],
        cost={"remote_commands": 9, "proxy_loads": 3},
        verify=report,
    ).fail("deploy failed: identity: not healthy", 1)


# --- a tier's marks, as tier.sh prints them ----------------------------------------------------

TIER_BEGIN = 1764461234.0  # host clock: 2025-11-30T00:07:14Z
# server and property in one tier: property (slower to boot) decides it; the deploy saw the old
# containers stopped
TIER_MARKS = """\
mark 1764461234.000 begin
mark 1764461234.100 pinned
mark 1764461234.150 up
mark 1764461234.400 created server 3f2a
mark 1764461234.420 created property 9b1c
mark 1764461234.900 started server 3f2a
mark 1764461235.250 started property 9b1c
mark 1764461235.300 up-done
mark 1764461235.900 healthy server 3f2a
mark 1764461237.650 healthy property 9b1c
mark 1764461238.050 ready
mark 1764461238.070 switch
mark 1764461238.250 switched
mark 1764461239.350 drained
mark 1764461239.360 retired
mark 1764461241 stopped
"""


def tier_timeline(
    tier: int = 1, services: Iterable[str] = ("server", "property"), marks: str = TIER_MARKS
) -> TierTimeline:
    """A TierTimeline of ``services`` from tier.sh's output ``marks`` (other lines skipped)."""
    return TierTimeline(tier, list(services), [m for ln in marks.splitlines() if (m := parse_mark(ln))])


# --- the host's journal and survey.sh's first sections, simulated ------------------------------------


def survey_head(survey: str, *, key: str = "project", lock: str = "", journal: Iterable[dict] = ()) -> str:
    """``survey`` (see :func:`survey_text`) with the sections survey.sh prints first: the
    project's key, the lock holder ("" = free) and the journal of the last run."""
    head = f"=== key 0\n{key}\n=== lock 0\n" + (f"{lock}\n" if lock else "") + "=== journal 0\n"
    return head + "".join(zdd_journal.line(e) + "\n" for e in journal) + survey


def run_events(
    run: str,
    *,
    kind: str = "deploy",
    who: str = "alice@laptop",
    t: int = 1_700_000_000,
    images: dict[str, tuple[str, str]] | None = None,
    tiers: Iterable[tuple[int, list[str], list[str], tuple[str, ...]]] = (),
    result: str | None = "ok",
    seconds: float = 12.0,
    verify: dict | None = None,
) -> list[dict]:
    """One run's journal as zdd and tier.sh write it: ``start``; ``plan`` when ``images`` (service
    -> (image before, image after); it rolls when they differ); per tier (pid, services, old ids,
    the events it got to: "new", "switched", "retired", "undone") ``tier`` and those; ``end``
    with ``result`` (None: the run never ended)."""
    events: list[dict] = [{"run": run, "t": t, "event": "start", "kind": kind, "who": who, "from": "laptop", "pid": 7}]
    if images is not None:
        events.append(
            {
                "run": run,
                "t": t + 1,
                "event": "plan",
                "services": {
                    name: {
                        "roll": before != after,
                        "reason": "new image" if before != after else "unchanged",
                        "ref": f"registry.test/{name}:latest",
                        "before": [before] if before else [],
                        "after": after,
                        "old": [],
                    }
                    for name, (before, after) in images.items()
                },
            }
        )
    for pid, services, old, done in tiers:
        events.append(
            {"run": run, "t": t + 2, "event": "tier", "pid": pid, "services": ",".join(services), "old": ",".join(old)}
        )
        events += [{"run": run, "t": t + 3, "event": ev, "pid": pid} for ev in done]
    if result is not None:
        events.append(
            {
                "run": run,
                "t": t + int(seconds),
                "event": "end",
                "result": result,
                "seconds": seconds,
                "steps": [],
                **({"verify": verify} if verify else {}),
            }
        )
    return events


def journal_text(*runs: list[dict]) -> str:
    """The journal file holding these runs' events, one JSON line each."""
    return "".join(zdd_journal.line(e) + "\n" for events in runs for e in events)


HOSTS_TOML = Path(__file__).resolve().parent.parent / "hosts.toml"


def fake_session(fake: FakeExecutor, name: str = "sandbox", dry_run: bool = False) -> tuple[Session, io.StringIO]:
    """A Session on host ``name`` of the repository's hosts.toml whose commands go to ``fake``;
    and the StringIO it prints to."""
    out = io.StringIO()
    host = load(HOSTS_TOML).host(name)
    return Session(name, host, Runner(fake, name, dry_run=dry_run, out=out), Reporter(name, out=out)), out


# --- the sandbox stack as it is (healthchecks), and a host for a whole deploy --------------------------

# scripts/sandbox/stack/docker-compose.yaml: every app service has this healthcheck
SANDBOX_HEALTHCHECK = {
    "test": ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/health"],
    "interval": "1s",
    "timeout": "1s",
    "retries": 3,
}


def sandbox_compose_json(patch: dict[str, dict | None] | None = None) -> str:
    """:func:`compose_config_json` with the sandbox's healthcheck on each app service (``patch``
    is merged over it: ``{"server": {"healthcheck": {"disable": True}}}`` takes it away)."""
    merged: dict[str, dict | None] = {s: {"healthcheck": SANDBOX_HEALTHCHECK} for s in SANDBOX_APPS}
    for name, keys in (patch or {}).items():
        merged[name] = None if keys is None else {**(merged.get(name) or {}), **keys}
    return compose_config_json(merged)


def sandbox_survey(containers: list[dict] | None = None, **kw: Any) -> str:
    """:func:`survey_text` of the sandbox stack with its healthchecks (``containers``: those of
    :func:`sandbox_containers` by default)."""
    return survey_text(
        sandbox_containers() if containers is None else containers,
        compose=kw.pop("compose", None) or sandbox_compose_json(),
        **kw,
    )


SANDBOX_NEW = {s: [cid(f"b{i + 1}")[:12]] for i, s in enumerate(SANDBOX_APPS)}  # each app's new container


def deploy_host(
    survey: str | list[str] | None = None,
    *first: tuple[str, Response],
    version: int = 1,
    tier: Callable[[list[str]], list[str] | None] | None = None,
) -> FakeExecutor:
    """A sandbox host for a whole deploy: ``survey`` (:func:`sandbox_survey` by default; a list
    is answered in turn), a lock that is free, ``version`` of the app images after the pull,
    tier.sh as :func:`tier_host` starting :data:`SANDBOX_NEW`, a queued restore, finish.sh;
    ``first``: rules that come before those."""
    fake = FakeExecutor(
        [
            *first,
            ("survey.sh", sandbox_survey() if survey is None else survey),
            ("lock.sh", ok("locked\n")),
            ("pull.sh", ok("logged in to 127.0.0.1:15000 (temporary config)\n" + image_listing(version))),
            ("restore.sh", ok("restore queued (job 99)\n")),
            ("finish.sh", ok("kept the images of the last 3 runs\nreleased the lock\n")),
        ]
    )
    fake.on("kill -TERM", fake.interrupt)
    fake.tier_script = tier or tier_host(SANDBOX_NEW)
    return fake


def dead_pid() -> int:
    """The pid of a process of this machine that has ended (and been reaped)."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


# --- engine swarm: survey.sh --stack and swarm_tier.sh, simulated ------------------------------

STACK = "remilia-swarm"
SWARM_KEY = f"stack_{STACK}"  # survey.sh --stack's key: names the stack's lock and journal
SWARM_REF = "127.0.0.1:15000/zdd-sandbox/{}:latest"


def swarm_compose_json(patch: dict[str, dict] | None = None) -> str:
    """``docker compose config --format json`` of scripts/sandbox/stack/docker-compose.swarm.yaml;
    ``patch`` adds keys to (or, with None, removes) services."""
    deploy = {
        "endpoint_mode": "dnsrr",
        "update_config": {"order": "start-first", "failure_action": "rollback", "monitor": "2s"},
        "rollback_config": {"order": "start-first", "monitor": "2s"},
    }
    check = {
        "test": ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/health"],
        "interval": "1s",
        "timeout": "1s",
        "retries": 3,
    }
    svc: dict[str, dict] = {
        s: {"image": SWARM_REF.format(s), "deploy": deploy, "healthcheck": check, "environment": {"SERVICE": s}}
        for s in SANDBOX_APPS
    }
    for infra in ("mongodb", "redis"):
        svc[infra] = {"image": SWARM_REF.format("base"), "deploy": {"endpoint_mode": "dnsrr"}}
    svc["caddy"] = {
        "image": SWARM_REF.format("base"),
        "ports": [{"mode": "host", "target": 80, "published": "18090", "protocol": "tcp"}],
    }
    return json.dumps({"name": "remilia-swarm", "services": patched(svc, patch)})


def service_json(
    name: str,
    digest: str,
    *,
    ref: str | None = None,
    replicas: int | None = 1,
    order: str = "start-first",
    failure: str = "rollback",
    rollback_order: str = "start-first",
    previous: str | None = None,
    update_state: str = "",
    started: str = "2026-11-27 10:00:00 +0000 UTC",
    stack: str = STACK,
) -> dict:
    """One service as ``docker service inspect`` prints it (the fields zdd reads); ``previous``:
    the digest its previous spec ran."""
    ref = ref if ref is not None else SWARM_REF.format("base" if name in ("mongodb", "redis", "caddy") else name)

    def spec(d: str) -> dict:
        return {
            "Name": f"{stack}_{name}",
            "Labels": {"com.docker.stack.namespace": stack, "com.docker.stack.image": ref},
            "TaskTemplate": {"ContainerSpec": {"Image": f"{ref}@{d}"}, "ForceUpdate": 0},
            "Mode": {"Replicated": {"Replicas": replicas}} if replicas is not None else {"Global": {}},
            "UpdateConfig": {"Parallelism": 1, "Order": order, "FailureAction": failure},
            "RollbackConfig": {"Parallelism": 1, "Order": rollback_order},
            "EndpointSpec": {"Mode": "dnsrr"},
        }

    raw: dict = {"ID": f"id-{name}", "Spec": spec(digest)}
    if previous is not None:
        raw["PreviousSpec"] = spec(previous)
    if update_state:
        raw["UpdateStatus"] = {"State": update_state, "StartedAt": started, "Message": f"update {update_state}"}
    return raw


def stack_services(version: int = 1, previous: int | None = None, only: tuple[str, ...] | None = None) -> list[dict]:
    """Every service of the sandbox stack at ``version`` of the apps (``previous``: the version
    their previous spec ran)."""
    out = []
    for name in (*SANDBOX_APPS, "mongodb", "redis", "caddy"):
        if only is not None and name not in only:
            continue
        app = name in SANDBOX_APPS
        out.append(
            service_json(
                name,
                image_id(name if app else "base", version if app else 1),
                previous=image_id(name, previous) if app and previous is not None else None,
            )
        )
    return out


def swarm_applied(compose: str | None = None) -> dict[str, str]:
    """What zdd recorded after applying these compose files (every service's spec hash)."""
    from fabfile.engines.swarm_state import spec_hash

    return {n: spec_hash(s) for n, s in json.loads(compose or swarm_compose_json())["services"].items()}


def stack_survey_text(
    services: list[dict],
    *,
    compose: str | None = None,
    node: str = "active true",
    applied: dict | None | str = "same",
    running: dict[str, str] | None = None,
    lock: str = "",
    journal: Iterable[dict] = (),
    nodes: list[dict] | None = None,
    proxy_running: dict | None = None,
) -> str:
    """What survey.sh --stack prints (``proxy_running``: the config the proxy's task runs, no
    section when None); ``applied``: "same" (what these compose files hash to), a
    dict, or None (no record); ``lock`` and ``journal`` as in :func:`survey_head`; ``nodes``:
    ``docker node inspect`` of the swarm (None: the section failed)."""
    compose = compose or swarm_compose_json()
    record = swarm_applied(compose) if applied == "same" else applied
    running = running or {}
    replicas = "".join(
        f"{s['Spec']['Name']} {running.get(s['Spec']['Name'].split('_', 1)[1], '1/1')}\n" for s in services
    )
    node_rc = 0 if node else 1
    parts = [
        f"=== compose 0\n{compose}",
        f"=== node {node_rc}\n{node or 'Cannot connect to the Docker daemon'}",
        f"=== replicas 0\n{replicas}",
        f"=== applied 0\n{json.dumps(record)}"
        if record is not None
        else "=== applied 1\ncat: /home/x/.zdd/stacks/remilia-swarm.json: No such file or directory",
        f"=== nodes 0\n{json.dumps(nodes)}" if nodes is not None else "=== nodes 1\nError: not a manager",
        *([f"=== proxy-running 0\n{json.dumps(proxy_running)}"] if proxy_running is not None else []),
        f"=== services 0\n{json.dumps(services)}",
    ]
    return survey_head("\n".join(parts) + "\n", key=SWARM_KEY, lock=lock, journal=journal)


def node_json(
    hostname: str, role: str = "worker", state: str = "ready", availability: str = "active", **labels
) -> dict:
    """One node as ``docker node inspect`` prints it (the fields zdd reads)."""
    return {
        "ID": f"id-{hostname}",
        "Spec": {"Role": role, "Availability": availability, "Labels": labels},
        "Description": {"Hostname": hostname, "Platform": {"OS": "linux", "Architecture": "x86_64"}},
        "Status": {"State": state},
    }


def swarm_tier_args(command: str) -> tuple[str, list[str]]:
    """(action, services) of a rendered swarm_tier.sh command."""
    import shlex

    words = shlex.split(command.split(" && ", 1)[-1])
    args = words[words.index("swarm_tier.sh") + 1 :]
    count = int(args[7])
    return args[0], [args[8 + 4 * i] for i in range(count)]


def swarm_tier_options(command: str) -> tuple[list[str], bool]:
    """(the -w services, -r) of a rendered swarm_tier.sh command."""
    import shlex

    words = shlex.split(command.split(" && ", 1)[-1])
    args = words[words.index("swarm_tier.sh") + 1 :]
    rest = args[8 + 4 * int(args[7]) :]
    return [rest[i + 1] for i, w in enumerate(rest) if w == "-w"], "-r" in rest


def swarm_tier_job(command: str) -> str:
    """The run a rendered swarm_tier.sh command hands Swarm's monitor window to (-j RUN), or ""."""
    import shlex

    words = shlex.split(command.split(" && ", 1)[-1])
    rest = words[words.index("swarm_tier.sh") + 1 :]
    return rest[rest.index("-j") + 1] if "-j" in rest else ""


def swarm_reports(
    failures: dict[str, str] | None = None, log: list | None = None, watched: dict[str, str] | None = None
) -> Callable[[str], list[str]]:
    """A swarm_tier.sh that finishes every service (replaced with -r, else completed, the -w
    services too), or fails at ``failures`` (service -> state), or at ``watched`` when that
    service is a -w service (an earlier tier Swarm rolls back while this one runs)."""

    def answer(command: str) -> list[str]:
        action, names = swarm_tier_args(command)
        watch, replaced = swarm_tier_options(command)
        if log is not None:
            log.append((action, names))
        out = [f"started {n}" for n in names] + [f"progress {names[0] if names else '-'}: updating, 1 s of 90"]
        bad = [(n, (failures or {})[n]) for n in names if n in (failures or {})]
        bad += [(n, (watched or {})[n]) for n in watch if n in (watched or {})]
        for name, state in bad[:1]:
            return out + [
                f"detail {name} {name}.1 x@sha256:bad Running 2 seconds ago task: non-zero exit (1)",
                f"failed {name}: {state} (update rolled back due to failure)",
            ]
        for name in names:
            how = {"update": "completed", "rollback": "rollback_completed", "move": "completed"}.get(
                action, "running 1/1"
            )
            out.append(f"done {name} " + ("replaced" if replaced else how))
        out += [] if replaced else [f"done {n} completed" for n in watch]
        if action == "move":  # the node drained, then the constraint off what moved
            out += ["drained " + command.split(" -n ", 1)[1].split()[0], *[f"unpinned {n}" for n in names]]
        if swarm_tier_job(command):
            out.append("monitor 4242 " + " ".join([*names, *watch]))
        return out + ["ok after 3s"]

    return answer


def deploy(s: Session, **kw: Any) -> None:
    """``fab deploy`` on a session: the deploy sequence with the host's engine."""
    sequence.deploy(s, engine_for(s.host), **kw)
