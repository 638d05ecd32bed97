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


# Minutes per module in the full run of 2026-11-30 on 2 cores. xdist (make test: --no-loadscope-reorder) hands modules to
# its workers in collection order: the longest go first, so none is left to run alone at the end. Unlisted: short.
MODULE_MINUTES = {
    "test_replicas.py": 8.5, "test_rolling.py": 5.3, "test_migrate.py": 1.7, "test_deploy_faults.py": 4.2, "test_monitoring.py": 6.9,
    "test_concurrent_deploys.py": 3.0, "test_model_endpoints.py": 1.3, "test_restore_faults.py": 2.4, "test_versions.py": 2.8,
    "test_wheelhouse.py": 5.0, "test_deploy_model.py": 2.8, "test_no_reads.py": 2.2, "test_backups.py": 3.5, "test_run_project.py": 2.4,
    "test_upgrade.py": 1.3, "test_setup_tracking.py": 1.9, "test_front_door.py": 1.9, "test_password_flood.py": 1.4,
}


def pytest_collection_modifyitems(items):
    def minutes(item) -> float:
        return MODULE_MINUTES.get(item.path.name, 0.0) if item.path.parent.name == "integration" else 0.0

    items.sort(key=lambda item: -minutes(item))  # stable: tests keep their order within a module


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
