"""`fab upgrade-tracking` for replicas of one service: the new env built on every replica beside the old one while they
serve, one backup, the shared schema migrated once while they keep serving on the old MLflow, then the replicas restarted
on the new env one at a time, each drained from the balancers, gated and put back.

After the migration an old server answers only from the store each of its workers made before it: a worker that makes its
store later (at its first API request, or started again by uvicorn) refuses every request ("out-of-date database
schema"). So old servers serve after the migration only until the first replica is back on the new version: the balancer
reload that puts it back drains every replica still on the old one, each put back once it switched. A replica drained
before the upgrade (an earlier run's failed restart left it so; its workers may have made no store yet) is not put back
before its own switch, and switches first: its restart takes nothing out of service. A replica that fails stays drained
and the others are not switched.

Runbook this replaces: pg_dump; pip install on each app server; mlflow db upgrade from one of them; restart them one by
one behind the load balancer, watching each come back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fabric import Config

from tasks.converge import converge_host
from tasks.fleet import Connect, merge_reports, run_on_hosts
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
    return steps


class Roll:
    """The replicas switch one at a time (Turns), in the order given. The first comes back with every replica still on the
    old version drained; a replica drained before (Turns.held) stays drained until its own switch, or for good when it is
    not switching. After one fails, the rest are not switched."""

    def __init__(self, turns: Turns, switching: list[Host]):
        self.turns = turns
        self.old = frozenset(host.name for host in switching)
        self.failed = False

    def switch(self, remote: Remote, report: HostReport, ready: Prepared) -> None:
        steps = switch_steps(ready)
        report.steps += steps
        if self.failed:
            for step in steps:
                step.skipped = True
            show_note(report, f"not switched: another replica failed its switch; this one still runs mlflow {ready.running}, "
                              + ("drained from the balancers" if remote.host.name in self.turns.held else "in service"))
            return
        still_old = self.old - {remote.host.name}
        kept_out = self.turns.held - self.old
        if not self.turns(remote.host, report, lambda: apply(remote, steps, lambda each: show_step(report, each)), then=still_old | kept_out):
            self.failed = True
            return
        self.old = still_old


def remove_old_env(remote: Remote, report: HostReport, ready: Prepared) -> None:
    old_env = running_env_path(ready.old_unit.content)
    if old_env and old_env != ready.target.env_path:
        step = Step.change("old python env", f"remove {old_env}", f"rm -rf {old_env}")
        report.steps.append(step)
        apply(remote, [step], lambda each: show_step(report, each))


def roll_out(config: Config, service: TrackingService, switching: list[Host], prepared: dict[str, Prepared], download: str,
             connect: Connect = Remote) -> list[list[HostReport]]:
    """The backup and the migration from the first replica, then the replicas switched one by one (those drained already
    first), then the old envs of those that switched removed; each stage only after the one before succeeded."""
    turns = Turns(config, service, connect)
    first = switching[0]

    def backup_and_migrate_once(remote: Remote, report: HostReport) -> None:
        if turns.hold_drained(report):
            backup_and_migrate(remote, report, prepared[first.name], download)

    stages = [run_on_hosts(config, [first], backup_and_migrate_once, connect=connect)]
    if any(report.failed for report in stages[-1]):
        return stages
    # a replica drained already switches first: its restart takes nothing out of service
    order = sorted(switching, key=lambda host: host.name not in turns.held)
    roll = Roll(turns, order)
    for host in order:
        stages.append(run_on_hosts(config, [host], lambda remote, report: roll.switch(remote, report, prepared[remote.host.name]), connect=connect))
    switched = [host for host in switching if host.name not in roll.old]
    stages.append(run_on_hosts(config, switched, lambda remote, report: remove_old_env(remote, report, prepared[remote.host.name]), connect=connect))
    return stages


def upgrade_replicas(config: Config, service: TrackingService, version: str, download: str, check: bool) -> list[HostReport]:
    hosts = [balancer.replica_host(host, service) if service.fronted else host for host in service.replicas]
    prepared: dict[str, Prepared] = {}
    stages = [run_on_hosts(config, hosts, lambda remote, report: prepare(remote, report, remote.host, version, prepared), check=check)]
    if check or any(report.failed for report in stages[0]) or not prepared:
        return merge_reports(*stages)
    switching = [host for host in hosts if host.name in prepared]
    return merge_reports(*stages, *roll_out(config, service, switching, prepared, download))
