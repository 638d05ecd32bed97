"""Real test hosts for integration tests: systemd-nspawn containers from tests/testbed."""

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # so a bare `pytest` finds tests.testbed, not only `python -m pytest`

from tests.testbed import Testbed, TestbedError, TestHost  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: needs real test hosts (root, systemd-nspawn)")


@pytest.fixture(scope="session")
def testbed():
    """The prepared testbed. At the end, the network goes only if no host is left running (a demo may be)."""
    tb = Testbed()
    try:
        tb.prepare()
    except TestbedError as error:
        pytest.fail(f"cannot prepare the test hosts: {error}", pytrace=False)
    yield tb
    if not tb.running_hosts():
        tb.teardown()


@pytest.fixture(scope="session")
def start_host(testbed):
    """start_host(name) -> a freshly booted TestHost; every host started this way is stopped at session end."""
    started: dict[str, TestHost] = {}

    def start(name: str, fresh: bool = True) -> TestHost:
        started[name] = testbed.start(name, fresh=fresh)
        return started[name]

    yield start
    for host in started.values():
        host.stop()
