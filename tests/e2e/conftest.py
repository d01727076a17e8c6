"""End-to-end tests: real Docker engine, registry, sshd and Caddy (scripts/sandbox.sh up).

They fail, not skip, when the sandbox is missing: scripts/test.sh sets it up first.
"""

import pytest

from tests import sandbox as sb


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def sandbox():
    reason = sb.not_ready_reason()
    if reason:
        pytest.fail(f"the sandbox is not up ({reason}): run scripts/sandbox.sh up as root (scripts/test.sh does)")
    return sb


@pytest.fixture
def settled(sandbox):
    """One healthy container per app before (and after) a test that disturbs the stack."""
    sb.stack_settle()
    yield sb
    sb.stack_settle()
