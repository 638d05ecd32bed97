"""mlflow-restore's decisions, run by bash with every command recorded (see test_hostile_values): what it does before
the stop, how it puts the old state back when a step after the stop fails, and what it does with leftovers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tasks.templates import PROGRAMS
from tasks.tracking.upgrade import migrate_script, restore_old_server_script
from tests.unit.test_hostile_values import recordable_restore_script, run_recorded, tracking_target

STOP = ["systemctl", "stop", "mlflow-tracking"]
START = ["systemctl", "start", "mlflow-tracking"]
DROP_REPLACED = ["runuser", "-u", "postgres", "--", "dropdb", "--force", "mlflow_replaced"]


def answers(existing="mlflow mlflow_restoring", fail_mv="", backup_fails=False, relation="same 3.17.2", schema="") -> str:
    """Commands that answer like a host: databases that exist, a rename that fails, a full disk, the backup's version."""
    return f"""
EXISTING={existing!r}
mv() {{ command_not_found_handle mv "$@"; [ "$*" != {fail_mv!r} ]; }}
mlflow-backup() {{
  command_not_found_handle mlflow-backup "$@"
  {'echo "tar: write error: No space left on device" >&2; return 1' if backup_fails else 'echo /var/backups/mlflow/mlflow-backup-1.tar'}
}}
python() {{ command_not_found_handle python "$@"; [ "$1" != - ] || [ $# = 1 ] || echo {relation!r}; }}
runuser() {{ command_not_found_handle runuser "$@"; [ "$4" != psql ] || psql_answer "${{@:5}}"; }}
psql_answer() {{
  case "$*" in
    *"datname = '"*) name="$*"; name=${{name#*datname = \\'}}; name=${{name%%\\'*}}; [[ " $EXISTING " != *" $name "* ]] || echo 1 ;;
    *alembic_version*) echo {schema!r} ;;
    *" -c "*) ;;
    *) while IFS= read -r line; do printf '%s\n' "$line" >> "$SANDBOX/sql"; done; echo 0 ;;
  esac
}}
"""


def restore(tmp_path, **kwargs):
    live = tmp_path / "artifacts"
    script = recordable_restore_script(tracking_target(artifacts=str(live)), tmp_path)
    (tmp_path / "work" / "mlflow.dump").parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "work" / "mlflow.dump").write_text("")
    (tmp_path / "backup.tar").write_text("")
    run = run_recorded(script, tmp_path, str(tmp_path / "backup.tar"), answers=answers(**kwargs))
    sql = (tmp_path / "sql").read_text() if (tmp_path / "sql").exists() else ""
    return run, str(live), sql


def test_the_replaced_data_is_dropped_only_after_the_restored_server_passed_its_gate(tmp_path):
    run, live, sql = restore(tmp_path)
    assert run.result.returncode == 0, run.result.stdout + run.result.stderr
    commands = run.commands
    at = commands.index
    gate = next(index for index, command in enumerate(commands) if command[0] == "curl" and index > at(START))
    assert at(["mlflow-backup", "1000"]) < at(STOP) < at(["mv", "-T", live, f"{live}.replaced"]) < at(["mv", "-T", f"{live}.restoring", live])
    assert at(START) < gate < at(DROP_REPLACED) < at(["rm", "-rf", f"{live}.replaced"])
    assert 'ALTER DATABASE "mlflow" RENAME TO "mlflow_replaced";\nALTER DATABASE "mlflow_restoring" RENAME TO "mlflow";' in sql
    assert "pg_terminate_backend" in sql


def test_a_failed_safety_backup_stops_the_restore_before_anything_changes(tmp_path):
    run, _, _ = restore(tmp_path, backup_fails=True)
    assert run.result.returncode == 1
    assert "the safety backup of the current state failed: nothing was changed" in run.result.stdout
    assert STOP not in run.commands and not any("createdb" in command for command in run.commands)


@pytest.mark.parametrize("failing", ["first", "second"])
def test_a_rename_failing_after_the_stop_puts_the_old_database_and_artifacts_back(tmp_path, failing):
    live = str(tmp_path / "artifacts")
    fail = f"-T {live} {live}.replaced" if failing == "first" else f"-T {live}.restoring {live}"
    run, live, sql = restore(tmp_path, fail_mv=fail)
    assert run.result.returncode == 1
    assert "the old database and artifacts serve again: nothing was restored" in run.result.stdout
    assert 'ALTER DATABASE "mlflow" RENAME TO "mlflow_restoring";\nALTER DATABASE "mlflow_replaced" RENAME TO "mlflow";' in sql
    put_back = ["mv", "-T", f"{live}.replaced", live]
    assert (put_back in run.commands) == (failing == "second")
    assert DROP_REPLACED not in run.commands
    after_stop = run.commands[run.commands.index(STOP):]
    assert after_stop.index(["runuser", "-u", "postgres", "--", "dropdb", "--force", "mlflow_restoring"]) < after_stop.index(START)


def test_leftovers_of_an_earlier_restore_are_kept_under_another_name(tmp_path):
    (tmp_path / "artifacts.replaced").mkdir()
    run, live, _ = restore(tmp_path, existing="mlflow mlflow_replaced")
    assert run.result.returncode == 0, run.result.stdout + run.result.stderr
    assert "database mlflow_replaced, left by an earlier restore that did not finish, is kept as mlflow_replaced_" in run.result.stdout
    assert ["mv", "-T", f"{live}.replaced", f"{live}.replaced-"] in run.commands  # `date` is recorded: an empty stamp
    rename = next(command for command in run.commands if command[0] == "runuser" and any("RENAME TO mlflow_replaced_" in part for part in command))
    assert run.commands.index(rename) < run.commands.index(["mlflow-backup", "1000"])


def test_a_backup_from_a_newer_mlflow_is_refused_before_anything_changes(tmp_path):
    run, _, _ = restore(tmp_path, relation="newer 3.18.0")
    assert run.result.returncode == 2
    assert "Upgrade this server first (fab upgrade-tracking --mlflow-version 3.18.0)" in run.result.stdout
    assert ["mlflow-backup", "1000"] not in run.commands and STOP not in run.commands


def test_a_backup_from_an_older_mlflow_is_migrated_beside_the_live_database(tmp_path):
    run, _, _ = restore(tmp_path, relation="older 3.16.1")
    assert run.result.returncode == 0, run.result.stdout + run.result.stderr
    assert "the backup is from mlflow 3.16.1" in run.result.stdout and "migrating the restored database" in run.result.stdout
    migrate = [index for index, command in enumerate(run.commands) if command == ["python", "-"]][-1]
    pg_restore = ["runuser", "-u", "postgres", "--", "pg_restore", "--no-owner", "--role=mlflow", "--exit-on-error", "-d", "mlflow_restoring"]
    assert run.commands.index(pg_restore) < migrate < run.commands.index(STOP)


@pytest.mark.parametrize(("backup", "relation"), [("3.17.2", "same"), ("3.16.1", "older"), ("3.18.0", "newer"), ("unknown", "unknown")])
def test_version_check_compares_the_backup_with_the_server(tmp_path, backup, relation):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"mlflow": backup}))
    result = subprocess.run([sys.executable, PROGRAMS / "backup_version.py", str(manifest), "3.17.2"], capture_output=True, text=True, check=True)
    assert result.stdout.split() == [relation, backup]


def test_upgrade_copies_the_database_after_the_stop_and_before_the_migration():
    script = migrate_script("/opt/mlflow/envs/tracking-new")
    stop, copy, migrate = (script.index(part) for part in ("systemctl stop", "createdb -O mlflow -T mlflow mlflow_before_upgrade", "upgrade.callback"))
    assert stop < copy < migrate


@pytest.mark.parametrize("changed", [True, False])
def test_upgrade_rollback_puts_the_copy_back_only_when_the_schema_changed(tmp_path, changed):
    run = run_recorded(restore_old_server_script("[Unit]\n", "rev-old", 5000), tmp_path, answers=answers(schema="rev-new" if changed else "rev-old"))
    sql = (tmp_path / "sql").read_text() if (tmp_path / "sql").exists() else ""
    swapped = 'ALTER DATABASE "mlflow" RENAME TO "mlflow_failed_upgrade";\nALTER DATABASE "mlflow_before_upgrade" RENAME TO "mlflow";' in sql
    assert swapped == changed
    kept = any(command[-2:] == ["--force", "mlflow_before_upgrade"] for command in run.commands)
    assert kept != changed
    assert run.commands[-1] == ["systemctl", "start", "mlflow-tracking"]
