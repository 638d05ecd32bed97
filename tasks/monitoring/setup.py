"""`fab setup-monitoring`: the exporters on every host of hosts.toml (each behind its wall), then Prometheus on the monitor
hosts, scraping them; the second stage only when the first succeeded everywhere.

Runbook this replaces: install an exporter on each server, open its port to the Prometheus server, list every server
in prometheus.yml, reload, and come back to all of it for each new server.
"""

from __future__ import annotations

from fabric import Config

from tasks.converge import converge_host
from tasks.fleet import Connect, merge_reports, run_on_hosts
from tasks.inventory import Inventory
from tasks.monitoring import exporters, prometheus
from tasks.ops import facts as f
from tasks.ops.remote import Remote
from tasks.report import HostReport


def setup_monitoring(config: Config, inventory: Inventory, check: bool, connect: Connect = Remote) -> list[HostReport]:
    on_hosts = exporters.targets(inventory)
    by_name = {target.host.name: target for target in on_hosts}

    def converge_exporters(remote: Remote, report: HostReport) -> None:
        target = by_name[remote.host.name]
        converge_host(remote, report, lambda: f.gather(remote, target.facts()), lambda facts: exporters.plan(target, facts))

    stages = [run_on_hosts(config, [target.host for target in on_hosts], converge_exporters, check=check, connect=connect)]
    if not any(report.failed for report in stages[0]):
        monitors = {target.host.name: target for target in prometheus.targets(inventory, on_hosts)}
        stages.append(run_on_hosts(config, [target.host for target in monitors.values()],
                                   lambda remote, report: prometheus.converge(remote, report, monitors[remote.host.name]),
                                   check=check, connect=connect))
    return merge_reports(*stages)
