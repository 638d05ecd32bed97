"""`fab upgrade-tracking --mlflow-version X`: backup, new env beside the old, migrate, start, gate; back on failure.

Runbook this replaces: pg_dump; pip install -U mlflow in place (and hope); mlflow db upgrade URI (with
the password on the command line); restart; and, when it won't start, an evening of restoring by hand.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tasks.converge import converge_host
from tasks.ops import facts as f
from tasks.ops import postgres
from tasks.ops.files import ensure_file
from tasks.ops.health import gate_script
from tasks.ops.pyenv import ensure_env
from tasks.ops.remote import HostError, Remote
from tasks.ops.steps import Step, apply
from tasks.ops.systemd import restart_script
from tasks.report import HostReport, record, show_note, show_step
from tasks.templates import render_script
from tasks.tracking.backups import backup_path, download_backup
from tasks.tracking.schema import DATABASE, SCHEMA
from tasks.tracking.server import (
    BACKUP_SCRIPT,
    ENV_FILE,
    RESTORE_SCRIPT,
    RUNNING_MARKER,
    UNIT,
    UNIT_FILE,
    UNIT_PATH,
    TrackingTarget,
    from_wheelhouse,
    installed_mlflow_version,
    running_env_path,
)

# A copy of the database made with the server stopped: what a rollback puts back once the schema changed.
COPY = f"{DATABASE}_before_upgrade"
SCHEMA_REVISION = f.Fact("schema", SCHEMA)
# Both scripts are there when setup-tracking ran.
SCRIPTS = f.Fact("scripts", f"ls {BACKUP_SCRIPT} {RESTORE_SCRIPT}", f.words)


def migrate_script(env_path: str) -> str:
    return render_script("tracking-migrate.sh.j2", unit=UNIT, database=DATABASE, copy=COPY, env_file=ENV_FILE, env_path=env_path, schema=SCHEMA,
                         close_connections=postgres.close_connections(DATABASE), drop_copy=postgres.drop_if_exists(COPY))


def backup_first(remote: Remote, report: HostReport, backup: Step, rest: list[Step], download: str) -> list[Step]:
    """With --download the backup runs alone and reaches the laptop before anything else. The steps left to run."""
    if not download:
        return [backup, *rest]
    if apply(remote, [backup], lambda each: show_step(report, each)):
        try:
            download_backup(remote, report, backup_path(backup.output), download)
            return rest
        except HostError as error:
            copy = Step.failure("download", f"{error.message}: the upgrade did not start")
            report.steps.append(copy)
            show_step(report, copy)
    for each in rest:
        each.skipped = True
    return []


def upgrade_on(remote: Remote, report: HostReport, version: str, download: str = "") -> None:
    new_host = dataclasses.replace(remote.host, tracking=dataclasses.replace(remote.host.tracking, mlflow_version=version))
    new = TrackingTarget(new_host, remote.connection.host)
    plan = UpgradePlan()

    def planned(facts: f.Facts) -> list[Step]:
        nonlocal plan, new
        plan = plan_upgrade(new, facts)
        if plan.instead:
            return plan.steps
        try:
            new, wheels = from_wheelhouse(remote, new, facts[new.env_marker_fact], report.check)
        except HostError:
            show_note(report, f"the server still runs mlflow {installed_mlflow_version(facts[RUNNING_MARKER])}: nothing was changed")
            raise
        record(report, wheels)
        plan = plan_upgrade(new, facts)
        return plan.steps

    converge_host(remote, report, lambda: f.gather(remote, [*new.facts(), SCHEMA_REVISION, SCRIPTS]), planned,
                  lambda facts, steps: upgrade(remote, report, new, facts, plan, download))


def upgrade_gate(new: TrackingTarget) -> str:
    return gate_script(UNIT, new.server_port, new.health_checks, new.settings.health_timeout, after_restart=True)


@dataclass
class UpgradePlan:
    """The upgrade's steps by what they do, in the order they run; or the one step saying why there is none."""

    backup: Step | None = None
    env: Step | None = None
    migrate: Step | None = None
    start: list[Step] = field(default_factory=list)  # the new unit, its start, the health gate
    instead: Step | None = None  # not set up by setup-tracking, or already on this version

    @property
    def steps(self) -> list[Step]:
        return [self.instead] if self.instead else [self.backup, self.env, self.migrate, *self.start]


def plan_upgrade(new: TrackingTarget, facts: f.Facts) -> UpgradePlan:
    """Backup first, the new env beside the old, then migrate, start and gate; nothing when not set up or already there."""
    version = new.settings.mlflow_version
    running = installed_mlflow_version(facts[RUNNING_MARKER])
    old_unit = facts[UNIT_FILE]
    if not running or not old_unit.exists or len(facts[SCRIPTS]) != 2:
        return UpgradePlan(instead=Step.failure("upgrade", "no tracking server set up here by setup-tracking: run fab setup-tracking first"))
    if running == version:
        return UpgradePlan(instead=Step.ok("upgrade", f"already runs mlflow {version}"))
    settings = new.settings
    return UpgradePlan(
        backup=Step.change("backup", "database dump and artifacts before anything else (yours to keep: a rollback uses a copy made after the stop)",
                           f"{BACKUP_SCRIPT} {settings.backup_keep + 1}"),
        env=ensure_env(new.env_spec, new.env_path, facts[new.env_marker_fact], name=f"python env (mlflow {version})"),
        migrate=Step.change("migrate", f"stop the server, copy the database, upgrade its schema with mlflow {version}", migrate_script(new.env_path)),
        start=[
            ensure_file(UNIT_PATH, new.unit(facts[f.node_name()]), old_unit),
            Step.change(f"start {UNIT}", f"on mlflow {version}", f"systemctl daemon-reload\n{restart_script(UNIT, new.server_port)}"),
            Step.change("health gate", f"wait up to {settings.health_timeout} s for /health and the API", upgrade_gate(new)),
        ],
    )


def upgrade(remote: Remote, report: HostReport, new: TrackingTarget, facts: f.Facts, plan: UpgradePlan, download: str) -> bool:
    """Run the planned upgrade: the backup first, then the rest; prune after the gate passed, roll back after a failed migration."""
    version = new.settings.mlflow_version
    running = installed_mlflow_version(facts[RUNNING_MARKER])
    old_unit = facts[UNIT_FILE]
    show_note(report, f"upgrading mlflow {running} -> {version}")
    untouched = f"the server still runs mlflow {running}: nothing else was changed"
    remaining = backup_first(remote, report, plan.backup, [plan.env, plan.migrate, *plan.start], download)
    if not remaining:
        show_note(report, untouched)
        return False
    if apply(remote, remaining, lambda each: show_step(report, each)):
        show_note(report, "database " + ", ".join(line for line in plan.migrate.output.splitlines() if line.startswith("schema ")))
        prune = [Step.change("database copy", f"the new server passed its gate: drop {COPY}", f"cd / && runuser -u postgres -- dropdb --force {COPY}")]
        old_env = running_env_path(old_unit.content)
        if old_env and old_env != new.env_path:
            prune.append(Step.change("old python env", f"remove {old_env}", f"rm -rf {old_env}"))
        report.steps += prune
        apply(remote, prune, lambda each: show_step(report, each))
        if remote.host.tracking.mlflow_version != version:
            show_note(report, f'now set mlflow_version = "{version}" in {remote.host.name}\'s inventory, or setup-tracking will refuse to run')
        return True
    if plan.backup.failed or plan.env.failed:  # the server was never stopped
        show_note(report, untouched)
        return False
    report.steps += restore_old_server(remote, report, old_unit.content, facts[SCHEMA_REVISION], running, new.server_port, upgrade_gate(new))
    return False


def restore_old_server_script(old_unit: str, schema_before: str, port: int) -> str:
    """The old unit and env again; the database copy made after the stop only when the migration got as far as changing the schema.

    With the schema unchanged the database stays: it holds what the new server was sent before it failed.
    """
    return render_script("tracking-upgrade-rollback.sh.j2", write_old_unit=ensure_file(UNIT_PATH, old_unit, f.FileState(False)).script,
                         schema=SCHEMA, schema_before=schema_before, unit=UNIT, database=DATABASE, copy=COPY,
                         database_functions=postgres.functions(), drop_copy=postgres.drop_if_exists(COPY),
                         restart=restart_script(UNIT, port))


def restore_old_server(remote: Remote, report: HostReport, old_unit: str, schema_before: str, old_version: str, port: int,
                       gate: str) -> list[Step]:
    """After a failed upgrade: the old unit, env and (when the schema changed) database, gated."""
    restore = Step.change("roll back", f"back to mlflow {old_version} and its env", restore_old_server_script(old_unit, schema_before, port))
    steps = [restore, Step.change("health gate", "the old server serves again", gate)]
    apply(remote, steps, lambda each: show_step(report, each))
    if not restore.failed:  # which database the old server got back
        for line in restore.output.splitlines():
            show_note(report, line)
    return steps
