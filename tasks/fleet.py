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
from tasks.report import HostReport, running_steps_shown, show_error, show_recap

HOST_TIMEOUT = 3600
# How orchestration reaches a host: the real SSH Remote, or a test's fake.
Connect = Callable[[Host, Config], Remote]


def in_parallel(items: list, work: Callable, timeout: float, on_timeout: Callable) -> None:
    """work(item) for every item in its own thread; items still running at the deadline go to on_timeout."""
    threads = [threading.Thread(target=work, args=(item,), daemon=True) for item in items]
    with running_steps_shown():
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + timeout
        for thread, item in zip(threads, items):
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                on_timeout(item)


def guarded(report: HostReport, work: Callable[[], None]) -> bool:
    """Run one host's work; a failure is reported on that host, never raised. False when it failed."""
    try:
        work()
        return not report.timed_out
    except Exception as error:
        if report.timed_out:  # reported at its deadline: this is its abandoned work ending
            return False
        if isinstance(error, HostError):
            report.error, report.unreachable = str(error), error.unreachable
        else:  # an unexpected bug on one host must not hide the others' results
            report.error = f"unexpected error: {type(error).__name__}: {error}"
    show_error(report)
    return False


def timed_out(report: HostReport, remote: Remote, seconds: float) -> None:
    """The host's deadline passed: report it, and close its connection so its work sends no further command."""
    report.error = f"no answer within {seconds:.0f} s: the host stopped responding"
    report.unreachable = report.timed_out = True
    show_error(report)
    remote.abandon()


def run_on_hosts(config: Config, hosts: list[Host], work, check: bool = False, timeout: float = HOST_TIMEOUT,
                 connect: Connect = Remote) -> list[HostReport]:
    """Run work(remote, report) on every host concurrently; a hung host is reported after the timeout."""
    jobs = [(connect(host, config.clone()), HostReport(host.name, check=check)) for host in hosts]

    def run(job) -> None:
        remote, report = job
        try:
            guarded(report, lambda: work(remote, report))
        finally:
            report.remote_commands = remote.commands_run
            remote.close()

    in_parallel(jobs, run, timeout, lambda job: timed_out(job[1], job[0], timeout))
    return [report for _, report in jobs]


def merge_reports(*stages: list[HostReport]) -> list[HostReport]:
    """One report per host of a task that ran in stages (each stage's run_on_hosts made its own), in first-seen order."""
    merged: dict[str, HostReport] = {}
    for reports in stages:
        for report in reports:
            into = merged.setdefault(report.host, HostReport(report.host, check=report.check))
            into.steps += report.steps
            into.notes += report.notes
            into.error = into.error or report.error
            into.unreachable = into.unreachable or report.unreachable
            into.remote_commands += report.remote_commands
    return list(merged.values())


def end_with_recap(reports: list[HostReport]) -> None:
    """The recap line per host; exit non-zero if any host failed."""
    show_recap(reports, show_commands=bool(os.environ.get("MLFLOW_FAB_COUNT_COMMANDS")))
    if any(report.failed for report in reports):
        raise Exit(code=1)

