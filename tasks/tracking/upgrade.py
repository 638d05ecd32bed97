"""`fab upgrade-tracking --mlflow-version X`: backup, new env beside the old, migrate, start, gate; back on failure.

Runbook this replaces: pg_dump; pip install -U mlflow in place (and hope); mlflow db upgrade URI (with
the password on the command line); restart; and, when it won't start, an evening of restoring by hand.
"""

from __future__ import annotations

import dataclasses

from tasks.ops import facts as f
from tasks.ops import postgres
from tasks.ops.files import ensure_file
from tasks.ops.health import gate_script
from tasks.ops.pyenv import ensure_env
from tasks.ops.remote import HostError, Remote
from tasks.ops.steps import Step, apply
from tasks.report import HostReport, show_note, show_step
from tasks.tracking.backups import backup_path, download_backup
from tasks.tracking.schema import MIGRATE, SCHEMA
from tasks.tracking.server import (
    BACKUP_SCRIPT,
    DATABASE,
    ENV_FILE,
    RESTORE_SCRIPT,
    UNIT,
    UNIT_PATH,
    TrackingTarget,
    from_wheelhouse,
    installed_mlflow_version,
    running_env_path,
)

# A copy of the database made with the server stopped: what a rollback puts back once the schema changed.
COPY = f"{DATABASE}_before_upgrade"


def migrate_script(env_path: str) -> str:
    return (
        f"systemctl stop {UNIT}\n"
        f"cd /\n{postgres.close_connections(DATABASE)}\n"
        f"{postgres.drop_if_exists(COPY)}\n"
        f"runuser -u postgres -- createdb -O mlflow -T {DATABASE} {COPY}\n"
        f"echo 'database {DATABASE} copied to {COPY} with the server stopped: a rollback goes back to it'\n"
        f"set -a; . {ENV_FILE}; set +a\n"
        f"echo \"schema before: $({SCHEMA})\"\n"
        f"export PATH={env_path}/bin:$PATH\n{MIGRATE}\n"
        f"echo \"schema after: $({SCHEMA})\""
    )


def backup_first(remote: Remote, report: HostReport, steps: list[Step], download: str) -> list[Step]:
    """With --download the backup runs alone and reaches the laptop before anything else. The steps left to run."""
    if not download:
        return steps
    backup, rest = steps[0], steps[1:]
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
    facts = f.gather(remote, [*new.facts(), f.Fact("schema", SCHEMA), f.Fact("scripts", f"ls {BACKUP_SCRIPT} {RESTORE_SCRIPT}")])
    running = installed_mlflow_version(facts.get("running_marker", ""))
    old_unit = f.parse_file(facts.get(f"file:{UNIT_PATH}", ""))
    if not running or not old_unit.exists or len(facts.get("scripts", "").split()) != 2:
        step = Step.failure("upgrade", "no tracking server set up here by setup-tracking: run fab setup-tracking first")
    elif running == version:
        step = Step.ok("upgrade", f"already runs mlflow {version}")
    else:
        step = None
    if step:
        report.steps.append(step)
        show_step(report, step)
        return

    try:
        new, wheels = from_wheelhouse(remote, new, facts.get("env_marker", ""), report.check)
    except HostError:
        show_note(report, f"the server still runs mlflow {running}: nothing was changed")
        raise
    for each in wheels:
        report.steps.append(each)
        show_step(report, each)
    settings = new.settings
    gate = gate_script(UNIT, new.server_port, new.health_checks, settings.health_timeout, after_restart=True)
    unit = ensure_file(UNIT_PATH, new.unit(facts.get("node_name", "")), old_unit)
    steps = [
        Step.change("backup", "database dump and artifacts before anything else (yours to keep: a rollback uses a copy made after the stop)",
                    f"{BACKUP_SCRIPT} {settings.backup_keep + 1}"),
        ensure_env(new.env_spec, new.env_path, facts.get("env_marker", ""), name=f"python env (mlflow {version})"),
        Step.change("migrate", f"stop the server, copy the database, upgrade its schema with mlflow {version}", migrate_script(new.env_path)),
        unit,
        Step.change(f"start {UNIT}", f"on mlflow {version}", f"systemctl daemon-reload\nsystemctl restart {UNIT}"),
        Step.change("health gate", f"wait up to {settings.health_timeout} s for /health and the API", gate),
    ]
    report.steps += steps
    if report.check:
        for each in steps:
            show_step(report, each)
        return
    show_note(report, f"upgrading mlflow {running} -> {version}")
    untouched = f"the server still runs mlflow {running}: nothing else was changed"
    remaining = backup_first(remote, report, steps, download)
    if not remaining:
        show_note(report, untouched)
        return
    if apply(remote, remaining, lambda each: show_step(report, each)):
        show_note(report, "database " + ", ".join(line for line in steps[2].output.splitlines() if line.startswith("schema ")))
        prune = [Step.change("database copy", f"the new server passed its gate: drop {COPY}", f"cd / && runuser -u postgres -- dropdb --force {COPY}")]
        old_env = running_env_path(old_unit.content)
        if old_env and old_env != new.env_path:
            prune.append(Step.change("old python env", f"remove {old_env}", f"rm -rf {old_env}"))
        report.steps += prune
        apply(remote, prune, lambda each: show_step(report, each))
        if remote.host.tracking.mlflow_version != version:
            show_note(report, f'now set mlflow_version = "{version}" in {remote.host.name}\'s inventory, or setup-tracking will refuse to run')
        return
    failed = next(each for each in steps if each.failed)
    if steps.index(failed) < 2:
        show_note(report, untouched)
        return
    report.steps += roll_back(remote, report, old_unit.content, facts.get("schema", ""), running, gate)


def roll_back_script(old_unit: str, schema_before: str) -> str:
    """The old unit and env again; the database copy made after the stop only when the migration got as far as changing the schema.

    With the schema unchanged the database stays: it holds what the new server was sent before it failed.
    """
    return f"""{ensure_file(UNIT_PATH, old_unit, f.FileState(False)).script}
systemctl daemon-reload
cd /
if [ "$({SCHEMA} 2>/dev/null)" != {schema_before!r} ]; then
  echo "the migration changed the schema: {COPY}, copied with the server stopped, takes its place"
  systemctl stop {UNIT}
{postgres.FUNCTIONS}
  swap_databases {DATABASE} {DATABASE}_failed_upgrade {COPY}
  runuser -u postgres -- dropdb --force {DATABASE}_failed_upgrade
else
  echo "the schema is unchanged: starting the old server on the database as it is"
  {postgres.drop_if_exists(COPY)}
fi
systemctl restart {UNIT}"""


def roll_back(remote: Remote, report: HostReport, old_unit: str, schema_before: str, old_version: str, gate: str) -> list[Step]:
    script = roll_back_script(old_unit, schema_before)
    steps = [
        Step.change("roll back", f"back to mlflow {old_version} and its env", script),
        Step.change("health gate", "the old server serves again", gate),
    ]
    apply(remote, steps, lambda each: show_step(report, each))
    if not steps[0].failed:  # which database the old server got back
        for line in steps[0].output.splitlines():
            show_note(report, line)
    return steps
