"""Shared fakes for the unit tests: a scripted executor and realistic host data.

Nothing here talks to a host, Docker or the network.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from fabfile.runner import Outcome


def ok(stdout: str = "") -> Outcome:
    return Outcome(ok=True, stdout=stdout, exited=0)


def fail(exited: int = 1, stdout: str = "", stderr: str = "") -> Outcome:
    return Outcome(ok=False, stdout=stdout, stderr=stderr, exited=exited)


_SCRIPT_RE = re.compile(r"^#\s*(\S+\.sh)\b")


@dataclass
class Call:
    command: str
    stdin: str | None
    script: str  # "wait_healthy.sh" when stdin is one of fabfile/remote/*.sh, else ""

    @property
    def subject(self) -> str:
        return f"{self.command} {self.script}".strip()


Response = Any  # Outcome | str | list[Outcome | str] | Callable[[Call, "FakeExecutor"], Outcome | str]


class FakeExecutor:
    """An Executor that answers commands from scripted rules and records every call.

    A rule is ``(pattern, response)``; ``pattern`` is a substring (or a tuple of substrings
    that must all occur) of the rendered command. A shipped host script fed on stdin is
    matched by its name too (``"wait_healthy.sh"``). The first matching rule wins. A response
    is an Outcome, a str (stdout of a success), a list (answered in turn, the last one
    repeated) or a callable ``(call, fake) -> Outcome | str``. An unmatched command fails the
    test at once.
    """

    def __init__(self, rules: Iterable[tuple[Any, Response]] = ()):
        self.rules: list[tuple[tuple[str, ...], Response]] = []
        self.calls: list[Call] = []
        for pattern, response in rules:
            self.on(pattern, response)

    def on(self, pattern: str | tuple[str, ...], response: Response) -> "FakeExecutor":
        pats = (pattern,) if isinstance(pattern, str) else tuple(pattern)
        if isinstance(response, list):
            response = list(response)
        self.rules.append((pats, response))
        return self

    def first(self, pattern: str | tuple[str, ...], response: Response) -> "FakeExecutor":
        """Add a rule that takes precedence over the existing ones."""
        self.on(pattern, response)
        self.rules.insert(0, self.rules.pop())
        return self

    def __call__(self, command: str, stdin: str | None) -> Outcome:
        m = _SCRIPT_RE.match(stdin or "")
        call = Call(command, stdin, m.group(1) if m else "")
        self.calls.append(call)
        for pats, response in self.rules:
            if all(p in call.subject for p in pats):
                return self._answer(response, call)
        raise AssertionError(f"unexpected command sent to the host: {command!r}")

    def _answer(self, response: Response, call: Call) -> Outcome:
        if isinstance(response, list):
            response = response.pop(0) if len(response) > 1 else response[0]
        if callable(response) and not isinstance(response, Outcome):
            response = response(call, self)
        if isinstance(response, str):
            return ok(response)
        assert isinstance(response, Outcome), response
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
        raise AssertionError(f"no call matching {pats} after #{after}:\n" + "\n".join(
            f"  #{i} {c.subject}" for i, c in enumerate(self.calls)))

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
        "handle": [{
            "handler": "subroute",
            "routes": [
                {"handle": [{"handler": "rewrite", "strip_path_prefix": path}]},
                {"handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": d} for d in dials]}]},
            ],
        }],
    }


def caddy_config(*routes: dict) -> dict:
    """A whole adapted Caddyfile (``:80 { ... }``) with the given routes and a fallback."""
    return {
        "admin": {"listen": "localhost:2019"},
        "apps": {"http": {"servers": {"srv0": {
            "listen": [":80"],
            "routes": [{
                "handle": [{
                    "handler": "subroute",
                    "routes": [*routes, {"handle": [{"handler": "subroute", "routes": [
                        {"handle": [{"handler": "static_response", "body": "zdd sandbox", "status_code": 200}]},
                    ]}]}],
                }],
                "terminal": True,
            }],
            "automatic_https": {"disable": True},
        }}}},
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
    return json.dumps([
        {"Id": full, "Name": f"/c-{full[:6]}",
         "NetworkSettings": {"Networks": {n: {"IPAddress": ip} for n, ip in nets.items()}}}
        for full, nets in containers.items()
    ])


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
    svc: dict[str, dict] = {
        s: {**app, "image": f"127.0.0.1:15000/zdd-sandbox/{s}:latest"} for s in SANDBOX_APPS
    }
    svc["mongodb"] = {"image": "127.0.0.1:15000/zdd-sandbox/base:latest"}
    svc["redis"] = {"image": "127.0.0.1:15000/zdd-sandbox/base:latest"}
    svc["caddy"] = {"image": "127.0.0.1:15000/zdd-sandbox/base:latest",
                    "ports": [{"mode": "ingress", "host_ip": "127.0.0.1", "target": 80,
                               "published": "18080", "protocol": "tcp"}]}
    for name, keys in (patch or {}).items():
        if keys is None:
            svc.pop(name, None)
        else:
            svc[name] = {**svc.get(name, {}), **keys}
    return json.dumps({"name": "remilia", "services": svc})
