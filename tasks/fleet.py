"""Run one host's work per thread, each with a deadline; one hung or failing host never stops the others."""

from __future__ import annotations

import os
import threading
import time
from typing import Callable

from fabric import Config
from invoke.exceptions import Exit

from tasks.inventory import Host
from tasks.ops.remote import HostError, Remote
from tasks.report import HostReport, show_error, show_recap

HOST_TIMEOUT = 3600


def _work_on(host: Host, config: Config, report: HostReport, work: Callable[[Remote, HostReport], None]) -> None:
    remote = Remote(host, config)
    try:
        work(remote, report)
    except HostError as error:
        report.error, report.unreachable = str(error), error.unreachable
        show_error(report)
    except Exception as error:  # an unexpected bug on one host must not hide the others' results
        report.error = f"unexpected error: {type(error).__name__}: {error}"
        show_error(report)
    finally:
        report.remote_commands = remote.commands_run
        remote.close()


def run_on_hosts(config: Config, hosts: list[Host], work, check: bool = False, timeout: float = HOST_TIMEOUT) -> list[HostReport]:
    """Run work(remote, report) on every host concurrently; a hung host is reported after the timeout."""
    reports = [HostReport(host.name, check=check) for host in hosts]
    threads = [
        threading.Thread(target=_work_on, args=(host, config.clone(), report, work), daemon=True)
        for host, report in zip(hosts, reports)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread, report in zip(threads, reports):
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            report.error = f"timed out after {timeout:.0f} s: the host stopped answering"
            report.unreachable = True
            show_error(report)
    return reports


def finish(reports: list[HostReport]) -> None:
    """The recap line per host; exit non-zero if any host failed."""
    show_recap(reports, show_commands=bool(os.environ.get("MLFLOW_FAB_COUNT_COMMANDS")))
    if any(report.failed for report in reports):
        raise Exit(code=1)

