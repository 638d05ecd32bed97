"""Real test hosts for integration tests: systemd-nspawn containers from tests/testbed."""

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # so a bare `pytest` finds tests.testbed, not only `python -m pytest`

import testinfra  # noqa: E402

from tests.testbed import Testbed, TestbedError, TestHost  # noqa: E402
from tests.testbed.ssh import SSH_OPTIONS  # noqa: E402


@pytest.fixture(scope="session")
def testbed():
    """The prepared testbed. At the end, the network goes only if no host is left running (a demo may be)."""
    tb = Testbed()
    try:
        tb.prepare()
    except TestbedError as error:
        pytest.fail(f"cannot prepare the test hosts: {error}", pytrace=False)
    yield tb
    # Under pytest-xdist a worker leaves the network to the controller (pytest_sessionfinish): the other worker may still use it.
    if "PYTEST_XDIST_WORKER" not in os.environ:
        teardown_unless_in_use(tb)


def teardown_unless_in_use(tb: Testbed) -> None:
    """Remove the network unless a host still runs (a demo) or MLFAB_KEEP_NETWORK=1 says other test runs share it."""
    if tb.network_prepared() and not tb.running_hosts() and not os.environ.get("MLFAB_KEEP_NETWORK"):
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


@pytest.fixture(scope="session")
def infra():
    """infra(test_host, user="root") -> a testinfra Host for checks like host.service("ssh").is_running."""

    def connect(test_host: TestHost, user: str = "root"):
        return testinfra.get_host(
            f"ssh://{user}@{test_host.address}:{test_host.port}",
            ssh_identity_file=str(test_host.identity),
            ssh_extra_args=" ".join(SSH_OPTIONS),
            controlpersist=0,  # no master connection outliving a host that gets restarted
        )

    return connect


@pytest.fixture(scope="module")
def module_hosts(testbed):
    """module_hosts(*names, prebaked={name: roles}) -> fresh hosts booted in parallel, stopped when the test module ends.

    A host named in `prebaked` has those roles' Debian packages installed already (tests/testbed/prebaked.py): for
    modules whose tests are not about installing. The others are bare Debian servers.
    """
    started: list[TestHost] = []

    def start(*names: str, prebaked: dict[str, tuple[str, ...]] | None = None) -> list[TestHost]:
        roles = prebaked or {}
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            booting = [pool.submit(testbed.start, name, prebaked=roles.get(name, ())) for name in names]
        # the hosts that did start are stopped with the module even when another one failed to
        started.extend(boot.result() for boot in booting if boot.exception() is None)
        return [boot.result() for boot in booting]

    yield start
    with ThreadPoolExecutor(max_workers=max(1, len(started))) as pool:  # a clean shutdown may take seconds per host
        list(pool.map(TestHost.stop, started))
