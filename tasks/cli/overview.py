"""Tasks that look at the fleet: `fab status` and `fab logs`."""

from __future__ import annotations

from fabric import task

from tasks.cli import arguments
from tasks.fleet import end_with_recap, run_on_hosts
from tasks.ops.steps import Step
from tasks.overview.logs import unit_and_role
from tasks.report import PrefixedLines, console


@task
def status(c):
    """Every inventory host (or -H): tracking server, PostgreSQL, model services and releases, health."""
    from rich.table import Table

    from tasks.monitoring.live import FIGURES
    from tasks.overview.status import COLUMNS, LIVE_FIGURES, host_status
    from tasks.tracking.service import TrackingService

    hosts = arguments.hosts_for(c, role=None)
    inventory = arguments.inventory(c)
    service = TrackingService.of(inventory)
    port = inventory.monitoring.prometheus_port
    reports = run_on_hosts(c.config, hosts, lambda remote, report: host_status(remote, report, service, port))
    table = Table("host", *COLUMNS)
    for report in reports:
        table.add_row(report.host, *(report.details.get(column, "-") for column in COLUMNS))
    console.print(table)
    live = next((report for report in reports if LIVE_FIGURES in report.details), None)
    if live:
        measured_at = "the balancers" if inventory.with_role("lb") else "the model hosts"
        figures = Table(f"model (last 5 minutes at {measured_at}, Prometheus on {live.host})", *FIGURES)
        for model, row in sorted(live.details[LIVE_FIGURES].items()):
            figures.add_row(model, *(row.get(column, "-") for column in FIGURES))
        console.print(figures if live.details[LIVE_FIGURES] else f"no model traffic in the last 5 minutes (Prometheus on {live.host})")
    end_with_recap(reports)


@task(help={"service": "tracking (default), model:NAME or run:UNIT (a run-project run)", "number": "lines per host (default 100)", "follow": "keep printing new lines until Ctrl-C"})
def logs(c, service="tracking", number=100, follow=False):
    """The journal of the tracking server or of a model service, from every host that runs it (or -H)."""
    unit, role = unit_and_role(service)
    hosts = arguments.hosts_for(c, role=role)
    command = f"journalctl -u {unit} -n {int(number)} --no-pager -o short-iso" + (" -f" if follow else "")

    def read(remote, report):
        result = remote.run_script(command, step="journal", out_stream=PrefixedLines(remote.host.name))
        report.steps.append(Step.ok("journal", unit) if result.exited == 0 or follow else Step.failure("journal", result.stdout[-300:]))

    try:
        end_with_recap(run_on_hosts(c.config, hosts, read))
    except KeyboardInterrupt:
        console.print("\nstopped following")
