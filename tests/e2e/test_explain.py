"""`deploy --dry-run` runs the host programs in explain mode (fabfile/remote/lib.sh): what it
prints is what the deploy then runs. A real run records each command its host programs run in
the host's ~/.zdd/ran.log, in the same words as the explanation."""

import re

from tests import sandbox as sb

FLAGS = ("--wait", "--no-verify")
NOT_EXPLAINED = ("cd ", "sh -c ", "env ", "timeout --kill-after=")  # zdd's own argv (lock.sh, infra-up...)


def _ran_log() -> list[str]:
    """The commands the host programs recorded as they ran them, oldest first."""
    out = sb.as_host_user("cat ~/.zdd/ran.log 2>/dev/null || true").stdout
    return [line.split(" ran ", 1)[1] for line in out.splitlines() if " ran " in line]


def _normalised(commands: list[str]) -> list[str]:
    """What only exists at run time made equal: container ids (new ones, and the hold marker
    docker-rollout's hook waits for), run names in keep tags. Sorted: an old container's retire
    runs in the background while the next tier starts."""
    out = []
    for c in commands:
        c = re.sub(r"zdd-release-\d+-\d+", "zdd-release-T-P", c)
        c = re.sub(r"\b[0-9a-f]{12}\b", "<id>", c)
        c = re.sub(r"\b\d{8}-\d{6}-\d+\b", "<run>", c)
        out.append(c)
    return sorted(out)


def test_dry_run_prints_exactly_what_the_deploy_then_runs(settled):
    sb.publish()
    pulled = sb.fab("pull")  # the dry run plans with the images on the host: have the new ones there
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    dry = sb.fab("deploy", "--dry-run", *FLAGS)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "tier.sh explains (changing nothing):" in dry.stdout
    planned = [line.split("] would run: ", 1)[1] for line in dry.stdout.splitlines() if "] would run: " in line]
    explained = [c for c in planned if not c.startswith(NOT_EXPLAINED)]
    assert any(" up --detach --no-deps --no-recreate --scale " in c or " rollout " in c for c in explained), dry.stdout
    assert any(c.startswith("docker stop ") for c in explained), dry.stdout
    assert any("caddy reload --config /etc/caddy/Caddyfile" in c for c in explained), dry.stdout
    assert any(
        re.search(r"\] would wait: healthy: \S+ \(\d+ containers?\) up to \d+ s$", line)
        for line in dry.stdout.splitlines()
    ), dry.stdout

    before = len(_ran_log())
    res = sb.fab("deploy", *FLAGS)
    assert res.returncode == 0, res.stdout + res.stderr
    ran = _ran_log()[before:]
    assert _normalised(ran) == _normalised(explained), "\n".join(["dry run:", *explained, "ran:", *ran])
