#!/usr/bin/env python3
"""Failed requests during a deploy of the sandbox: today's way vs `fab -H sandbox deploy`.

Needs the sandbox (scripts/sandbox.sh up). For each strategy: publish new images of all four
apps, run the verify loop (all eight sandbox URLs) for the whole deploy, print the figures.
  .venv/bin/python scripts/bench_deploy.py [--rounds N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fabfile import config as cfg  # noqa: E402
from fabfile import verify as vloop  # noqa: E402

SANDBOX = str(ROOT / "scripts" / "sandbox.sh")


def sh(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)


def measure(name: str, deploy: list[str]) -> None:
    sh(SANDBOX, "publish")
    host = cfg.load(ROOT / "hosts.toml").host("sandbox")
    loop = vloop.BackgroundLoop(vloop.settings_for_host(host.verify)).start()
    time.sleep(1)
    t0 = time.monotonic()
    res = sh(*deploy)
    wall = time.monotonic() - t0
    time.sleep(2)
    report = loop.stop()
    status = "ok" if res.returncode == 0 else f"exit {res.returncode}"
    print(f"{name:<42} {report.failures:>6,} / {report.total:<7,} failed  deploy {wall:5.1f} s  ({status}; "
          f"{len(report.recorder.stale_retries)} stale keep-alive retries)", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    fab = str(ROOT / ".venv" / "bin" / "fab")
    for _ in range(args.rounds):
        measure("compose up -d --pull always --force-recreate", [SANDBOX, "naive-redeploy"])
        measure("fab -H sandbox deploy (native engine)", [fab, "-H", "sandbox", "deploy", "--no-verify"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
