"""setup-tracking for replicas of one service: the shared secrets read once, the db host converged first, then every
tracking host in parallel with the same secrets and stores, a replica that restarts while serving taking its turn
(drained from every balancer, restarted, gated, put back), then the balancers.

Runbook this replaces: set up PostgreSQL on its own server and open it to the app servers; copy the database password,
the Flask secret key and the S3 keys to each app server by hand; restart them one by one behind the load balancer.
"""

from __future__ import annotations

import threading
from typing import Callable

from fabric import Config

from tasks.fleet import Connect, merge_reports, run_on_hosts
from tasks.inventory import Host
from tasks.ops import facts as f
from tasks.ops.remote import HostError, Remote
from tasks.report import HostReport, show_error, show_note
from tasks.tracking import balancer, database, frontdoor, server
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


class Turns:
    """Replicas restart one at a time while they serve, each drained from every balancer first and put back once its
    health gate passed (a replica that fails stays drained: the others answer for it). Replicas drained before the turns
    began (hold_drained) or left drained by a turn once its own replica is back (`then`) stay drained until a turn puts
    them back."""

    def __init__(self, config: Config, service: TrackingService, connect: Connect = Remote):
        self.config, self.service, self.connect = config, service, connect
        self.lock = threading.Lock()
        self.held: frozenset[str] = frozenset()

    def __call__(self, host: Host, report: HostReport, restart: Callable[[], bool], then: frozenset[str] = frozenset()) -> bool:
        with self.lock:
            if not self.drain(report, self.held | {host.name}, f"drain {host.name} before its server restarts", undo=self.held):
                return False
            if not restart():
                show_note(report, f"{host.name} stays drained from the balancers: fix it and run setup-tracking again")
                return False
            back = f"{host.name} back behind the balancers" + (f", {', '.join(sorted(then))} drained" if then else "")
            if not self.drain(report, then, back):
                return False
            self.held = then
            return True

    def drain(self, report: HostReport, drained: frozenset[str], summary: str, undo: frozenset[str] | None = None) -> bool:
        """Every balancer with these replicas down (none: all in service). When one balancer fails before a restart (undo:
        the balancers' state before), those already changed get that state back: a replica is never left drained on some
        balancers while its restart did not happen."""
        done = []
        for lb in self.service.balancers:
            failure = self.set_drained(lb, drained, summary)
            if failure:
                report.error = f"balancer {lb.name}: {failure}"
                show_error(report)
                for each in done if undo is not None else []:
                    left = self.set_drained(each, undo, "put back")
                    show_note(report, f"balancer {each.name}: " + (f"still drains {', '.join(sorted(drained))}: {left}" if left
                                                                   else "put back, the restart did not happen"))
                return False
            done.append(lb)
            show_note(report, f"balancer {lb.name}: {summary}")
        return True

    def hold_drained(self, report: HostReport) -> bool:
        """The replicas some balancer has drained now (a failed restart of an earlier run left them so) stay drained
        through the turns, until their own puts them back."""
        for lb in self.service.balancers:
            remote = self.connect(lb, self.config.clone())
            try:
                routed = f.gather(remote, [frontdoor.NGINX_FILE])[frontdoor.NGINX_FILE].content
            except HostError as error:
                report.error = f"balancer {lb.name}: {error}"
                show_error(report)
                return False
            finally:
                remote.close()
            self.held |= balancer.drained_in(routed, self.service)
        if self.held:
            show_note(report, f"drained already, kept drained until their own turn: {', '.join(sorted(self.held))}")
        return True

    def set_drained(self, lb: Host, drained: frozenset[str], summary: str) -> str:
        """'' once the balancer has these replicas down, else what went wrong."""
        remote = self.connect(lb, self.config.clone())
        try:
            step = balancer.set_drained(remote, self.service, drained, summary)
        except HostError as error:
            return str(error)
        finally:
            remote.close()
        return f"{summary}: {step.output.strip()[-500:]}" if step.failed else ""


def setup_replicas(config: Config, service: TrackingService, hosts: list[Host], files: StoreFiles, check: bool) -> list[HostReport]:
    """The db host (when the service has one), the tracking hosts, then the balancers; each stage only when the one
    before it succeeded everywhere."""
    secrets, failed = shared_secrets(config, service)
    if secrets is None:
        return failed
    certificate = {"pem": ""}
    reports = []
    if service.fronted and not check:
        reports = run_on_hosts(config, list(service.balancers), lambda remote, report: balancer.stop_routing_to_removed(remote, report, service))
        if any(report.failed for report in reports):
            return reports
    if service.db_host:
        clients = tuple(host.address for host in service.replicas)

        def converge_database(remote, report: HostReport) -> None:
            certificate["pem"] = database.converge(remote, report, clients, secrets.db_password)

        reports += run_on_hosts(config, [service.db_host], converge_database, check=check)
        if any(report.failed for report in reports):
            return reports
    stores = stores_for(service, files, secrets, certificate["pem"])
    fronted = [balancer.replica_host(host, service) if service.fronted else host for host in hosts]
    turns = Turns(config, service) if service.fronted else None
    wall = balancer.replica_firewall(service)
    reports += run_on_hosts(config, fronted, lambda remote, report: server.converge(remote, report, stores, turns, wall), check=check)
    if service.fronted and not any(report.failed for report in reports):
        reports += run_on_hosts(config, list(service.balancers), lambda remote, report: balancer.converge(remote, report, service), check=check)
    return merge_reports(reports)
