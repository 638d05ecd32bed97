"""setup-tracking for replicas of one service: the shared secrets read once, the db host converged first, then every
tracking host in parallel with the same secrets and stores.

Runbook this replaces: set up PostgreSQL on its own server and open it to the app servers; copy the database password,
the Flask secret key and the S3 keys to each app server by hand; hope the copies stay the same.
"""

from __future__ import annotations

from fabric import Config

from tasks.fleet import run_on_hosts
from tasks.inventory import Host
from tasks.report import HostReport
from tasks.tracking import database, server
from tasks.tracking.service import SharedSecrets, StoreFiles, TrackingService, read_secrets, stores_for


def shared_secrets(config: Config, service: TrackingService) -> tuple[SharedSecrets | None, list[HostReport]]:
    """The secrets the replicas share, from the first tracking host holding them (every replica must answer: a host that
    can't be read may hold the ones in use), else generated here. None, with the failed reports, when a host can't be read."""
    found: dict[str, dict[str, str]] = {}

    def read(remote, report: HostReport) -> None:
        found[remote.host.name] = read_secrets(remote, report)

    reports = run_on_hosts(config, list(service.replicas), read)
    failed = [report for report in reports if report.failed]
    if failed:
        return None, failed
    return SharedSecrets.first_of([found[host.name] for host in service.replicas]), []


def setup_replicas(config: Config, service: TrackingService, hosts: list[Host], files: StoreFiles, check: bool) -> list[HostReport]:
    """The db host (when the service has one), then the tracking hosts; nothing on a tracking host when the database failed."""
    secrets, failed = shared_secrets(config, service)
    if secrets is None:
        return failed
    certificate = {"pem": ""}
    reports = []
    if service.db_host:
        clients = tuple(host.address for host in service.replicas)

        def converge_database(remote, report: HostReport) -> None:
            certificate["pem"] = database.converge(remote, report, clients, secrets.db_password)

        reports = run_on_hosts(config, [service.db_host], converge_database, check=check)
        if any(report.failed for report in reports):
            return reports
    stores = stores_for(service, files, secrets, certificate["pem"])
    return reports + run_on_hosts(config, hosts, lambda remote, report: server.converge(remote, report, stores), check=check)
