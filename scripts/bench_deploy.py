#!/usr/bin/env python3
"""What a deploy of the sandbox costs, strategy by strategy, in one run and one table.

Needs the sandbox (scripts/sandbox.sh up). Each row publishes new images of the four apps
(except "nothing changed"), runs the verify loop (the sandbox's eight URLs) for the whole
deploy, and prints: wall time, its ratio to a plain docker-rollout loop measured in the same
run, failed requests for a client that never retries and for one that retries a GET once on
a closed idle keep-alive connection (as browsers do), proxy loads and remote commands.
The docker-rollout rows need the plugin: ZDD_DOCKER_ROLLOUT=/path/to/docker-rollout. The
swarm row runs when the sandbox's swarm stack is up (scripts/sandbox.sh swarm-up): the same
four apps as a stack, measured against its own proxy (host sandbox-swarm); "until settled" is
Swarm's verdict there (the monitor job done, no update in progress). --swarm-monitor S sets the
stack's update_config.monitor to S seconds for the run (a change of settings only).

With --scale N R it measures a bigger stack instead: N app services of R replicas each, built
from the sandbox's app images (service i runs the image of app i mod 4, so one publish changes
all of them) behind a Caddy of their own on port 18081, in the project ~/scale of the sandbox's
user; zdd rolls them in three tiers; the load is 8 keep-alive clients over every service's
/fast. The rows: the docker-rollout loop over the N services, zdd native, zdd with nothing
changed. The stack is removed afterwards (--keep leaves it up).

  .venv/bin/python scripts/bench_deploy.py [--only NAME ...] [--swarm-monitor S]
  .venv/bin/python scripts/bench_deploy.py --scale 12 2 [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
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
    timeline: list[str]
    canary_failed: str = "-"  # failed requests while a canary step ran
    exposed: str = "-"  # a bad release: first to last failed request (how long clients saw it fail)


def sh(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})


def as_host_user(shell: str, cwd_home: bool = False) -> subprocess.CompletedProcess:
    return sh("su", "-s", "/bin/sh", "zddsbx", "-c", shell if cwd_home else f"cd ~/remilia && {shell}")


@dataclass(frozen=True)
class Stack:
    """A compose project of the sandbox's user: its directory, app services and replicas."""

    dir: str  # under the user's home
    apps: tuple[str, ...]
    replicas: int = 1

    @property
    def lock(self) -> Path:
        return STATE / "home" / ".zdd" / "locks" / str(STATE / "home" / self.dir).replace("/", "_")

    def settled(self) -> bool:
        out = as_host_user(
            f"cd ~/{self.dir} && docker compose ps -a --format '{{{{.Service}}}}'", cwd_home=True
        ).stdout.split()
        return not self.lock.exists() and all(out.count(a) == self.replicas for a in self.apps)


REMILIA = Stack("remilia", tuple(APPS))


def settle(stack: Stack = REMILIA, timeout: float = 120) -> float:
    """Seconds until the previous deploy's restore job released the lock and every app runs
    its replicas only (old ones gone)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and not stack.settled():
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


GUARDED = [FAB, "-H", "sandbox", "deploy", "--no-verify", "--canary", "10,50"]


def guarded_hosts() -> dict:
    """The sandbox's hosts file with canary steps of 5 s judged from 5 answers, 1 % errors."""
    text = (ROOT / "hosts.toml").read_text()
    text += "\n[hosts.sandbox.canary]\nstep_seconds = 5\nmin_requests = 5\nmax_error_rate = 0.01\n"
    f = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    f.write(text)
    f.close()
    return {"FABRIC_HOSTS_FILE": f.name}


SWARM_DOCKER = ["docker", "-H", f"unix://{STATE}/swarm/docker.sock"]
SWARM_LOCK = STATE / "home" / ".zdd" / "locks" / "stack_remilia-swarm"


def swarm_up() -> bool:
    out = sh(*SWARM_DOCKER, "stack", "ls", "--format", "{{.Name}}").stdout.split()
    return "remilia-swarm" in out


def swarm_settle(timeout: float = 120) -> float:
    """Seconds until Swarm's verdict on the last swarm deploy: the monitor job freed the lock
    and no app's update is in progress (its monitor window over)."""
    t0 = time.monotonic()
    names = [f"remilia-swarm_{a}" for a in APPS]
    while time.monotonic() - t0 < timeout:
        states = sh(
            *SWARM_DOCKER,
            "service",
            "inspect",
            "--format",
            "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
            *names,
        )
        if not SWARM_LOCK.exists() and not re.search(r"updating|rollback_started", states.stdout):
            break
        time.sleep(0.2)
    return time.monotonic() - t0


def swarm_monitor(seconds: str) -> None:
    """Each app's update_config.monitor (a change of settings only: no task is replaced)."""
    for a in APPS:
        sh(*SWARM_DOCKER, "service", "update", "--detach", "--quiet", "--update-monitor", seconds, f"remilia-swarm_{a}")


def measure(
    name: str,
    argv: list[str],
    publish: bool | list[str] = True,  # a list: publish with these arguments (a bad release)
    env: dict | None = None,
    host_name: str = "sandbox",
    stack: Stack = REMILIA,
) -> Row:
    swarm = host_name == "sandbox-swarm"
    swarm_settle() if swarm else settle(stack)
    if publish:
        sh(SANDBOX, "publish", *(publish if isinstance(publish, list) else []))
    host = cfg.load((env or {}).get("FABRIC_HOSTS_FILE") or ROOT / "hosts.toml").host(host_name)
    loop = vloop.BackgroundLoop(vloop.settings_for_host(host.verify), finish_in_flight=True).start()
    time.sleep(1)
    t0 = time.monotonic()
    doc = Path(tempfile.mkdtemp()) / "deploy.json"
    if argv[:1] == [FAB]:
        argv = [*argv, "--json", str(doc)]
    res = sh(*argv, env=env)
    wall = time.monotonic() - t0
    settled = wall + (swarm_settle() if swarm else settle(stack))
    time.sleep(1)
    report = loop.stop()
    m = re.search(r"cost: (\d+) remote commands, (\d+) proxy loads", res.stdout)
    status = "ok" if res.returncode == 0 else f"exit {res.returncode}: {(res.stderr or res.stdout).strip()[-120:]}"
    canary_failed, exposed = guarded_figures(doc, report) if doc.exists() else ("-", "-")
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
        [ln.strip() for ln in res.stdout.splitlines() if re.match(r"\s+tier \d+ ", ln)],
        canary_failed,
        exposed,
    )


def guarded_figures(doc_path: Path, report) -> tuple[str, str]:
    """Failed requests during the run's canary steps ("-" without steps), and for a release
    that failed: seconds from the first failed request to the last one."""
    steps = json.loads(doc_path.read_text())["hosts"][0]["steps"] or []
    spans = [
        (datetime.fromisoformat(st["started_at"]).timestamp(), datetime.fromisoformat(st["ended_at"]).timestamp())
        for st in steps
        if st["name"].startswith("canary ") and st.get("started_at") and st.get("ended_at")
    ]
    times = [report.started_wall + f.t for f in report.recorder.failures]
    during = sum(1 for t in times if any(a <= t <= b for a, b in spans))
    exposed = f"{max(times) - min(times):.1f} s" if times else "-"
    return (str(during) if spans else "-"), exposed


def rollout_loop(recreate_caddy: bool, stack: Stack = REMILIA) -> list[str]:
    loop = "docker compose pull -q && " + " && ".join(f"docker rollout -f docker-compose.yaml {s}" for s in stack.apps)
    if recreate_caddy:
        loop += " && docker compose up -d --force-recreate caddy"
    return ["su", "-s", "/bin/sh", "zddsbx", "-c", f"cd ~/{stack.dir} && {loop} >/dev/null 2>&1"]


# --- a bigger stack: N services x R replicas ------------------------------------------------
SCALE_PORT = 18081
SIGTERMS = {"server": "abrupt", "property": "graceful", "identity": "ignore", "profile-server": "graceful"}


def scale_files(n: int, replicas: int) -> tuple[str, str]:
    """The compose file and Caddyfile of a stack of ``n`` apps of ``replicas`` each."""
    names = [f"s{i + 1:02d}" for i in range(n)]
    services = {}
    for i, name in enumerate(names):
        app = APPS[i % len(APPS)]
        services[name] = {
            "image": f"127.0.0.1:15000/zdd-sandbox/{app}:latest",
            "restart": "unless-stopped",
            "expose": ["8080"],
            "environment": {"SERVICE": name, "SIGTERM": SIGTERMS[app], "BOOT_DELAY": "2"},
            "deploy": {"replicas": replicas},
            "healthcheck": {
                "test": ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/health"],
                "interval": "1s",
                "timeout": "1s",
                "retries": 3,
            },
        }
    services["caddy"] = {
        "image": "127.0.0.1:15000/zdd-sandbox/base:latest",
        "command": ["caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"],
        "restart": "unless-stopped",
        "ports": [f"127.0.0.1:{SCALE_PORT}:80"],
        "volumes": ["./caddy:/etc/caddy:ro"],
    }
    routes = "".join(
        f"\thandle_path /{name}/* {{\n\t\treverse_proxy {name}:8080 {{\n\t\t\tstream_close_delay 5m\n\t\t}}\n\t}}\n"
        for name in names
    )
    caddyfile = (
        "{\n\tadmin localhost:2019\n\tauto_https off\n}\n\n"
        f':80 {{\n{routes}\thandle {{\n\t\trespond "zdd scale" 200\n\t}}\n}}\n'
    )
    return json.dumps({"services": services}, indent=1), caddyfile


def scale_hosts(stack: Stack) -> dict:
    """A hosts file with the sandbox's host and ``sandbox-scale``: the same ssh and registry,
    the stack's directory, three tiers, 8 keep-alive clients over each service's /fast."""
    text = (ROOT / "hosts.toml").read_text()
    third = -(-len(stack.apps) // 3)
    tiers = [list(stack.apps[i : i + third]) for i in range(0, len(stack.apps), third)]
    urls = [f"http://127.0.0.1:{SCALE_PORT}/{a}/fast" for a in stack.apps]
    extra = [
        "[hosts.sandbox-scale]",
        f'dir = "~/{stack.dir}"',
        'engine = "native"',
        "health_timeout = 60",
        "infra = []",
        f"rollout = {json.dumps(tiers)}",
    ]
    for part in ("ssh", "registry"):
        body = re.search(rf"^\[hosts\.sandbox\.{part}\]\n(.*?)(?=^\[|\Z)", text, re.S | re.M)
        extra += ["", f"[hosts.sandbox-scale.{part}]", body.group(1).strip() if body else ""]
    extra += ["", "[hosts.sandbox-scale.verify]", f"urls = {json.dumps(urls)}", "concurrency = 8", "rate = 40.0"]
    f = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    f.write(text + "\n\n" + "\n".join(extra) + "\n")
    f.close()
    return {"FABRIC_HOSTS_FILE": f.name}


def scale_up(n: int, replicas: int) -> Stack:
    stack = Stack("scale", tuple(f"s{i + 1:02d}" for i in range(n)), replicas)
    compose, caddyfile = scale_files(n, replicas)
    home = STATE / "home" / stack.dir
    (home / "caddy").mkdir(parents=True, exist_ok=True)
    (home / "docker-compose.yaml").write_text(compose)
    (home / "caddy" / "Caddyfile").write_text(caddyfile)
    sh("chown", "-R", "zddsbx:zddsbx", str(home))
    res = as_host_user(f"cd ~/{stack.dir} && docker compose up -d --quiet-pull", cwd_home=True)
    # not `up --wait`: a container starved of CPU while 24 boot at once may be called unhealthy
    # for a moment; the stack is ready once every one is healthy
    deadline = time.monotonic() + 300
    while res.returncode == 0 and time.monotonic() < deadline:
        health = as_host_user(
            f"cd ~/{stack.dir} && docker compose ps -a --format '{{{{.Health}}}}'", cwd_home=True
        ).stdout.split()
        if health.count("healthy") == len(stack.apps) * replicas:
            return stack
        time.sleep(1)
    raise SystemExit(f"bench: the scale stack did not come up: {(res.stderr or res.stdout).strip()[-300:]}")


def scale_down(stack: Stack) -> None:
    as_host_user(f"cd ~/{stack.dir} && docker compose down --timeout 1 --remove-orphans", cwd_home=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="row names to run (default: all)")
    ap.add_argument("--scale", nargs=2, type=int, metavar=("N", "R"), help="N services x R replicas instead")
    ap.add_argument("--keep", action="store_true", help="with --scale: leave the stack up")
    ap.add_argument(
        "--swarm-monitor", metavar="S", help="the swarm row with update_config.monitor S seconds (the file's: 2)"
    )
    args = ap.parse_args()
    if args.swarm_monitor and swarm_up():
        swarm_monitor(f"{args.swarm_monitor}s")
        try:
            args.swarm_monitor = None
            return main_with(args)
        finally:
            swarm_monitor("2s")
    return main_with(args)


def main_with(args: argparse.Namespace) -> int:
    if ROLLOUT:  # the loop rows run `docker rollout` as the sandbox's ssh user
        plugin = STATE / "home" / ".docker" / "cli-plugins" / "docker-rollout"
        sh("install", "-d", "-o", "zddsbx", "-g", "zddsbx", str(plugin.parent))  # the user's own dir
        sh("install", "-m", "755", "-o", "zddsbx", ROLLOUT, str(plugin))
    stack = REMILIA
    if args.scale:
        stack = scale_up(*args.scale)
        env = scale_hosts(stack)
        fab = [FAB, "-H", "sandbox-scale", "deploy", "--no-verify"]
        rows_spec = [
            ("docker-rollout loop", rollout_loop(False, stack), True, env, True),
            (f"zdd native, 3 tiers of {-(-len(stack.apps) // 3)}", fab, True, env, False),
            ("zdd native, nothing changed", fab, False, env, False),
        ]
        try:
            return report(measure_rows(rows_spec, args.only, stack, "sandbox-scale"))
        finally:
            if not args.keep:
                scale_down(stack)
    guarded_env = guarded_hosts()
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
        # guarded releases (last: a failing release leaves a bad :latest behind; the next row publishes)
        ("zdd canary [10, 50], a good release", [*GUARDED, "--watch", "0"], True, guarded_env, False),
        (
            "zdd canary [10, 50], a release answering 500",
            [*GUARDED, "--watch", "0"],
            ["--fail-after", "0"],
            guarded_env,
            False,
        ),
        (
            # it starts failing once every tier has switched, while the watch judges (the watch
            # begins at the last switch: README, Known limits)
            "zdd canary [10, 50] + watch 60 s, a release failing 60 s after it started",
            [*GUARDED, "--watch", "60"],
            ["--fail-after", "60"],
            guarded_env,
            False,
        ),
    ]
    rows = measure_rows(rows_spec, args.only, stack, "sandbox")
    if any("a release " in r.name for r in rows):  # a good :latest again, on the host too
        settle()
        sh(SANDBOX, "publish")
        sh(FAB, "-H", "sandbox", "deploy", "--no-verify", "--no-canary", "--wait")
    return report(rows)


def measure_rows(rows_spec: list, only: list[str] | None, stack: Stack, host_name: str) -> list[Row]:
    rows: list[Row] = []
    for name, argv, publish, env, needs_plugin in rows_spec:
        if only and not any(o in name for o in only):
            continue
        if needs_plugin and not ROLLOUT:
            print(f"{name}: skipped (set ZDD_DOCKER_ROLLOUT to the docker-rollout script)", flush=True)
            continue
        swarm = "sandbox-swarm" in argv
        if swarm and not swarm_up():
            print(f"{name}: skipped (scripts/sandbox.sh swarm-up first)", flush=True)
            continue
        rows.append(measure(name, argv, publish, env, "sandbox-swarm" if swarm else host_name, stack))
        r = rows[-1]
        print(f"  measured {r.name}: {r.wall:.1f} s, {r.failed_retry} failed ({r.status})", flush=True)
    return rows


def report(rows: list[Row]) -> int:
    base = next((r for r in rows if r.name == "docker-rollout loop"), None)
    print()
    print(
        "| strategy | wall | ratio to docker-rollout loop | until settled | ratio, settled | failed, never retrying | "
        "failed, retrying once | requests | proxy loads | remote commands | failed during the canary | "
        "a bad release: first to last failed request | exit |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r.wall / base.wall:.2f}×" if base else "-"
        settled = f"{r.settled / base.settled:.2f}×" if base else "-"
        print(
            f"| {r.name} | {r.wall:.1f} s | {ratio} | {r.settled:.1f} s | {settled} | {r.failed_no_retry} | "
            f"{r.failed_retry} | {r.total:,} | {r.loads} | {r.commands} | {r.canary_failed} | {r.exposed} | "
            f"{'0' if r.status == 'ok' else r.status.split(':')[0].removeprefix('exit ')} |"
        )
    for r in rows:
        if r.timeline:
            print(f"\n{r.name}, where the time went (host clock):")
            print("\n".join(f"  {line}" for line in r.timeline))
    bad = [r for r in rows if r.status != "ok" and "today" not in r.name and "a release " not in r.name]
    for r in bad:
        print(f"{r.name}: {r.status}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
