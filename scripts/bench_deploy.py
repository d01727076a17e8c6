#!/usr/bin/env python3
"""What a deploy of the sandbox costs, strategy by strategy, in one run and one table.

Needs the sandbox (scripts/sandbox.sh up). Each row publishes new images of the four apps
(except "nothing changed"), runs the verify loop (the sandbox's eight URLs) for the whole
deploy, and prints: wall time, its ratio to a plain docker-rollout loop measured in the same
run, failed requests for a client that never retries and for one that retries a GET once on
a closed idle keep-alive connection (as browsers do), proxy loads and remote commands.
The docker-rollout rows need the plugin: ZDD_DOCKER_ROLLOUT=/path/to/docker-rollout. The
swarm row runs when the sandbox's swarm stack is up (scripts/sandbox.sh swarm-up): the same
four apps as a stack, measured against its own proxy (host sandbox-swarm).

  .venv/bin/python scripts/bench_deploy.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fabfile import config as cfg  # noqa: E402
from fabfile import verify as vloop  # noqa: E402

SANDBOX = str(ROOT / "scripts" / "sandbox.sh")
FAB = str(ROOT / ".venv" / "bin" / "fab")
STATE = Path(os.environ.get("ZDD_SANDBOX_DIR", "/var/lib/zdd-sandbox"))
LOCK = STATE / "home" / ".zdd" / "locks" / "__remilia"
APPS = ["server", "property", "identity", "profile-server"]
ROLLOUT = os.environ.get("ZDD_DOCKER_ROLLOUT", "")


@dataclass
class Row:
    name: str
    wall: float
    settled: float
    failed_no_retry: int
    failed_retry: int
    total: int
    loads: str
    commands: str
    status: str


def sh(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})


def as_host_user(shell: str) -> subprocess.CompletedProcess:
    return sh("su", "-s", "/bin/sh", "zddsbx", "-c", f"cd ~/remilia && {shell}")


def settle(timeout: float = 120) -> float:
    """Seconds until the previous deploy's restore job released the lock and every app runs
    one container (old ones gone)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        counts = [as_host_user(f"docker compose ps -aq {s}").stdout.split() for s in APPS]
        if not LOCK.exists() and all(len(c) == 1 for c in counts):
            break
        time.sleep(0.2)
    return time.monotonic() - t0


def hosts_file(one_tier: bool) -> dict:
    text = (ROOT / "hosts.toml").read_text()
    if one_tier:
        text = text.replace(
            "[hosts.sandbox]\n",
            '[hosts.sandbox]\nrollout = [["server", "property", "identity", "profile-server"]]\n',
            1,
        )
    f = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    f.write(text)
    f.close()
    return {"FABRIC_HOSTS_FILE": f.name}


def swarm_up() -> bool:
    out = sh("docker", "-H", f"unix://{STATE}/swarm/docker.sock", "stack", "ls", "--format", "{{.Name}}").stdout.split()
    return "remilia-swarm" in out


def measure(
    name: str, argv: list[str], publish: bool = True, env: dict | None = None, host_name: str = "sandbox"
) -> Row:
    settle()
    if publish:
        sh(SANDBOX, "publish")
    host = cfg.load(ROOT / "hosts.toml").host(host_name)
    loop = vloop.BackgroundLoop(vloop.settings_for_host(host.verify), finish_in_flight=True).start()
    time.sleep(1)
    t0 = time.monotonic()
    res = sh(*argv, env=env)
    wall = time.monotonic() - t0
    settled = wall + settle()
    time.sleep(1)
    report = loop.stop()
    m = re.search(r"cost: (\d+) remote commands, (\d+) proxy loads", res.stdout)
    status = "ok" if res.returncode == 0 else f"exit {res.returncode}: {(res.stderr or res.stdout).strip()[-120:]}"
    return Row(
        name,
        wall,
        settled,
        report.failures_without_retry,
        report.failures,
        report.total,
        m.group(2) if m else "-",
        m.group(1) if m else "-",
        status,
    )


def rollout_loop(recreate_caddy: bool) -> list[str]:
    loop = "docker compose pull -q && " + " && ".join(f"docker rollout -f docker-compose.yaml {s}" for s in APPS)
    if recreate_caddy:
        loop += " && docker compose up -d --force-recreate caddy"
    return ["su", "-s", "/bin/sh", "zddsbx", "-c", f"cd ~/remilia && {loop} >/dev/null 2>&1"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="row names to run (default: all)")
    args = ap.parse_args()
    if ROLLOUT:  # the loop rows run `docker rollout` as the sandbox's ssh user
        plugin = STATE / "home" / ".docker" / "cli-plugins" / "docker-rollout"
        sh("install", "-d", "-o", "zddsbx", "-g", "zddsbx", str(plugin.parent))  # the user's own dir
        sh("install", "-m", "755", "-o", "zddsbx", ROLLOUT, str(plugin))
    rows_spec = [
        ("compose up -d --force-recreate (today)", [SANDBOX, "naive-redeploy"], True, None, False),
        ("seed plan: docker-rollout loop + recreate caddy", rollout_loop(True), True, None, True),
        ("docker-rollout loop", rollout_loop(False), True, None, True),
        ("zdd native, 3 tiers", [FAB, "-H", "sandbox", "deploy", "--no-verify"], True, hosts_file(False), False),
        ("zdd native, 1 tier of 4", [FAB, "-H", "sandbox", "deploy", "--no-verify"], True, hosts_file(True), False),
        (
            "zdd native, nothing changed",
            [FAB, "-H", "sandbox", "deploy", "--no-verify"],
            False,
            hosts_file(False),
            False,
        ),
        ("zdd swarm engine, 3 tiers (stack)", [FAB, "-H", "sandbox-swarm", "deploy", "--no-verify"], True, None, False),
    ]
    rows: list[Row] = []
    for name, argv, publish, env, needs_plugin in rows_spec:
        if args.only and not any(o in name for o in args.only):
            continue
        if needs_plugin and not ROLLOUT:
            print(f"{name}: skipped (set ZDD_DOCKER_ROLLOUT to the docker-rollout script)", flush=True)
            continue
        swarm = "sandbox-swarm" in argv
        if swarm and not swarm_up():
            print(f"{name}: skipped (scripts/sandbox.sh swarm-up first)", flush=True)
            continue
        rows.append(measure(name, argv, publish, env, "sandbox-swarm" if swarm else "sandbox"))
        r = rows[-1]
        print(f"  measured {r.name}: {r.wall:.1f} s, {r.failed_retry} failed ({r.status})", flush=True)
    base = next((r.wall for r in rows if r.name == "docker-rollout loop"), None)
    print()
    print(
        "| strategy | wall | ratio to docker-rollout loop | until settled | failed, never retrying | "
        "failed, retrying once | requests | proxy loads | remote commands |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r.wall / base:.2f}×" if base else "-"
        print(
            f"| {r.name} | {r.wall:.1f} s | {ratio} | {r.settled:.1f} s | {r.failed_no_retry} | {r.failed_retry} | "
            f"{r.total:,} | {r.loads} | {r.commands} |"
        )
    bad = [r for r in rows if r.status != "ok" and "today" not in r.name]
    for r in bad:
        print(f"{r.name}: {r.status}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
