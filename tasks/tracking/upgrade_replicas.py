"""`fab upgrade-tracking` for replicas of one service: the new env built on every replica beside the old one while they
serve, one backup, the shared schema migrated once, then the replicas restarted on the new env one at a time, each
drained from the balancers, gated and put back. A replica that fails stays drained and the others are not touched.

Runbook this replaces: pg_dump; pip install on each app server; mlflow db upgrade from one of them; restart them one by
one behind the load balancer, watching each come back.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass

from fabric import Config

from tasks.converge import converge_host
from tasks.fleet import merge_reports, run_on_hosts
from tasks.inventory import Host
from tasks.ops import facts as f
from tasks.ops.files import ensure_file
from tasks.ops.pyenv import ensure_env
from tasks.ops.remote import Remote
from tasks.ops.steps import Step, apply
from tasks.ops.systemd import restart_script
from tasks.report import HostReport, record, show_note, show_step
from tasks.templates import render_script
from tasks.tracking import balancer
from tasks.tracking.replicas import Turns
from tasks.tracking.server import (
    BACKUP_SCRIPT,
    ENV_FILE,
    RUNNING_MARKER,
    SERVICE_USER,
    UNIT,
    UNIT_FILE,
    UNIT_PATH,
    TrackingTarget,
    from_wheelhouse,
    installed_mlflow_version,
    running_env_path,
)
from tasks.tracking.service import TrackingService
from tasks.tracking.upgrade import backup_first, upgrade_gate


@dataclass
class Prepared:
    """A replica ready to switch: its target on the new version, the node name and unit it runs now, its old version."""

    target: TrackingTarget
    node_name: str
    old_unit: f.FileState
    running: str


def prepare(remote: Remote, report: HostReport, host: Host, version: str, prepared: dict[str, Prepared]) -> None:
    """The new env beside the running one; nothing else changes. prepared[name] when the replica is to be switched."""
    new = TrackingTarget(dataclasses.replace(host, tracking=dataclasses.replace(host.tracking, mlflow_version=version)), remote.connection.host)

    def plan(facts: f.Facts) -> list[Step]:
        nonlocal new
        running = installed_mlflow_version(facts[RUNNING_MARKER])
        if not running or not facts[UNIT_FILE].exists:
            return [Step.failure("upgrade", "no tracking server set up here by setup-tracking: run fab setup-tracking first")]
        if running == version:
            return [Step.ok("upgrade", f"already runs mlflow {version}")]
        new, wheels = from_wheelhouse(remote, new, facts[new.env_marker_fact], report.check)
        record(report, wheels)
        prepared[host.name] = Prepared(new, facts[f.node_name()], facts[UNIT_FILE], running)
        return [ensure_env(new.env_spec, new.env_path, facts[new.env_marker_fact], name=f"python env (mlflow {version})")]

    facts = [f.os_release(), f.node_name(), RUNNING_MARKER, UNIT_FILE, new.env_marker_fact]
    converged = converge_host(remote, report, lambda: f.gather(remote, facts), plan)
    if not converged.done:
        prepared.pop(host.name, None)


def migrate_script(new: TrackingTarget) -> str:
    return render_script("tracking-migrate-shared.sh.j2", user=SERVICE_USER, env_path=new.env_path, env_file=ENV_FILE)


def backup_and_migrate(remote: Remote, report: HostReport, ready: Prepared, download: str) -> None:
    settings = ready.target.settings
    backup = Step.change("backup", "the shared database and the list of the bucket's artifacts, before anything else",
                         f"{BACKUP_SCRIPT} {settings.backup_keep + 1}")
    migrate = Step.change("migrate", f"upgrade the shared schema once with mlflow {settings.mlflow_version} "
                                     f"(the replicas keep serving on mlflow {ready.running})", migrate_script(ready.target))
    steps = backup_first(remote, report, backup, [migrate], download)
    report.steps += [backup, migrate]
    if steps and apply(remote, steps, lambda each: show_step(report, each)):
        show_note(report, "database " + ", ".join(line for line in migrate.output.splitlines() if line.startswith("schema ")))


def switch_steps(ready: Prepared) -> list[Step]:
    new = ready.target
    version = new.settings.mlflow_version
    steps = [ensure_file(UNIT_PATH, new.unit(ready.node_name), ready.old_unit),
             Step.change(f"restart {UNIT}", f"on mlflow {version}", f"systemctl daemon-reload\n{restart_script(UNIT, new.server_port)}"),
             Step.change("health gate", f"wait up to {new.settings.health_timeout} s for /health and the API", upgrade_gate(new))]
    if new.artifacts_in_s3:
        steps.append(Step.change("artifact round trip", "write, read and delete an object through the server's proxy", new.artifact_round_trip_script()))
    old_env = running_env_path(ready.old_unit.content)
    if old_env and old_env != new.env_path:
        steps.append(Step.change("old python env", f"remove {old_env}", f"rm -rf {old_env}"))
    return steps


class Roll:
    """The replicas switch one at a time (Turns); after one fails, the rest keep their old server, in service."""

    def __init__(self, turns: Turns):
        self.turns = turns
        self.lock = threading.Lock()
        self.failed = False

    def switch(self, remote: Remote, report: HostReport, ready: Prepared) -> None:
        steps = switch_steps(ready)
        report.steps += steps
        with self.lock:
            if self.failed:
                for step in steps:
                    step.skipped = True
                show_note(report, f"not switched: another replica failed its switch; this one still serves on mlflow {ready.running}")
                return
            if not self.turns(remote.host, report, lambda: apply(remote, steps, lambda each: show_step(report, each))):
                self.failed = True


def upgrade_replicas(config: Config, service: TrackingService, version: str, download: str, check: bool) -> list[HostReport]:
    hosts = [balancer.replica_host(host, service) if service.fronted else host for host in service.replicas]
    prepared: dict[str, Prepared] = {}
    stages = [run_on_hosts(config, hosts, lambda remote, report: prepare(remote, report, remote.host, version, prepared), check=check)]
    if check or any(report.failed for report in stages[0]) or not prepared:
        return merge_reports(*stages)
    first = next(host for host in hosts if host.name in prepared)
    stages.append(run_on_hosts(config, [first], lambda remote, report: backup_and_migrate(remote, report, prepared[first.name], download)))
    if any(report.failed for report in stages[-1]):
        return merge_reports(*stages)
    roll = Roll(Turns(config, service))
    switching = [host for host in hosts if host.name in prepared]
    stages.append(run_on_hosts(config, switching, lambda remote, report: roll.switch(remote, report, prepared[remote.host.name])))
    return merge_reports(*stages)
