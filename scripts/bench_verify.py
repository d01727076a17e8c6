#!/usr/bin/env python3
"""Benchmark the verification loop against a local Caddy.

Starts ``caddy run`` on a free 127.0.0.1 port with a Caddyfile that responds
"bench v1", runs ``fabfile.verify.run`` against it with no rate limit, prints

    sustained: N req/s over T s, failures F, p99 X ms

and stops Caddy. Exit status: 0 on success, 1 if any request failed,
2 if caddy is missing or does not come up.

    .venv/bin/python scripts/bench_verify.py [--concurrency 32] [--duration 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fabfile.verify import VerifySettings, run  # noqa: E402

CADDYFILE = """\
{{
\tadmin off
\tauto_https off
}}

http://127.0.0.1:{port} {{
\trespond "bench v1" 200
}}
"""


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_caddy(path: str) -> str | None:
    """``path`` if executable, else ``caddy`` on PATH, else None."""
    if os.access(path, os.X_OK):
        return path
    return shutil.which("caddy")


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> bool:
    """True once 127.0.0.1:port accepts connections (False if caddy died or timed out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def start_caddy(caddy: str, workdir: Path, port: int) -> subprocess.Popen:
    """Write the Caddyfile and start caddy with XDG/HOME pointed into ``workdir``."""
    config = workdir / "Caddyfile"
    config.write_text(CADDYFILE.format(port=port))
    env = dict(
        os.environ, HOME=str(workdir), XDG_DATA_HOME=str(workdir / "data"), XDG_CONFIG_HOME=str(workdir / "config")
    )
    log = open(workdir / "caddy.log", "wb")
    return subprocess.Popen(
        [caddy, "run", "--config", str(config), "--adapter", "caddyfile"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=workdir,
    )


def stop_caddy(proc: subprocess.Popen) -> None:
    """Terminate caddy (kill after 5 s)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--caddy", default="/usr/bin/caddy")
    parser.add_argument("--json", help="also write the full report as JSON here")
    parser.add_argument("--render", action="store_true", help="print the full report too")
    args = parser.parse_args(argv)

    caddy = find_caddy(args.caddy)
    if caddy is None:
        print(f"error: caddy not found at {args.caddy} or on PATH", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        proc = start_caddy(caddy, workdir, port)
        try:
            if not wait_for_port(port, proc):
                log = (workdir / "caddy.log").read_text(errors="replace")[-2000:]
                print(f"error: caddy did not come up on 127.0.0.1:{port}\n{log}", file=sys.stderr)
                return 2
            settings = VerifySettings(
                urls=[f"http://127.0.0.1:{port}/"], concurrency=args.concurrency, duration=args.duration
            )
            report = run(settings)
        finally:
            stop_caddy(proc)
    if args.render:
        print(report.render())
    if args.json:
        report.write_json(args.json)
    p99 = report.latency["p99"]
    rate = report.total / report.elapsed if report.elapsed else 0.0
    versions = ", ".join(report.versions()) or "none"
    print(
        f"sustained: {rate:,.0f} req/s over {report.elapsed:.1f} s, failures {report.failures:,}, "
        f"p99 {'n/a' if p99 is None else f'{p99:.1f}'} ms  (concurrency {args.concurrency}, versions {versions})"
    )
    return 0 if report.failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
