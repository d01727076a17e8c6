"""End-to-end tests: real Docker engine, registry, sshd and Caddy (scripts/sandbox.sh up).

They run when ZDD_E2E=1 (scripts/test.sh sets it, after setting the sandbox up) and then
fail, not skip, when the sandbox is missing. A plain `pytest` runs only the unit tests.
"""

import fcntl
import os
import time

import pytest

from tests import sandbox as sb


def pytest_collection_modifyitems(items):
    enabled = os.environ.get("ZDD_E2E") == "1"
    skip = pytest.mark.skip(reason="end-to-end: set ZDD_E2E=1 (scripts/test.sh does) to run on the sandbox")
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
            if not enabled:
                item.add_marker(skip)
    # The teardown test takes the sandbox down and up again: run it after everything else. The
    # Swarm tests run just before it: the swarm stack (its own Docker engine, whose healthchecks
    # load the machine) is started for them, so the other tests run as without it.
    items.sort(
        key=lambda item: (item.get_closest_marker("teardown") is not None, item.get_closest_marker("swarm") is not None)
    )


@pytest.fixture(scope="session")
def sandbox():
    reason = sb.not_ready_reason()
    if reason:
        pytest.fail(f"the sandbox is not up ({reason}): run scripts/sandbox.sh up as root (scripts/test.sh does)")
    # One e2e run at a time on a sandbox: a second one waits (they would disturb each other).
    with open(sb.STATE / ".e2e.lock", "w") as lock:
        deadline = time.monotonic() + 1800
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail("another e2e run holds the sandbox lock")
                time.sleep(1)
        yield sb


@pytest.fixture(scope="session")
def swarm_sandbox(sandbox):
    """The sandbox's swarm stack, on its own Docker engine: started (scripts/sandbox.sh swarm-up)
    unless it answers already; left up (`down`, in the teardown test, removes it)."""
    try:
        sb.swarm_serves(timeout=3)
    except AssertionError:
        res = sb.run([str(sb.ROOT / "scripts" / "sandbox.sh"), "swarm-up", "--nodes", "2"], timeout=600)
        if res.returncode != 0:
            pytest.fail(f"scripts/sandbox.sh swarm-up failed:\n{res.stderr}")
        sb.swarm_serves()
    return sb


@pytest.fixture
def settled(sandbox):
    """One healthy container per app before (and after) a test that disturbs the stack."""
    sb.stack_settle()
    yield sb
    sb.stack_settle()


@pytest.fixture(autouse=True)
def no_leftover_probe():
    """Whatever a test did, no verify loop of its outlives it."""
    yield
    sb.kill_leftover_probes()
