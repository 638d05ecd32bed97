"""Run with pytest-xdist (`-n 2`), the testbed's network is removed by the controller once every worker is done."""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def pytest_sessionfinish(session):
    if hasattr(session.config, "workerinput") or not getattr(session.config.option, "numprocesses", None):
        return
    from tests.testbed import Testbed, TestbedError
    from tests.integration.conftest import teardown_unless_in_use

    try:
        teardown_unless_in_use(Testbed())
    except TestbedError:
        pass


_module_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report):
    """Setup, call and teardown of every test, module fixtures included, summed per test module."""
    module = report.nodeid.split("::")[0]
    _module_seconds[module] = _module_seconds.get(module, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if hasattr(terminalreporter.config, "workerinput") or not _module_seconds:
        return
    terminalreporter.section("time per test module")
    for module, seconds in sorted(_module_seconds.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"{seconds / 60:6.1f} min  {module}")
