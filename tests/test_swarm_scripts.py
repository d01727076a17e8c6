"""Engine swarm's host side run by a real POSIX sh (dash) against a stub `docker`, as the
builders render it: swarm_tier.sh (start a change, wait for Swarm's UpdateStatus of each
service, fail fast) and survey.sh --stack."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from fabfile import commands_swarm as swarm_cmds
from fabfile.commands_swarm import SwarmChange
from fabfile.config import HostConfig
from tests.test_remote_scripts import Host

STACK = "st"
# A `docker` for a Swarm manager that logs its arguments to $STUB/calls and answers from $STUB:
#   (`service inspect --format` of the image: r/NAME:2@sha256:cur, or what image-NAME holds)
#   svc-NAME        the UpdateStatus of service NAME (STATE|STARTED|MESSAGE), one line per
#                   `service inspect`, the last line repeated; no file: no such service
#   spec-NAME       whether `stack deploy` left its task template as it was (same, new; else changed)
#   tasks-NAME      its tasks (ID|NAME|DESIRED|CURRENT lines) as `service ps` lists them, one frame
#                   per call, frames separated by `--` lines, the last frame repeated
#   replicas        what `service ls --format` prints
#   ps-NAME         what `service ps` of service NAME prints (default: a failed task on node n1)
#   update-fails    `service update` / `service rollback` fail
#   deploy-fails    `stack deploy` fails
#   compose, inspect   survey: `compose config` and `service inspect ID...` output
#   login-fails     `login` fails
#   login           written by `login`: its DOCKER_CONFIG, then its stdin (the token)
#   configs         the DOCKER_CONFIG ("-" for none) of each `service update`/`stack deploy`, and
#                   whether that config held a login then ("with login")
#   nodes-ls        what `node ls --format` prints (HOSTNAME|STATUS lines; default: n1, n2 Ready)
#   held-NAME       what `service ps --format {{.Name}}|{{.Node}}|{{.CurrentState}}` prints for NAME
#   task-ID         the node ID of task ID (`inspect --type task`); no file: no such task
#   node-ID         `node inspect --format` of node ID (AVAILABILITY|STATE)
#   placement       what `service inspect --format` of the placement prints (NAME CONSTRAINT... lines)
#   drain-fails     `node update` fails
#   node-ps         what `node ps --format {{.Name}}` prints (the tasks on the node)
#   proxy-task      what `ps --quiet` (the proxy's task on this node) prints; proxy-running: its config
SWARM_DOCKER = r"""#!/bin/sh
d=$STUB
printf '%s\n' "$*" >> "$d/calls"
case "$1" in
login)
    [ -e "$d/login-fails" ] && { echo "Error response from daemon: unauthorized" >&2; exit 1; }
    { echo "$DOCKER_CONFIG"; cat; } > "$d/login"
    echo '{"auths": {}}' > "$DOCKER_CONFIG/config.json"
    exit 0 ;;
esac
case "$1 $2" in
"service update" | "stack deploy")
    printf '%s %s\n' "${DOCKER_CONFIG:--}" "$([ -e "${DOCKER_CONFIG:-/nonexistent}/config.json" ] && echo with login)" \
        >> "$d/configs" ;;
esac
case "$1 $2" in
"service inspect")
    if [ "$3" != --format ]; then shift 2; cat "$d/inspect"; exit 0; fi
    case "$4" in *ContainerSpec.Image*) cat "$d/image-$5" 2>/dev/null || echo "r/$5:2@sha256:cur"; exit 0 ;; esac
    case "$4" in *Placement*) cat "$d/placement" 2>/dev/null; exit 0 ;; esac
    case "$4" in *PreviousSpec*)
        shift 4
        for n in "$@"; do printf '%s|%s\n' "$n" "$(cat "$d/spec-$n" 2>/dev/null || echo changed)"; done
        exit 0 ;;
    esac
    shift 4
    rc=0
    for n in "$@"; do
        f="$d/svc-$n"
        [ -e "$f" ] || { echo "Error: no such service: $n" >&2; rc=1; continue; }
        k=$(cat "$d/n-$n" 2>/dev/null || echo 0)
        k=$((k + 1))
        echo "$k" > "$d/n-$n"
        total=$(wc -l < "$f")
        [ "$k" -gt "$total" ] && k=$total
        printf '%s|%s\n' "$n" "$(sed -n "${k}p" "$f")"
    done
    exit $rc ;;
"service update" | "service rollback")
    [ -e "$d/update-fails" ] && { echo "Error response from daemon: rpc error: bad" >&2; exit 1; }
    exit 0 ;;
"service ls")
    case "$*" in *--quiet*) echo id1; echo id2 ;; *) cat "$d/replicas" 2>/dev/null ;; esac ;;
"service ps")
    case "$5" in "{{.Name}}|{{.Node}}|"*) shift 5; for n in "$@"; do cat "$d/held-$n" 2>/dev/null; done; exit 0 ;; esac
    case "$5" in "{{.ID}}|"*)
        shift 5
        for n in "$@"; do
            k=$(cat "$d/np-$n" 2>/dev/null || echo 0)
            k=$((k + 1))
            echo "$k" > "$d/np-$n"
            frames=$(($(grep -c '^--$' "$d/tasks-$n") + 1))
            [ "$k" -gt "$frames" ] && k=$frames
            awk -v k="$k" 'BEGIN { f = 1 } /^--$/ { f++; next } f == k' "$d/tasks-$n"
        done
        exit 0 ;;
    esac
    for last in "$@"; do :; done
    if [ -e "$d/ps-$last" ]; then cat "$d/ps-$last"; exit 0; fi
    echo "st_server.1 on n1: r/server@sha256:bad Failed 1 second ago task: non-zero exit (1)" ;;
"stack deploy")
    [ -e "$d/deploy-fails" ] && { echo "failed to update service st_server: bad spec" >&2; exit 1; }
    echo "Updating service st_server (id: x)"
    echo "Ignoring unsupported options: restart" >&2 ;;
"info --format") echo "active true" ;;
"node ps") cat "$d/node-ps" 2>/dev/null ;;
"node update") [ -e "$d/drain-fails" ] && { echo "Error response from daemon: node not found" >&2; exit 1; } ;;
"node ls")
    case "$*" in
        *--format*) cat "$d/nodes-ls" 2>/dev/null || printf 'n1|Ready\nn2|Ready\n' ;;
        *) echo n1; echo n2 ;;
    esac ;;
"node inspect")
    if [ "$3" = --format ]; then cat "$d/node-$5"; exit; fi
    cat "$d/nodes" 2>/dev/null || echo '[]' ;;
"inspect --type") cat "$d/task-$6" 2>/dev/null || { echo "Error: No such task: $6" >&2; exit 1; } ;;
"compose -f") cat "$d/compose" ;;
"ps --quiet") cat "$d/proxy-task" 2>/dev/null ;;
"exec c1") cat "$d/proxy-running" ;;
esac
exit 0
"""

# `date +%s` on a clock of the test's own once it sets one ($STUB/clock: "NOW STEP"): each read
# says NOW and moves the clock on by STEP seconds, so a wait loop's seconds pass at every poll
CLOCK_DATE = f"""#!/bin/sh
if [ "$*" = +%s ] && [ -e "$STUB/clock" ]; then
    read -r t step < "$STUB/clock"
    echo "$((t + step)) $step" > "$STUB/clock"
    echo "$t"
    exit 0
fi
exec {shutil.which("date") or "/bin/date"} "$@"
"""


class Manager(Host):
    """The fake host of test_remote_scripts with a Swarm manager's `docker`."""

    def __init__(self, tmp_path: Path):
        super().__init__(tmp_path)
        (tmp_path / "bin" / "docker").write_text(SWARM_DOCKER)
        (tmp_path / "bin" / "date").write_text(CLOCK_DATE)
        (tmp_path / "bin" / "date").chmod(0o755)
        self.config = HostConfig(
            name="t",
            dir="~/app",
            compose_files=("x.yaml",),
            engine="swarm",
            stack_name=STACK,
            rollout=(("server", "property"),),
        )
        self.state = self.home / ".zdd" / "stacks" / f"{STACK}.json"

    def service(self, name: str, *states: str) -> None:
        self.set(f"svc-{STACK}_{name}", "".join(s + "\n" for s in states))

    def tasks(self, name: str, *frames: list[str]) -> None:
        self.set(f"tasks-{STACK}_{name}", "--\n".join("".join(t + "\n" for t in f) for f in frames))

    def tier(
        self,
        action: str,
        *names: str,
        ceiling: int = 20,
        hashes: str = "",
        watch: tuple[str, ...] = (),
        replaced: bool = False,
        job_run: str = "",
        key: str = "",
        node: str = "",
    ) -> tuple[int, list[str], float]:
        changes = [
            SwarmChange(n, f"r/{n}:1@sha256:new", f"r/{n}:1", ("order", "rollback-order") if n == "server" else ())
            if action == "update"
            else SwarmChange(n, sets=("order",) if n == "server" else ())
            if action == "move"
            else SwarmChange(n)
            for n in names
        ]
        t0 = time.monotonic()
        res = self.run(
            swarm_cmds.swarm_tier(
                self.config,
                action,
                changes,
                ceiling,
                hashes,
                key,
                watch=watch,
                replaced=replaced,
                job_run=job_run,
                node=node,
            ),
            timeout=60,
        )
        return (
            res.returncode,
            [ln for ln in res.stdout.splitlines() if not ln.startswith("progress ")],
            time.monotonic() - t0,
        )


@pytest.fixture
def manager(tmp_path) -> Manager:
    return Manager(tmp_path)


OLD = "completed|2026-11-27 09:00:00 +0000 UTC|update completed"
NEW = "2026-11-27 10:00:00 +0000 UTC"


def test_update_starts_every_service_then_waits_for_each(manager):
    manager.service("server", OLD, "none||", f"updating|{NEW}|update in progress", f"completed|{NEW}|update completed")
    manager.service("property", "none||", f"updating|{NEW}|", f"updating|{NEW}|", f"completed|{NEW}|done")
    rc, out, took = manager.tier("update", "server", "property")
    assert rc == 0, out
    assert out[:2] == ["started server", "started property"]
    assert out[2:4] == ["done server completed", "done property completed"]
    assert out[-1].startswith("ok after ")
    calls = manager.calls()
    updates = [c for c in calls if c.startswith("service update")]
    # server's running spec rolls back stop-first: its settings first (no task replaced), so that
    # the spec the update starts from, which Swarm's rollback returns to, rolls back start-first
    assert updates == [
        "service update --detach --quiet --rollback-order start-first st_server",
        "service update --detach --quiet --with-registry-auth --force --image r/server:1@sha256:new "
        "--rollback-order start-first --update-order start-first --label-add com.docker.stack.image=r/server:1 "
        "st_server",
        "service update --detach --quiet --with-registry-auth --force --image r/property:1@sha256:new "
        "--rollback-order start-first --label-add com.docker.stack.image=r/property:1 st_property",
    ]
    # one inspect of both services per poll (the first one reads what Swarm said before)
    assert sum(c.startswith("service inspect --format") and c.endswith("st_server st_property") for c in calls) >= 4


def test_an_old_verdict_does_not_count(manager):
    """`completed` of the previous update (same StartedAt) is not this update's verdict."""
    manager.service("server", OLD, OLD, OLD, f"updating|{NEW}|", f"completed|{NEW}|")
    rc, out, took = manager.tier("update", "server")
    assert rc == 0 and out[1] == "done server completed"
    assert len([c for c in manager.calls() if c.startswith("service inspect")]) == 5


@pytest.mark.parametrize("verdict", ["rollback_started", "rollback_completed", "paused", "rollback_paused"])
def test_update_fails_at_once_naming_the_service(manager, verdict):
    manager.service(
        "server",
        OLD,
        f"updating|{NEW}|",
        f"{verdict}|{NEW}|update rolled back due to failure or early termination of task abc",
    )
    manager.service("property", "none||", f"updating|{NEW}|")
    rc, out, took = manager.tier("update", "server", "property")
    assert rc == 1
    assert out[-1] == f"failed server: {verdict} (update rolled back due to failure or early termination of task abc)"
    assert out[-2] == "detail server st_server.1 on n1: r/server@sha256:bad Failed 1 second ago task: non-zero exit (1)"
    assert (
        "service ps --no-trunc --format {{.Name}} on {{if .Node}}{{.Node}}{{else}}no node{{end}}: {{.Image}} "
        "{{.CurrentState}} {{.Error}} st_server" in manager.calls()
    )  # each task names its node: a failure on a node that went away says which
    assert took < 5


def test_update_that_cannot_start_fails(manager):
    manager.service("server", OLD)
    manager.set("update-fails")
    rc, out, took = manager.tier("update", "server")
    assert (rc, out) == (
        1,
        [
            "failed server: docker service update --rollback-order start-first: Error response from daemon: "
            "rpc error: bad"
        ],
    )
    manager.service("property", OLD)
    rc, out, took = manager.tier("update", "property")
    assert (rc, out) == (1, ["failed property: docker service update: Error response from daemon: rpc error: bad"])


def test_a_service_that_is_gone_fails(manager):
    rc, out, took = manager.tier("update", "server")
    assert rc == 1 and out[-1] == "failed server: the service is gone"


def test_update_gives_up_at_the_ceiling(manager):
    manager.service("server", OLD, f"updating|{NEW}|")
    rc, out, took = manager.tier("update", "server", ceiling=1)
    assert rc == 1 and out[-1] == "failed timeout after 1s: server: updating (Swarm goes on with it)"
    assert took < 10


def test_a_task_no_node_can_take_fails_at_the_ceiling_saying_so(manager):
    """A start-first task Swarm can place nowhere (max_replicas_per_node, constraints, a node
    gone) stays pending: the wait ends at its ceiling naming the service, the nodes and why."""
    manager.service("server", OLD, f"updating|{NEW}|update in progress")
    manager.service("property", OLD, f"updating|{NEW}|", f"completed|{NEW}|update completed")
    manager.set(
        f"ps-{STACK}_server",
        "st_server.2 on no node: r/server:1@sha256:new Pending 2 seconds ago no suitable node (max replicas per "
        "node limit exceed)\nst_server.2 on n2: r/server:1@sha256:old Running 5 minutes ago \n",
    )
    rc, out, took = manager.tier("update", "server", "property", ceiling=2)
    assert rc == 1 and took < 10
    assert out[-3:] == [
        "detail server st_server.2 on no node: r/server:1@sha256:new Pending 2 seconds ago no suitable node (max "
        "replicas per node limit exceed)",
        "detail server st_server.2 on n2: r/server:1@sha256:old Running 5 minutes ago ",
        "failed timeout after 2s: server: updating; server: a task waits for a node: no suitable node (max replicas "
        "per node limit exceed) (Swarm goes on with it)",
    ]
    # no "detail" lines of the service that completed: its tasks are not listed
    assert not any(
        c.endswith("st_property") and c.startswith("service ps --no-trunc --format {{.Name}} on")
        for c in manager.calls()
    )


def test_rollback_waits_for_rollback_completed_and_forgets_what_was_applied(manager):
    manager.state.parent.mkdir(parents=True)
    manager.state.write_text('{"server": "h"}\n')
    manager.service(
        "server",
        OLD,
        f"rollback_started|{NEW}|manually requested rollback",
        f"rollback_completed|{NEW}|rollback completed",
    )
    rc, out, took = manager.tier("rollback", "server")
    assert rc == 0, out
    assert out[:2] == ["started server", "done server rollback_completed"]
    assert "service rollback --detach --quiet st_server" in manager.calls()
    assert not manager.state.exists()


def test_a_rollback_whose_previous_spec_rolls_back_stop_first_is_a_start_first_update(manager):
    """Swarm would roll back with the previous spec's RollbackConfig (stop-first): the same
    image as an update, start-first, marked so that zdd does not roll it "back" again."""
    manager.service("server", OLD, f"updating|{NEW}|", f"completed|{NEW}|update completed")
    change = SwarmChange("server", "r/server:1@sha256:old", "r/server:1", ("as-update",))
    res = manager.run(swarm_cmds.swarm_tier(manager.config, "rollback", [change], 20), timeout=60)
    assert res.returncode == 0, res.stdout
    assert "done server completed" in res.stdout.splitlines()
    updates = [c for c in manager.calls() if c.startswith(("service update", "service rollback"))]
    assert updates == [
        "service update --detach --quiet --with-registry-auth --image r/server:1@sha256:old --update-order start-first "
        "--rollback-order start-first --label-add zdd.rolled-back-from=r/st_server:2@sha256:cur "
        "--label-add com.docker.stack.image=r/server:1 st_server"
    ]
    manager.service("server", OLD, f"paused|{NEW}|update paused due to failure")
    (manager.stub / f"n-{STACK}_server").unlink()  # its UpdateStatus read from the start
    res = manager.run(swarm_cmds.swarm_tier(manager.config, "rollback", [change], 20), timeout=60)
    assert res.returncode == 1 and res.stdout.splitlines()[-1] == "failed server: paused (update paused due to failure)"


def test_a_stack_deploy_prepares_the_services_that_roll_back_stop_first(manager):
    manager.service("server", OLD, f"completed|{NEW}|")
    manager.set("replicas", f"{STACK}_server 1/1\n")
    changes = [SwarmChange("server", sets=("rollback-order",))]
    res = manager.run(swarm_cmds.swarm_tier(manager.config, "stack", changes, 20), timeout=60)
    assert res.returncode == 0, res.stdout
    changed = [c for c in manager.calls() if c.startswith(("service update", "stack deploy"))]
    assert changed == [
        "service update --detach --quiet --rollback-order start-first st_server",
        "stack deploy --with-registry-auth --resolve-image changed -c x.yaml st",
    ]


def test_a_paused_rollback_fails(manager):
    manager.service("server", OLD, f"rollback_paused|{NEW}|rollback paused")
    rc, out, took = manager.tier("rollback", "server")
    assert rc == 1 and out[-1] == "failed server: rollback_paused (rollback paused)"


def test_stack_deploys_then_waits_and_records_what_it_applied(manager):
    """A changed service waits for its update; one whose task template changed but that Swarm
    did not update is done once its tasks all run, after the grace."""
    manager.service("server", OLD, "none||", f"updating|{NEW}|", f"completed|{NEW}|")
    manager.service("redis", "none||")
    manager.set("replicas", f"{STACK}_server 1/1\n{STACK}_redis 0/1\n")
    hashes = '{"redis": "h2", "server": "h1"}'
    t0 = time.monotonic()
    proc = manager.start(
        swarm_cmds.swarm_tier(manager.config, "stack", [SwarmChange("server"), SwarmChange("redis")], 30, hashes)
    )
    time.sleep(6.5)
    manager.set("replicas", f"{STACK}_server 1/1\n{STACK}_redis 1/1 (max 1 per node)\n")
    out, _ = proc.communicate(timeout=20)
    lines = [ln for ln in out.splitlines() if not ln.startswith("progress ")]
    assert proc.returncode == 0, out
    assert lines[:3] == ["note Ignoring unsupported options: restart", "started st", "done server completed"]
    assert lines[3] == "done redis running 1/1" and lines[-1].startswith("ok after ")
    assert "progress redis: running 0/1, " in out
    assert "stack deploy --with-registry-auth --resolve-image changed -c x.yaml st" in manager.calls()
    assert json.loads(manager.state.read_text()) == json.loads(hashes)
    assert time.monotonic() - t0 >= 6.5


def test_a_failed_stack_deploy_records_nothing(manager):
    manager.set("deploy-fails")
    rc, out, took = manager.tier("stack", "server", hashes='{"server": "h"}')
    assert rc == 1
    assert out == [
        "detail st failed to update service st_server: bad spec",
        "failed st: docker stack deploy: failed to update service st_server: bad spec",
    ]
    assert not manager.state.exists()


def test_a_login_goes_to_a_temporary_config_that_the_changes_use_and_that_is_removed(manager):
    manager.service("server", OLD, f"updating|{NEW}|", f"completed|{NEW}|update completed")
    cmd = swarm_cmds.swarm_tier(
        manager.config, "update", [SwarmChange("server", "r/server:1@sha256:new")], 20, login=("reg.test", "bot")
    )
    res = manager.run(cmd, stdin=swarm_cmds.login_line("t0ken") + "\n", timeout=60)
    assert res.returncode == 0, res.stdout
    config, token = (manager.stub / "login").read_text().splitlines()
    assert token == "t0ken" and config.startswith("/") and not Path(config).exists()  # removed at the end
    assert (manager.stub / "configs").read_text() == f"{config} with login\n"
    assert "login --username bot --password-stdin reg.test" in manager.calls()
    assert all("t0ken" not in c for c in manager.calls()) and "t0ken" not in res.stdout + res.stderr
    assert not (manager.home / ".docker").exists()


def test_a_login_that_fails_changes_nothing(manager):
    manager.service("server", OLD)
    manager.set("login-fails")
    cmd = swarm_cmds.swarm_tier(manager.config, "stack", [SwarmChange("server")], 20, login=("reg.test", "bot"))
    res = manager.run(cmd, stdin="login t0ken\n", timeout=60)
    assert (res.returncode, res.stdout) == (
        1,
        "failed registry reg.test: docker login: Error response from daemon: unauthorized\n",
    )
    assert not any(c.startswith(("service update", "stack deploy")) for c in manager.calls())


def test_without_login_the_changes_use_the_users_docker_config(manager):
    manager.service("server", OLD, f"completed|{NEW}|update completed")
    rc, out, took = manager.tier("update", "server")
    assert rc == 0 and (manager.stub / "configs").read_text() == "- \n- \n"  # the settings, then the image
    assert not any(c.startswith("login") for c in manager.calls())


def test_survey_of_a_stack(manager):
    manager.set("compose", '{"services": {"server": {"image": "r/server:1"}}}')
    manager.set("replicas", "st_server 1/1\n")
    manager.set("inspect", '[{"Spec": {"Name": "st_server"}}]')
    res = manager.run(swarm_cmds.stack_survey(manager.config))
    assert res.returncode == 0, res.stderr
    sections = [ln for ln in res.stdout.splitlines() if ln.startswith("=== ")]
    assert sections == [
        "=== key 0",
        "=== lock 0",
        "=== journal 0",
        "=== compose 0",
        "=== node 0",
        "=== replicas 0",
        "=== applied 1",
        "=== nodes 0",
        "=== services 0",
    ]
    assert res.stdout.startswith("=== key 0\nstack_st\n=== lock 0\n=== journal 0\n")
    assert "active true" in res.stdout and '[{"Spec": {"Name": "st_server"}}]' in res.stdout
    calls = manager.calls()
    assert "compose -f x.yaml config --format json" in calls
    assert "service ls --quiet --filter label=com.docker.stack.namespace=st" in calls
    assert "service inspect id1 id2" in calls
    assert "node ls --quiet" in calls and "node inspect n1 n2" in calls  # where tasks may go
    manager.state.parent.mkdir(parents=True)
    manager.state.write_text('{"server": "h"}\n')
    (manager.home / ".zdd" / "locks" / "stack_st").mkdir(parents=True)
    (manager.home / ".zdd" / "locks" / "stack_st" / "holder").write_text("alice@laptop pid 1 deploy\n")
    (manager.home / ".zdd" / "journal").mkdir(parents=True)
    (manager.home / ".zdd" / "journal" / "stack_st.jsonl").write_text('{"run": "r1", "event": "start"}\n')
    manager.set("proxy-task", "c1\n")  # the proxy runs a task here: the config it runs is read
    manager.set("proxy-running", '{"apps": {}}')
    again = manager.run(swarm_cmds.stack_survey(manager.config)).stdout
    assert '=== applied 0\n{"server": "h"}' in again
    assert '\n=== proxy-running 0\n{"apps": {}}\n=== services 0\n[{"Spec": {"Name": "st_server"}}]' in again
    assert "ps --quiet --filter label=com.docker.swarm.service.name=st_caddy" in manager.calls()
    assert "exec c1 wget -q -O - http://localhost:2019/config/" in manager.calls()
    assert again.startswith(
        "=== key 0\nstack_st\n=== lock 0\nalice@laptop pid 1 deploy\n"
        '=== journal 0\n{"run": "r1", "event": "start"}\n=== compose 0\n'
    )


def test_journal_lines_are_written_before_the_change(manager):
    manager.service("server", OLD, f"completed|{NEW}|update completed")
    change = SwarmChange("server", "r/server:1@sha256:new", "r/server:1")
    plan = ('{"run": "r1", "event": "plan"}', '{"run": "r1", "event": "x"}')
    res = manager.run(
        swarm_cmds.swarm_tier(manager.config, "update", [change], 20, key="stack_st", journal=plan), timeout=60
    )
    assert res.returncode == 0, res.stdout
    journal = manager.home / ".zdd" / "journal" / "stack_st.jsonl"
    assert journal.read_text() == "".join(line + "\n" for line in plan)


def test_the_lock_is_renewed_while_swarm_tier_waits(manager):
    lock = manager.home / ".zdd" / "locks" / "stack_st"
    lock.mkdir(parents=True)
    (lock / "renewed").touch()
    os.utime(lock / "renewed", (1, 1))
    manager.service("server", OLD, "none||", f"updating|{NEW}|", f"completed|{NEW}|update completed")
    res = manager.run(
        swarm_cmds.swarm_tier(
            manager.config, "update", [SwarmChange("server", "r/server:1@sha256:new")], 20, key="stack_st"
        ),
        timeout=60,
    )
    assert res.returncode == 0, res.stdout
    assert (lock / "renewed").stat().st_mtime > time.time() - 60


# --- tiers that overlap Swarm's monitor window ------------------------------------------------

UPDATING = f"updating|{NEW}|update in progress"
DONE = f"completed|{NEW}|update completed"


def task(tid: str, slot: int, desired: str, current: str, name: str = "server", image: str = "") -> str:
    """A `service ps` line; its image the update's (ids n…, NAME-n…) or the one before."""
    new = tid.startswith("n") or f"{name}-n" in tid
    return (
        f"{tid}|{STACK}_{name}.{slot}|{desired}|{current}|{image or f'r/{name}:1@sha256:' + ('new' if new else 'old')}"
    )


def test_a_tier_with_a_later_one_is_done_once_swarm_has_replaced_its_tasks(manager):
    """-r: done when no task from before is desired running and each slot runs a new task
    (Swarm reports a task with a healthcheck running only once it is healthy), while Swarm
    still says `updating` (its monitor window)."""
    manager.service("server", OLD, UPDATING)
    history = task("h0", 1, "Shutdown", "Shutdown 3 hours ago")
    old = [history, task("o1", 1, "Running", "Running 2 hours ago"), task("o2", 2, "Running", "Running 2 hours ago")]
    manager.tasks(
        "server",
        old,
        [*old, task("n1", 1, "Running", "Starting 1 second ago")],  # start-first: the new one is not healthy yet
        [
            history,
            task("o1", 1, "Shutdown", "Running 2 hours ago"),  # out of service discovery, stopping
            old[2],
            task("n1", 1, "Running", "Running 1 second ago"),
            task("n2", 2, "Ready", "Preparing 1 second ago"),
        ],
        [
            history,
            task("o1", 1, "Shutdown", "Shutdown 1 second ago"),
            task("o2", 2, "Shutdown", "Running 2 hours ago"),
            task("n1", 1, "Running", "Running 3 seconds ago"),
            task("n2", 2, "Running", "Running 1 second ago"),
        ],
    )
    rc, out, took = manager.tier("update", "server", replaced=True)
    assert rc == 0, out
    assert out[:2] == ["started server", "done server replaced"] and out[2].startswith("ok after ")
    ps = [c for c in manager.calls() if c.startswith("service ps")]
    assert (
        ps
        == ["service ps --no-trunc --format {{.ID}}|{{.Name}}|{{.DesiredState}}|{{.CurrentState}}|{{.Image}} st_server"]
        * 4
    )
    assert (manager.stub / f"n-{STACK}_server").read_text().strip() != "0"  # never saw `completed`


def test_a_task_of_another_image_swarm_starts_meanwhile_keeps_the_tier_waiting(manager):
    """One not there before the update (Swarm reconciling a node that came back) still carries
    traffic: the tasks are replaced only once no task of another image is desired running."""
    manager.service("server", OLD, UPDATING)
    o1 = task("o1", 1, "Running", "Running 1 hour ago")
    n1 = task("n1", 1, "Running", "Running 1 second ago")
    stray = task("x2", 2, "Running", "Running 1 second ago", image="r/server:0@sha256:older")
    manager.tasks(
        "server",
        [o1],
        [task("o1", 1, "Shutdown", "Shutdown 1 second ago"), n1, stray],
        [task("o1", 1, "Shutdown", "Shutdown 1 second ago"), n1, stray],
        [task("o1", 1, "Shutdown", "Shutdown 2 seconds ago"), n1, task("x2", 2, "Shutdown", "Shutdown 1 second ago")],
    )
    rc, out, took = manager.tier("update", "server", replaced=True)
    assert rc == 0 and out[1] == "done server replaced", out
    assert (manager.stub / f"np-{STACK}_server").read_text().strip() == "4"  # not before the stray one went


def test_tiers_overlap_swarms_monitor_window_and_the_last_waits_for_every_verdict(manager):
    """Tier 2 starts while Swarm still monitors tier 1 (`updating`); the last tier watches both
    and ends only once Swarm says `completed` for all three."""
    manager.service("server", OLD, *[UPDATING] * 4, DONE)
    manager.service("property", OLD, *[UPDATING] * 4, DONE)  # completed after profile: waited for
    manager.service("profile", OLD, UPDATING, DONE)
    for name in ("server", "property"):
        before = [task(f"{name}-o1", 1, "Running", "Running 1 hour ago", name)]
        after = [task(f"{name}-o1", 1, "Shutdown", "Shutdown 1 second ago", name)]
        manager.tasks(name, before, [*after, task(f"{name}-n1", 1, "Running", "Running 1 second ago", name)])
    first = manager.tier("update", "server", replaced=True)
    assert first[:2] == (0, ["started server", "done server replaced", first[1][-1]])
    second = manager.tier("update", "property", watch=("server",), replaced=True)
    assert second[:2] == (0, ["started property", "done property replaced", second[1][-1]])
    # server's own update (after its rollback-order settings) and property's: server still `updating`
    assert sum(c.startswith("service update") and "--image" in c for c in manager.calls()) == 2
    rc, out, took = manager.tier("update", "profile", watch=("server", "property"))
    assert rc == 0, out
    assert out[:4] == ["started profile", "done server completed", "done profile completed", "done property completed"]
    assert out[4].startswith("ok after ") and len(out) == 5
    updates = [c.split()[-1] for c in manager.calls() if c.startswith("service update") and "--image" in c]
    assert updates == ["st_server", "st_property", "st_profile"]  # a watched service is not changed
    # no -r: profile's tasks are read once when Swarm says completed (no task of another image
    # left), then once with every service's when all are (no slot running two tasks)
    reads = [c.split()[5:] for c in manager.calls() if c.startswith("service ps") and "st_profile" in c]
    assert reads == [["st_profile"], ["st_profile", "st_server", "st_property"]]


def monitor_job(manager: Manager, verdict: str) -> tuple[int, list[str], Path, Path]:
    """The last tier of run R1 (-r -j R1) under the deploy's lock: property replaced while
    Swarm still monitors it and the earlier tier's server; server then ends as ``verdict``."""
    lock = manager.home / ".zdd" / "locks" / "stack_st"
    lock.mkdir(parents=True)
    (lock / "holder").write_text("zdd deploy R1\n")
    manager.service("server", UPDATING, UPDATING, UPDATING, UPDATING, verdict)
    manager.service("property", OLD, UPDATING, UPDATING, UPDATING, DONE)
    before = [task("o1", 1, "Running", "Running 1 hour ago", "property")]
    after = [task("o1", 1, "Shutdown", "Shutdown 1 second ago", "property")]
    manager.tasks("property", before, [*after, task("n1", 1, "Running", "Running 1 second ago", "property")])
    rc, out, _ = manager.tier("update", "property", watch=("server",), replaced=True, job_run="R1", key="stack_st")
    return rc, out, lock, manager.home / ".zdd" / "journal" / "stack_st.jsonl"


def settled_events(journal: Path, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = journal.read_text().splitlines() if journal.exists() else []
        events = [json.loads(ln) for ln in lines if '"settled"' in ln]
        if events:
            return events
        time.sleep(0.2)
    return []


def test_the_last_tier_hands_swarms_monitor_window_to_a_job_that_holds_the_lock_and_journals_the_verdict(manager):
    rc, out, lock, journal = monitor_job(manager, DONE)
    assert rc == 0, out
    assert out[:2] == ["started property", "done property replaced"]
    word, job, *names = out[2].split()
    assert word == "monitor" and names == ["property", "server"] and out[3].startswith("ok after ")
    events = settled_events(journal)
    assert [(e["run"], e["result"], e["services"]) for e in events] == [("R1", "completed", "property server")]
    # the job held the lock (the next deploy waits for it) and freed it at the end
    deadline = time.monotonic() + 10
    while lock.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not lock.exists()
    log = (manager.home / ".zdd" / "jobs" / "swarm-monitor-stack_st.log").read_text()
    assert f"monitor job {job} " in log and "done server completed" in log and "done property completed" in log
    # nothing was started by the job: one update for property (none for the watched server)
    assert [c.split()[-1] for c in manager.calls() if c.startswith("service update") and "--image" in c] == [
        "st_property"
    ]


def test_a_verdict_against_the_release_in_the_monitor_window_is_journaled_by_the_job(manager):
    rc, out, lock, journal = monitor_job(manager, f"rollback_completed|{NEW}|update rolled back due to failure")
    assert rc == 0 and out[2].startswith("monitor "), out
    events = settled_events(journal)
    assert [(e["result"], e["services"]) for e in events] == [("failed", "property server")]
    assert events[0]["error"].startswith("server: rollback_completed (update rolled back due to failure)")


def test_a_service_changed_again_in_the_monitor_window_is_not_waited_for(manager):
    """A change of settings only (Swarm then has no UpdateStatus) or another update after ours:
    no verdict is left to wait for, and the job ends at once instead of at its ceiling."""
    rc, out, lock, journal = monitor_job(manager, "none||")
    assert rc == 0 and out[2].startswith("monitor "), out
    events = settled_events(journal, timeout=15)
    assert [(e["result"], e["superseded"]) for e in events] == [("completed", "server")]
    log = (manager.home / ".zdd" / "jobs" / "swarm-monitor-stack_st.log").read_text()
    assert "done server superseded" in log and "done property completed" in log


def test_the_monitor_job_pid_is_in_the_lock_while_it_waits(manager):
    rc, out, lock, journal = monitor_job(manager, UPDATING)  # Swarm never says: the job waits to its ceiling
    assert rc == 0, out
    job = out[2].split()[1]
    assert (lock / "pid").read_text().strip() == job
    assert (lock / "holder").read_text().startswith(f"swarm monitor job {job} on ")
    assert "(run R1)" in (lock / "holder").read_text()
    # the next deploy waits for it as long as it may run: its ceiling (the tier's, 20 s), and 30 s
    assert 30 <= int((lock / "until").read_text()) - time.time() <= 51
    os.kill(int(job), 9)


def test_an_earlier_tier_swarm_rolls_back_fails_the_tier_that_watches_it(manager):
    manager.service(
        "server", UPDATING, UPDATING, f"rollback_started|{NEW}|update rolled back due to failure or early termination"
    )
    manager.service("property", OLD, UPDATING)
    manager.tasks("property", [task("o1", 1, "Running", "Running 1 hour ago", "property")])
    rc, out, took = manager.tier("update", "property", watch=("server",), replaced=True)
    assert rc == 1
    assert out[0] == "started property"
    assert out[-1] == "failed server: rollback_started (update rolled back due to failure or early termination)"
    assert out[-2].startswith("detail server ")
    assert took < 5


def test_an_earlier_tier_already_rolled_back_starts_nothing(manager):
    manager.service("server", f"rollback_started|{NEW}|update rolled back due to failure")
    manager.service("property", OLD)
    manager.tasks("property", [task("o1", 1, "Running", "Running 1 hour ago", "property")])
    rc, out, took = manager.tier("update", "property", watch=("server",), replaced=True)
    assert rc == 1 and out[-1] == "failed server: rollback_started (update rolled back due to failure)"
    assert not any(c.startswith("service update") for c in manager.calls())
    assert not any(ln.startswith("started") for ln in out)


def test_an_overlapping_tier_logs_in_too(manager):
    """-w, -r and --login together, in the order the header gives: the update uses the
    temporary config; the watched service is not changed."""
    manager.service("server", UPDATING)
    manager.service("property", OLD, UPDATING)
    after = [task("o1", 1, "Shutdown", "Shutdown 1 second ago", "property")]
    new = task("n1", 1, "Running", "Running 1 second ago", "property")
    manager.tasks("property", [task("o1", 1, "Running", "Running 1 hour ago", "property")], [*after, new])
    change = SwarmChange("property", "r/property:1@sha256:new")
    cmd = swarm_cmds.swarm_tier(
        manager.config, "update", [change], 20, watch=("server",), replaced=True, login=("reg.test", "bot")
    )
    assert cmd.argv[-6:] == ("-w", "server", "-r", "--login", "reg.test", "bot")
    res = manager.run(cmd, stdin=swarm_cmds.login_line("t0ken") + "\n", timeout=60)
    assert res.returncode == 0, res.stdout
    assert [ln for ln in res.stdout.splitlines() if ln.startswith(("started", "done"))] == [
        "started property",
        "done property replaced",
    ]
    config, token = (manager.stub / "login").read_text().splitlines()
    assert token == "t0ken" and (manager.stub / "configs").read_text() == f"{config} with login\n"
    assert [c.split()[-1] for c in manager.calls() if c.startswith("service update")] == ["st_property"]


def test_at_the_ceiling_the_tasks_of_what_the_tier_waits_for_are_shown(manager):
    """With -r a watched service (Swarm monitors it) is not waited for: only the own service's
    tasks are shown; the last tier (no -r) waits for it, so its tasks are shown."""
    manager.service("server", UPDATING)
    manager.service("property", OLD, UPDATING)
    manager.tasks("property", [task("o1", 1, "Running", "Running 1 hour ago", "property")])
    for name in ("server", "property"):
        manager.set(f"ps-{STACK}_{name}", f"st_{name}.1 on n2: r/{name}:1@sha256:new Running 9 seconds ago \n")
    rc, out, took = manager.tier("update", "property", watch=("server",), replaced=True, ceiling=1)
    assert rc == 1 and took < 10
    assert out[-2:] == [
        "detail property st_property.1 on n2: r/property:1@sha256:new Running 9 seconds ago ",
        "failed timeout after 1s: property: updating, server: monitored (Swarm goes on with it)",
    ]
    manager.set(f"n-{STACK}_property", "0")
    manager.service("property", OLD, UPDATING, DONE)
    manager.set(f"np-{STACK}_property", "0")  # its tasks once Swarm says completed: the new one only
    manager.tasks("property", [task("n1", 1, "Running", "Running 9 seconds ago", "property")])
    # (a ceiling the three reads to `completed` fit in on a loaded machine: the real clock runs)
    rc, out, took = manager.tier("update", "property", watch=("server",), ceiling=4)
    assert rc == 1 and "done property completed" in out
    assert out[-2:] == [
        "detail server st_server.1 on n2: r/server:1@sha256:new Running 9 seconds ago ",
        "failed timeout after 4s: server: monitored (Swarm goes on with it)",
    ]


def test_stack_services_with_no_task_to_replace_are_done_without_the_grace(manager):
    """After `docker stack deploy` a service whose task template is as it was (no task of it is
    out of date) is done once all its tasks run; so is one it created."""
    manager.service("server", OLD, "none||")
    manager.service("redis", "none||")
    manager.set(f"spec-{STACK}_server", "same")
    manager.set(f"spec-{STACK}_redis", "new")
    manager.set("replicas", f"{STACK}_server 2/2\n{STACK}_redis 0/1\n")
    proc = manager.start(
        swarm_cmds.swarm_tier(manager.config, "stack", [SwarmChange("server"), SwarmChange("redis")], 30, "{}")
    )
    t0 = time.monotonic()
    time.sleep(1.0)
    manager.set("replicas", f"{STACK}_server 2/2\n{STACK}_redis 1/1\n")
    out, _ = proc.communicate(timeout=20)
    lines = [ln for ln in out.splitlines() if not ln.startswith(("progress ", "note "))]
    assert proc.returncode == 0, out
    assert lines[:3] == ["started st", "done server running 2/2", "done redis running 1/1"]
    assert time.monotonic() - t0 < 4  # the grace is 5 s
    assert any("PreviousSpec" in c and c.endswith("st_server st_redis") for c in manager.calls())


# --- nodes: one down, one drained ---------------------------------------------------------------

NEW2 = "2026-11-27 10:05:00 +0000 UTC"


def changes(*names: str) -> list[SwarmChange]:
    return [SwarmChange(n, f"r/{n}:1@sha256:new", f"r/{n}:1") for n in names]


def ticks(stdout: str) -> list[int]:
    """The seconds each progress line says (the test's clock: 5 s a poll)."""
    return [int(ln.split(", ")[-1].split()[0]) for ln in stdout.splitlines() if ln.startswith("progress ")]


def test_a_node_down_holding_a_task_an_update_waits_for_fails_at_once(manager):
    """Swarm waits for a node that is down until it is back: once it has been down for 10 s
    while it holds a task of a service waited for (not in a final state), the run fails, naming
    the node and the task, long before the ceiling."""
    manager.set("clock", "1000000 5\n")
    manager.set("nodes-ls", "n1|Ready\nn2|Down\nn3|Ready\n")
    manager.service("server", OLD, UPDATING)
    manager.service("property", OLD, UPDATING)
    manager.set(f"held-{STACK}_property", "st_property.1|n1|Running 1 hour ago\n")
    manager.set(
        f"held-{STACK}_server",
        "st_server.1|n1|Running 2 seconds ago\n"
        "st_server.1|n1|Shutdown 1 second ago\n"
        "st_server.2|n2|Running 2 hours ago\n"
        "st_server.3|n2|Shutdown 3 hours ago\n"
        "st_server.3|n3|Running 3 hours ago\n",
    )
    res = manager.run(swarm_cmds.swarm_tier(manager.config, "update", changes("property", "server"), 120), timeout=60)
    lines = res.stdout.splitlines()
    assert res.returncode == 1, res.stdout
    assert lines[-1] == (
        "failed server: node n2 is down, holding st_server.2 (Running 2 hours ago); Swarm finishes the update once "
        "the node is back or its tasks move: deploy again then"
    )
    assert lines[-2].startswith("detail server st_server.1 on n1: ")
    # seen down at the first poll (10 s in), failed 10 s later: the grace, not the ceiling
    assert ticks(res.stdout) == [10, 15]
    assert not any("timeout" in ln for ln in lines)  # the ceiling: 120 s
    assert "node ls --format {{.Hostname}}|{{.Status}}" in manager.calls()
    # one read of both services' tasks in the poll past the grace, not one per service
    held = [c for c in manager.calls() if c.startswith("service ps --no-trunc --format {{.Name}}|{{.Node}}|")]
    assert [c.split()[-2:] for c in held] == [["st_property", "st_server"]]


@pytest.mark.parametrize("order", [("server",), ("server", "property"), ("property", "server")])
def test_a_node_down_names_the_service_whose_task_it_holds_in_any_order(manager, order):
    """The service that holds a task on the node down is named, alone in its tier, first or last
    of it (the read of the tasks runs inside the loop over the services and must not disturb it)."""
    manager.set("clock", "1000000 5\n")
    manager.set("nodes-ls", "n1|Ready\nn2|Down\n")
    for name in order:
        manager.service(name, OLD, UPDATING)
    manager.set(f"held-{STACK}_property", "st_property.1|n1|Running 1 hour ago\n")
    manager.set(f"held-{STACK}_server", "st_server.1|n1|Running 2 seconds ago\nst_server.2|n2|Running 2 hours ago\n")
    res = manager.run(swarm_cmds.swarm_tier(manager.config, "update", changes(*order), 120), timeout=60)
    assert res.returncode == 1, res.stdout
    assert res.stdout.splitlines()[-1].startswith(
        "failed server: node n2 is down, holding st_server.2 (Running 2 hours ago);"
    ), res.stdout
    assert ticks(res.stdout) == [10, 15]  # the grace, not the ceiling
    # every progress line names each service it shows ("progress : updating" had lost its name)
    assert not [ln for ln in res.stdout.splitlines() if ln.startswith("progress") and " : " in ln], res.stdout


def test_a_node_down_that_holds_no_task_waited_for_does_not_fail_the_run(manager):
    """Only tasks of the services the run waits for count, and only those Swarm still has to
    finish with: a task on the node that was shut down, failed or rejected before is history."""
    manager.set("clock", "1000000 5\n")
    manager.set("nodes-ls", "n1|Ready\nn2|Down\n")
    manager.service("server", OLD, *[UPDATING] * 5, DONE)
    manager.set(
        f"held-{STACK}_server",
        "st_server.1|n1|Running 2 seconds ago\n"
        "st_server.1|n2|Shutdown 1 minute ago\n"
        "st_server.2|n2|Failed 2 minutes ago\n"
        "st_server.2|n2|Rejected 3 minutes ago\n"
        "st_server.2|n1|Running 1 second ago\n",
    )
    res = manager.run(swarm_cmds.swarm_tier(manager.config, "update", changes("server"), 600), timeout=60)
    assert res.returncode == 0, res.stdout
    assert "done server completed" in res.stdout.splitlines()
    assert max(ticks(res.stdout)) >= 25  # the node was down for longer than the grace
    held = "service ps --no-trunc --format {{.Name}}|{{.Node}}|{{.CurrentState}} st_server"
    assert held in manager.calls()  # looked at, found nothing Swarm waits for


def test_a_tier_that_ends_well_while_a_node_is_down_names_the_node_and_what_it_still_lists(manager):
    """Swarm may finish an update while a node is down (it starts the node's tasks elsewhere):
    the run succeeds, with a note naming the node and the run's tasks Swarm still lists there."""
    manager.set("clock", "1000000 5\n")
    manager.set("nodes-ls", "n1|Ready\nn2|Down\n")
    manager.service("server", OLD, UPDATING, DONE)
    manager.set(f"held-{STACK}_server", "st_server.1|n1|Running 2 seconds ago\nst_server.2|n2|Running 2 hours ago\n")
    res = manager.run(swarm_cmds.swarm_tier(manager.config, "update", changes("server"), 120), timeout=60)
    assert res.returncode == 0, res.stdout
    notes = [ln for ln in res.stdout.splitlines() if ln.startswith("note node ")]
    assert notes == [
        "note node n2 is down (for 5s): Swarm runs this tier's tasks on the other nodes; it still lists "
        "st_server.2 (Running 2 hours ago) there until the node is back"
    ], res.stdout


def test_no_node_note_when_every_node_is_ready(manager):
    manager.set("clock", "1000000 5\n")
    manager.service("server", OLD, UPDATING, DONE)
    res = manager.run(swarm_cmds.swarm_tier(manager.config, "update", changes("server"), 120), timeout=60)
    assert res.returncode == 0, res.stdout
    assert not [ln for ln in res.stdout.splitlines() if ln.startswith("note ")], res.stdout


def test_with_r_a_node_down_holding_only_a_watched_services_task_does_not_fail(manager):
    """-r: the run waits for its own services only; a watched one's task on a node down is no
    reason to fail it (the last tier, which waits for it, would)."""
    manager.set("clock", "1000000 5\n")
    manager.set("nodes-ls", "n1|Ready\nn2|Unknown\n")
    manager.service("server", UPDATING)
    manager.set(f"held-{STACK}_server", "st_server.1|n2|Running 1 hour ago\n")
    manager.service("property", OLD, *[UPDATING] * 6)
    before = [task("o1", 1, "Running", "Running 1 hour ago", "property")]
    after = [task("o1", 1, "Shutdown", "Shutdown 1 second ago", "property")]
    new = task("n1", 1, "Running", "Running 1 second ago", "property")
    manager.tasks("property", *[before] * 5, [*after, new])
    res = manager.run(
        swarm_cmds.swarm_tier(manager.config, "update", changes("property"), 600, watch=("server",), replaced=True),
        timeout=60,
    )
    assert res.returncode == 0, res.stdout
    assert "done property replaced" in res.stdout.splitlines()
    assert not any(c.endswith("{{.CurrentState}} st_server") for c in manager.calls())


TASK = "ktl8mbzgcuv2xqq9cdrt5lj2a"
EARLY = f"update rolled back due to failure or early termination of task {TASK}"


def task_on_node(manager: Manager, node: str, availability_and_state: str) -> None:
    """The task Swarm's rollback message names (TASK) ran on NODE, whose
    ``{{.Spec.Availability}}|{{.Status.State}}`` is AVAILABILITY_AND_STATE."""
    manager.set(f"task-{TASK}", f"{node}\n")
    manager.set(f"node-{node}", f"{availability_and_state}\n")


def image_updates(manager: Manager) -> list[str]:
    return [c for c in manager.calls() if c.startswith("service update") and "--image" in c]


@pytest.mark.parametrize("node", ["drain|ready", "active|down", "pause|down"])
def test_an_update_rolled_back_over_a_drain_starts_again_once_the_rollback_is_done(manager, node):
    """Swarm rolls an update back when a drain ends a task of it early: that is no verdict on
    the image. Once Swarm's rollback has completed the update starts again, once, and the run
    waits for that one."""
    manager.service(
        "property",
        OLD,
        UPDATING,
        f"rollback_started|{NEW}|{EARLY}",
        f"rollback_completed|{NEW}|rollback completed",
        f"rollback_completed|{NEW}|rollback completed",  # the new update not seen yet: not a verdict
        f"updating|{NEW2}|update in progress",
        f"completed|{NEW2}|update completed",
    )
    task_on_node(manager, "nodeid2", node)
    manager.set("clock", "1000000 1\n")  # a second a poll: each poll's progress is shown
    res = manager.run(swarm_cmds.swarm_tier(manager.config, "update", changes("property"), 600), timeout=60)
    lines = [ln for ln in res.stdout.splitlines() if not ln.startswith("progress ")]
    assert res.returncode == 0, res.stdout
    assert lines[:4] == [
        "started property",
        "note property: Swarm rolls the update back, a task of it ended by a drain; it starts again after",
        "started property",
        "done property completed",
    ]
    assert lines[4].startswith("ok after ") and len(lines) == 5
    assert "progress property: rolled back (drain), starting again after, " in res.stdout
    calls = manager.calls()
    assert f"inspect --type task --format {{{{.NodeID}}}} {TASK}" in calls
    assert "node inspect --format {{.Spec.Availability}}|{{.Status.State}} nodeid2" in calls
    updates = image_updates(manager)
    assert len(updates) == 2 and updates[0] == updates[1]  # the same update, again
    # started again only after Swarm said rollback_completed (the 4th UpdateStatus read)
    again = [i for i, c in enumerate(calls) if c == updates[0]][1]
    assert sum(c.startswith("service inspect --format {{.Spec.Name}}") for c in calls[:again]) == 4


def test_with_r_the_update_started_again_replaces_the_tasks_the_rollback_left(manager):
    """-r: the tasks to replace are, once the update starts again, those Swarm's rollback left
    running: one of them still running is not a new task of the update."""
    manager.service(
        "property",
        OLD,
        UPDATING,
        f"rollback_started|{NEW}|{EARLY}",
        f"rollback_completed|{NEW}|rollback completed",
        f"rollback_completed|{NEW}|rollback completed",
        f"updating|{NEW2}|update in progress",
    )
    task_on_node(manager, "nodeid2", "drain|ready")
    o1 = task("o1", 1, "Running", "Running 1 hour ago", "property")
    n1 = task("n1", 1, "Shutdown", "Shutdown 1 second ago", "property")
    gone = [task("o1", 1, "Shutdown", "Shutdown 1 second ago", "property"), n1]
    r1 = task("r1", 1, "Running", "Running 1 second ago", "property")  # the rollback's
    manager.tasks(
        "property",
        [o1],  # before the update
        [o1, task("n1", 1, "Running", "Starting 1 second ago", "property")],
        [o1, n1],  # rollback_started
        [o1, n1],  # rollback_completed: started again, then what the rollback left is read
        [*gone, r1],
        [*gone, r1],
        [*gone, r1],  # updating, nothing new yet: not replaced
        [
            *gone,
            task("r1", 1, "Shutdown", "Shutdown 1 second ago", "property"),
            task("n2", 1, "Running", "Running 1 second ago", "property"),
        ],
    )
    rc, out, took = manager.tier("update", "property", replaced=True)
    assert rc == 0, out
    assert [ln for ln in out if ln.startswith(("started", "done"))] == [
        "started property",
        "started property",
        "done property replaced",
    ]
    assert (manager.stub / f"np-{STACK}_property").read_text().strip() == "8"  # done at the last frame


def test_an_update_rolled_back_over_a_task_on_a_node_active_and_ready_fails(manager):
    manager.service("property", OLD, UPDATING, f"rollback_started|{NEW}|{EARLY}")
    task_on_node(manager, "nodeid1", "active|ready")
    rc, out, took = manager.tier("update", "property")
    assert rc == 1 and out[-1] == f"failed property: rollback_started ({EARLY})"
    assert not any(ln.startswith("note ") for ln in out)
    assert len(image_updates(manager)) == 1  # failed at once: at the ceiling it would say timeout


def test_an_update_rolled_back_over_a_task_that_is_gone_fails(manager):
    """The task Swarm names is not found (no file): nothing says a drain ended it."""
    manager.service("property", OLD, UPDATING, f"rollback_completed|{NEW}|{EARLY}")
    rc, out, took = manager.tier("update", "property")
    assert rc == 1 and out[-1] == f"failed property: rollback_completed ({EARLY})"
    assert len(image_updates(manager)) == 1


def test_a_task_of_the_old_image_swarm_leaves_running_after_completed_gets_the_update_made_once_more(manager):
    """moby/swarmkit#2242: a task restarted during a start-first update (a drain, a node down) is
    one the updater no longer stops, and Swarm says completed with it still running beside the
    new ones. The update is made once more (it replaces every task of each slot), and the run
    waits for that one."""
    manager.service(
        "property",
        OLD,
        UPDATING,
        f"completed|{NEW}|update completed",
        f"updating|{NEW2}|update in progress",
        f"completed|{NEW2}|update completed",
    )
    stray = task("o1", 1, "Running", "Running 3 minutes ago", "property")
    new = [
        task("n1", 1, "Running", "Running 1 second ago", "property"),
        task("n2", 2, "Running", "Running 1 second ago", "property"),
    ]
    manager.tasks("property", [stray, *new], new)
    rc, out, took = manager.tier("update", "property")
    assert rc == 0, out
    assert [ln for ln in out if not ln.startswith("ok after ")] == [
        "started property",
        f"note property: Swarm completed its update but still runs {STACK}_property.1 (Running 3 minutes ago) beside "
        "the new tasks: updating it once more",
        "started property",
        "done property completed",
    ]
    updates = image_updates(manager)
    assert len(updates) == 2 and updates[0] == updates[1]


def test_the_update_made_once_more_of_the_same_image_keeps_the_image_before_for_a_rollback(manager):
    """Its spec is then Swarm's PreviousSpec: the image before goes into zdd.forced-from."""
    manager.service(
        "property", OLD, UPDATING, f"completed|{NEW}|update completed", f"completed|{NEW2}|update completed"
    )
    manager.set(f"image-{STACK}_property", "r/property:1@sha256:new|r/property:0@sha256:before\n")
    stray = task("o1", 1, "Running", "Running 3 minutes ago", "property")
    manager.tasks("property", [stray, task("n1", 1, "Running", "Running 1 second ago", "property")], [])
    rc, out, took = manager.tier("update", "property")
    assert rc == 0, out
    first, again = image_updates(manager)
    assert "zdd.forced-from" not in first
    assert "--label-add zdd.forced-from=r/property:0@sha256:before" in again


def test_a_task_of_the_old_image_left_after_the_update_made_once_more_fails_the_run_naming_it(manager):
    manager.service(
        "property", OLD, UPDATING, f"completed|{NEW}|update completed", f"completed|{NEW2}|update completed"
    )
    stray = task("o1", 1, "Running", "Running 3 minutes ago", "property")
    manager.tasks("property", [stray, task("n1", 1, "Running", "Running 1 second ago", "property")])
    rc, out, took = manager.tier("update", "property")
    assert rc == 1, out
    assert out[-1] == (
        f"failed property: Swarm completed its update but still runs {STACK}_property.1 (Running 3 minutes ago) "
        f"beside the new tasks: `docker service update --force {STACK}_property` replaces them"
    )
    assert len(image_updates(manager)) == 2


def test_a_slot_swarm_leaves_running_two_tasks_of_the_new_image_gets_the_update_made_once_more(manager):
    """moby/swarmkit#2242 with the new image: a task restarted by a drain during a start-first
    update runs on beside its slot's new one after `completed` (Swarm's reconciler counts slots,
    not tasks). Once Swarm is done, such a service is updated once more (`--force`: every task of
    each slot replaced, start-first), and the run waits for that update."""
    again = "2026-11-27 10:07:00 +0000 UTC"
    manager.service("server", OLD, UPDATING, DONE, DONE, f"updating|{again}|update in progress", f"completed|{again}|x")
    doubled = [
        task("n1", 1, "Running", "Running 1 second ago"),
        task("n1b", 1, "Running", "Running 40 seconds ago"),
        task("n2", 2, "Running", "Running 1 second ago"),
        task("o2", 2, "Shutdown", "Shutdown 1 second ago"),
    ]
    manager.tasks("server", doubled, doubled, [task("n3", 1, "Running", "Running 1 second ago"), doubled[2]])
    rc, out, took = manager.tier("update", "server")
    assert rc == 0, out
    assert [ln for ln in out if not ln.startswith(("ok after ", "progress"))] == [
        "started server",
        "done server completed",
        f"note server: Swarm completed, yet runs {STACK}_server.1 (Running 40 seconds ago) beside the task of "
        "its slot: updating it once more",
    ]
    forced = [c for c in manager.calls() if c.startswith("service update")][-1]
    # no image, no login (Swarm's own); the image before the deploy kept for a rollback (the stub's
    # PreviousSpec image: r/SERVICE:2@sha256:cur)
    assert forced == (
        "service update --detach --quiet --force "
        f"--label-add zdd.forced-from=r/{STACK}_server:2@sha256:cur {STACK}_server"
    )


AGAIN = "2026-11-27 10:07:00 +0000 UTC"  # the update made once more


def update_once_more(manager: Manager, verdict: str) -> tuple[int, list[str], float]:
    """server's update completes with slot 1 running two tasks, each time the tasks are read;
    the update made once more ends in ``verdict``."""
    manager.service("server", OLD, UPDATING, DONE, DONE, f"{verdict}|{AGAIN}|x")
    manager.tasks(
        "server",
        [task("n1", 1, "Running", "Running 1 second ago"), task("n1b", 1, "Running", "Running 40 seconds ago")],
    )
    return manager.tier("update", "server")


def test_a_slot_still_running_two_tasks_after_the_update_made_once_more_fails_the_run_naming_it(manager):
    rc, out, took = update_once_more(manager, "completed")
    assert rc == 1, out
    assert out[-1] == (
        f"failed server: Swarm still runs {STACK}_server.1 (Running 40 seconds ago) beside the task of its slot: "
        f"`docker service update --force {STACK}_server` replaces it"
    )
    assert len([c for c in manager.calls() if c.startswith("service update") and "--force" in c]) == 2


def test_an_update_made_once_more_that_swarm_rolls_back_fails_the_run(manager):
    rc, out, took = update_once_more(manager, "rollback_completed")
    assert rc == 1 and out[-1] == "failed server: rollback_completed (the update made once more)", out


def test_tasks_of_different_slots_are_no_doubled_slot(manager):
    manager.service("server", OLD, UPDATING, DONE)
    manager.tasks("server", [task("n1", 1, "Running", "Running 1 second ago"), task("n2", 2, "Running", "Running 1 s")])
    rc, out, took = manager.tier("update", "server")
    assert rc == 0 and not any(ln.startswith("note") for ln in out), out
    assert not [c for c in manager.calls() if "zdd.forced-from" in c]


def test_tasks_of_the_old_image_no_longer_desired_running_are_no_stray(manager):
    manager.service("property", OLD, UPDATING, f"completed|{NEW}|update completed")
    gone = task("o1", 1, "Shutdown", "Running 3 minutes ago", "property")  # being stopped: out of DNS
    manager.tasks("property", [gone, task("n1", 1, "Running", "Running 1 second ago", "property")])
    rc, out, took = manager.tier("update", "property")
    assert rc == 0 and "done property completed" in out, out
    assert len(image_updates(manager)) == 1


def test_a_second_rollback_over_a_drain_fails(manager):
    """The update starts again once: rolled back over a drain again, the run fails."""
    manager.service(
        "property",
        OLD,
        UPDATING,
        f"rollback_started|{NEW}|{EARLY}",
        f"rollback_completed|{NEW}|rollback completed",
        f"updating|{NEW2}|update in progress",
        f"rollback_started|{NEW2}|{EARLY}",
        f"rollback_completed|{NEW2}|rollback completed",
    )
    task_on_node(manager, "nodeid2", "drain|ready")
    rc, out, took = manager.tier("update", "property")
    assert rc == 1
    assert out[-1] == f"failed property: rollback_started ({EARLY})"
    assert [ln for ln in out if ln.startswith(("started", "note"))] == [
        "started property",
        "note property: Swarm rolls the update back, a task of it ended by a drain; it starts again after",
        "started property",
    ]
    assert len(image_updates(manager)) == 2


def test_a_watched_service_rolled_back_over_a_drain_is_not_started_again(manager):
    """Only the run's own updates start again: a -w service's rollback fails the run as before."""
    manager.service("server", UPDATING, f"rollback_started|{NEW}|{EARLY}")
    manager.service("property", OLD, UPDATING)
    manager.tasks("property", [task("o1", 1, "Running", "Running 1 hour ago", "property")])
    task_on_node(manager, "nodeid2", "drain|ready")
    rc, out, took = manager.tier("update", "property", watch=("server",), replaced=True)
    assert rc == 1 and out[-1] == f"failed server: rollback_started ({EARLY})"
    assert [c.split()[-1] for c in image_updates(manager)] == ["st_property"]


# --- move (drain-node): off a node start-first, then the node drained ------------------------------

PLACEMENT = (
    f"{STACK}_server node.id!=n2 node.role==manager\n"
    f"{STACK}_property node.id!=n2\n"
    f"{STACK}_redis node.id!=n2\n"  # left by a move that was interrupted: unpinned too
    f"{STACK}_caddy node.role==manager node.id!=n2x\n"
)


def test_a_move_adds_the_constraint_waits_for_every_service_then_drains_and_unpins(manager):
    manager.service("server", OLD, f"updating|{NEW}|", f"completed|{NEW}|update completed")
    manager.service("property", "none||", f"updating|{NEW}|", f"updating|{NEW}|", f"completed|{NEW}|done")
    manager.set("placement", PLACEMENT)
    rc, out, _ = manager.tier("move", "server", "property", node="n2")
    assert rc == 0, out
    assert out[:2] == ["started server", "started property"]
    assert {"done server completed", "done property completed"} <= set(out)
    assert out[-5:-1] == ["drained n2", "unpinned server", "unpinned property", "unpinned redis"]
    calls = manager.calls()
    updates = [c for c in calls if c.startswith("service update")]
    assert updates[:2] == [
        f"service update --detach --quiet --constraint-add node.id!=n2 --update-order start-first {STACK}_server",
        f"service update --detach --quiet --constraint-add node.id!=n2 {STACK}_property",
    ]
    drain = calls.index("node update --availability drain n2")
    # drained only once Swarm said completed for each (the last status read comes before it)
    assert max(i for i, c in enumerate(calls) if c.startswith("service inspect --format {{.Spec.Name}}|")) < drain
    assert updates[2:] == [
        f"service update --detach --quiet --constraint-rm node.id!=n2 {STACK}_{n}"
        for n in ("server", "property", "redis")
    ]
    assert calls.index(updates[2]) > drain


@pytest.mark.parametrize("verdict", ["rollback_completed", "paused"])
def test_a_move_swarm_does_not_finish_drains_nothing(manager, verdict):
    manager.service("server", OLD, f"updating|{NEW}|", f"{verdict}|{NEW}|update rolled back due to failure")
    manager.set("placement", PLACEMENT)
    rc, out, _ = manager.tier("move", "server", node="n2")
    assert rc == 1 and out[-1].startswith(f"failed server: {verdict}"), out
    assert not [c for c in manager.calls() if c.startswith("node update") or "--constraint-rm" in c]


def test_a_move_with_nothing_to_move_only_drains_and_a_drain_that_fails_unpins_nothing(manager):
    manager.set("placement", PLACEMENT)
    rc, out, _ = manager.tier("move", node="n2")
    assert rc == 0 and out[0] == "drained n2" and out[-1].startswith("ok after"), out
    manager.set("drain-fails", "")
    manager.set("calls", "")
    rc, out, _ = manager.tier("move", node="n2")
    assert (
        rc == 1
        and out[-1]
        == "failed node n2: docker node update --availability drain: Error response from daemon: node not found"
    )
    assert not [c for c in manager.calls() if "--constraint-rm" in c]


def test_a_move_without_a_node_changes_nothing(manager):
    manager.service("server", OLD)
    rc, out, _ = manager.tier("move", "server")
    assert rc == 2 and out == ["failed move: no node (-n NODE)"]
    assert not [c for c in manager.calls() if c.startswith(("service update", "node update"))]


def test_a_move_that_swarm_has_nothing_to_replace_for_is_done_once_no_task_is_on_the_node(manager):
    # the constraint-add cleared UpdateStatus and Swarm starts no update: its task had left the node
    manager.service("server", OLD, "none||")
    manager.set("node-ps", f"{STACK}_server.1\n")  # still there at first (Swarm has not begun)
    manager.set("placement", "")
    rc, out, took = manager.tier("move", "server", node="n2", ceiling=4)
    assert rc == 1 and out[-1].startswith("failed timeout after 4s: server: pending"), out
    manager.set("node-ps", f"{STACK}_property.1\n{STACK}_server2.1\n")  # not server's (a longer name)
    rc, out, took = manager.tier("move", "server", node="n2", ceiling=20)
    assert rc == 0 and "done server completed" in out and "drained n2" in out, out
    assert took < 10


def test_a_doubled_slot_whose_second_task_is_still_starting_is_judged_once_it_runs(manager):
    """A drained node's task Swarm restarts in a slot after `completed` is still starting when
    the run first looks: the run waits for it to run, then sees the slot running two tasks."""
    again = "2026-11-27 10:07:00 +0000 UTC"
    manager.service("server", OLD, UPDATING, DONE, DONE, f"updating|{again}|update in progress", f"completed|{again}|x")
    one = task("n1", 1, "Running", "Running 1 second ago")
    slot2 = task("n2", 2, "Running", "Running 1 second ago")
    starting = [one, task("n1b", 1, "Running", "Starting 1 second ago"), slot2]
    doubled = [one, task("n1b", 1, "Running", "Running 2 seconds ago"), slot2]
    # the wait reads the tasks three times (a stray check a poll), then the sweep
    manager.tasks(
        "server",
        starting,
        starting,
        starting,
        starting,
        doubled,
        [task("n3", 1, "Running", "Running 1 second ago"), slot2],
    )
    rc, out, took = manager.tier("update", "server")
    assert rc == 0, out
    assert (
        f"note server: Swarm completed, yet runs {STACK}_server.1 (Running 2 seconds ago) beside the task of "
        "its slot: updating it once more"
    ) in out
    assert [c for c in manager.calls() if c.startswith("service update") and "--force" in c]
