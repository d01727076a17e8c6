"""One task's view of one host: its validated settings, a runner on its connection, a
reporter, and the secrets it may use. Every task starts with :func:`open_session`."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
import paramiko.hostkeys
from dotenv import dotenv_values, find_dotenv
from fabric import Connection
from invoke.exceptions import Exit

from . import config as cfg
from .config_limits import SSH_KEEPALIVE
from .progress import Reporter
from .runner import Runner, SshExecutor


def secret(name: str) -> str | None:
    """A secret from the environment, else from ``.env`` (searched from the cwd upwards)."""
    if os.environ.get(name):
        return os.environ[name]
    path = find_dotenv(usecwd=True)
    if path:
        value = dotenv_values(path).get(name)
        if value:
            return value
    return None


def secrets(host: cfg.HostConfig) -> tuple[str, ...]:
    """Every secret value this host's settings name, to keep out of any output: the registry
    token, the notify tokens, a chat webhook URL read from the environment."""
    n = host.notify
    names = (
        host.registry.password_env if host.registry is not None else "",
        n.grafana_token_env,
        n.sentry_token_env,
        n.webhook_url_env,
    )
    return tuple(v for v in (secret(name) for name in names if name) if v)


def host_name(c: Any) -> str:
    name = getattr(c, "original_host", None) or getattr(c, "host", None)
    if not name:
        raise Exit("this task runs on a host: give one with -H (e.g. fab -H sandbox deploy)", code=2)
    return name


def load_host(c: Any, name: str) -> cfg.HostConfig:
    path = c.config.get("hosts_file", "hosts.toml")
    try:
        return cfg.load(path).host(name)
    except cfg.ConfigError as e:
        raise Exit(f"config error: {e}", code=2) from None


def connection_for(c: Connection, host: cfg.HostConfig) -> Connection:
    """The connection to use: hosts.toml's ``ssh`` details when given, else fab's own.

    Host keys are verified (against ``ssh.known_hosts`` or ~/.ssh/known_hosts) unless
    ``ssh.verify_host_key = false``: Fabric alone would accept any key.
    """
    s = host.ssh
    if s.hostname or s.port or s.user or s.identity_file:
        kwargs: dict[str, Any] = {"host": s.hostname or c.host, "config": c.config}
        if s.port:
            kwargs["port"] = s.port
        if s.user:
            kwargs["user"] = s.user
        if s.identity_file:
            kwargs["connect_kwargs"] = {
                "key_filename": [os.path.expanduser(s.identity_file)],
                "look_for_keys": False,
                "allow_agent": False,
            }
        cxn = Connection(**kwargs)
    else:
        cxn = c
    if s.verify_host_key:
        known = Path(os.path.expanduser(s.known_hosts or "~/.ssh/known_hosts"))
        if known.exists():
            try:
                cxn.client.load_host_keys(str(known))
            except (OSError, paramiko.SSHException, paramiko.hostkeys.InvalidHostKey) as e:
                raise Exit(f"[{host.name}] cannot read known hosts {known}: {e}", code=2) from None
        cxn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return cxn


def open_connection(cxn: Connection, name: str, host: cfg.HostConfig) -> None:
    try:
        cxn.open()
        cxn.client.get_transport().set_keepalive(SSH_KEEPALIVE)  # a dead connection is noticed, not waited on
    except paramiko.SSHException as e:
        hint = ""
        if "known_hosts" in str(e) or "not found" in str(e):
            hint = " (host key not known: add it to known_hosts, or set ssh.known_hosts in hosts.toml)"
        raise Exit(f"[{name}] cannot connect over ssh: {e}{hint}", code=2 if hint else 1) from None
    except OSError as e:
        raise Exit(f"[{name}] cannot connect over ssh: {e}", code=1) from None


@dataclass
class Session:
    name: str
    host: cfg.HostConfig
    r: Runner
    report: Reporter
    cxn: Any = None
    notes: list[str] = field(default_factory=list)  # said once, in the summary


def open_session(c: Any, dry_run: bool = False, out: Any = None) -> Session:
    name = host_name(c)
    host = load_host(c, name)
    cxn = connection_for(c, host)
    open_connection(cxn, name, host)  # a dry run reads the host too, so it connects as well
    out = out or sys.stdout
    return Session(name, host, Runner(SshExecutor(cxn), name, dry_run=dry_run, out=out), Reporter(name, out=out), cxn)
