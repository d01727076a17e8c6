#!/usr/bin/env python3
"""Real operating conditions, one table: each scenario of tests/chaos.py on the sandbox, under
load, then a converging deploy. Columns: failed requests (a client that retries a stale
keep-alive GET once), containers per app after, the job that ran through it, the lock, the exit
codes (the disturbed run(s), then the converging deploy), the converging deploy's time.

Needs the sandbox (scripts/sandbox.sh up) and root (it mounts a tmpfs, stops dockerd for a while).

  .venv/bin/python scripts/chaos.py [--only SUBSTRING ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import chaos  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", default=[], help="run the scenarios whose name has this")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, run in chaos.scenarios(Path(tmp)):
            if args.only and not any(o in name for o in args.only):
                continue
            print(f"chaos: {name} ...", file=sys.stderr, flush=True)
            try:
                o = run()
            except Exception as e:  # a scenario that broke still gets its row
                o = chaos.Outcome(name, notes=[f"{type(e).__name__}: {e}"[:200]])
            rows.append(o)
            print(f"chaos: {name}: {'ok' if o.ok else 'NOT OK'} {o.notes}", file=sys.stderr, flush=True)
    head = (
        "scenario",
        "failed/requests",
        "old answered after new",
        "containers per app",
        "job",
        "lock",
        "exits",
        "converge",
        "ok",
    )
    table = [head] + [
        (
            o.scenario,
            f"{o.failed}/{o.requests:,}",
            f"{o.back_on_old:.1f}s",
            " ".join(str(n) for n in o.containers.values()) or "-",
            {None: "-", True: "running", False: "KILLED"}[o.job_running],
            "free" if o.lock_free else "HELD",
            ",".join(str(x) for x in o.exits),
            f"{o.converge_s:.1f}s",
            "yes" if o.ok else "NO",
        )
        for o in rows
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in table[1:]:
        print("| " + " | ".join(row) + " |")
    for o in rows:
        for note in o.notes:
            print(f"  {o.scenario}: {note}")
    return 0 if all(o.ok for o in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
