"""Faults during backup-tracking and restore-tracking, caused for real on one tracking host (mlt14).

Runs `before-1` and `before-2` are in the backup; `after`, with a 2 MiB artifact, is logged after it. A restore
that fails must leave all three served; one that succeeds serves the first two.
"""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from tests.integration.fabrun import PLAIN_HTTP, fab, host_entry, wait_for, write_inventory

pytestmark = pytest.mark.integration

BACKUPS = "/var/backups/mlflow"
ARTIFACTS = "/var/lib/mlflow/artifacts"
ALL_RUNS = {"before-1", "before-2", "after"}


def run_names(tracking_uri) -> set[str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    return {run.info.run_name for experiment in client.search_experiments() for run in client.search_runs([experiment.experiment_id])}


def log_run(tracking_uri, name: str, artifact: bytes) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("faults") or client.get_experiment(client.create_experiment("faults"))
    run = client.create_run(experiment.experiment_id, run_name=name)
    client.log_text(run.info.run_id, artifact.hex(), "artifact.txt")
    client.set_terminated(run.info.run_id)


def said(result) -> str:
    """What fab printed, with the console's line wrapping undone."""
    return " ".join(result.stdout.split())


def disk_full(output: str) -> bool:
    """tar says so in its words when the final archive can't be written whole."""
    return "No space left on device" in output or "Wrote only" in output


def main_pid(host) -> str:
    return host.run("systemctl show -p MainPID --value mlflow-tracking").stdout.strip()


@pytest.fixture(scope="module")
def tracking(module_hosts, tmp_path_factory):
    import os

    (host,) = module_hosts("mlt14", prebaked={"mlt14": ("tracking",)})
    root = tmp_path_factory.mktemp("restore-faults")
    inventory = write_inventory(root / "hosts.toml", {"mlt14": host_entry(host, ["tracking"])}, tracking={"workers": 1, **PLAIN_HTTP})
    result = fab(inventory, "setup-tracking")
    assert result.returncode == 0, result.stdout[-3000:]
    uri = f"http://{host.address}:5000"
    log_run(uri, "before-1", b"one")
    log_run(uri, "before-2", b"two")
    backup = fab(inventory, "backup-tracking", "--download", str(root))
    assert backup.returncode == 0, backup.stdout[-3000:]
    (archive,) = root.glob("mlt14-mlflow-backup-*.tar")
    log_run(uri, "after", os.urandom(2 * 1024 * 1024))  # hex: 4 MiB that gzip can only halve
    assert run_names(uri) == ALL_RUNS
    return host, inventory, uri, archive


@pytest.fixture
def small_backup_disk(tracking):
    """A 3 MiB filesystem over the backup directory: one copy of the current state fits, a second does not."""
    host = tracking[0]
    host.run(f"mount -t tmpfs -o size=3m,mode=700 tmpfs {BACKUPS}")
    yield host
    host.run(f"umount {BACKUPS}")


def test_a_backup_on_a_full_disk_leaves_no_file_and_the_next_backup_works(tracking, small_backup_disk):
    host, inventory, _, _ = tracking
    failed = fab(inventory, "backup-tracking")
    assert failed.returncode == 1 and disk_full(said(failed))
    assert host.run(f"ls -A {BACKUPS}").stdout.split() == [".lock"]
    host.run(f"mount -o remount,size=20m {BACKUPS}")  # space freed
    again = fab(inventory, "backup-tracking")
    assert again.returncode == 0, again.stdout[-3000:]
    assert len(host.run(f"ls {BACKUPS}/mlflow-backup-*.tar").stdout.split()) == 1


def test_a_full_disk_during_the_safety_backup_stops_the_restore_before_the_server_stops(tracking, small_backup_disk):
    host, inventory, uri, archive = tracking
    pid = main_pid(host)
    result = fab(inventory, "restore-tracking", "--from", str(archive))
    assert result.returncode == 1
    assert "the safety backup of the current state failed: nothing was changed" in said(result)
    assert disk_full(said(result))
    assert main_pid(host) == pid and run_names(uri) == ALL_RUNS
    assert host.run(f"ls -A {BACKUPS}").stdout.split() == [".lock"]


def test_a_backup_from_a_newer_mlflow_is_refused_before_the_server_stops(tracking, tmp_path):
    host, inventory, uri, archive = tracking
    newer = tmp_path / "from-newer.tar"
    with tarfile.open(archive) as source, tarfile.open(newer, "w") as target:
        for member in source.getmembers():
            data = source.extractfile(member).read()
            if member.name == "manifest.json":
                data = json.dumps({**json.loads(data), "mlflow": "99.0.0"}).encode()
                member.size = len(data)
            target.addfile(member, io.BytesIO(data))
    pid = main_pid(host)
    result = fab(inventory, "restore-tracking", "--from", str(newer))
    assert result.returncode == 1
    assert "the backup is from mlflow 99.0.0, newer than this server's mlflow" in said(result)
    assert "fab upgrade-tracking --mlflow-version 99.0.0" in said(result)
    assert main_pid(host) == pid and run_names(uri) == ALL_RUNS


def test_an_artifact_root_that_is_a_mount_point_is_refused_before_the_server_stops(tracking):
    host, inventory, uri, archive = tracking
    pid = main_pid(host)
    host.run(f"mount --bind {ARTIFACTS} {ARTIFACTS}")
    try:
        result = fab(inventory, "restore-tracking", "--from", str(archive))
    finally:
        host.run(f"umount {ARTIFACTS}")
    assert result.returncode == 1
    assert f"the artifact root {ARTIFACTS} is a mount point" in said(result)
    assert main_pid(host) == pid and run_names(uri) == ALL_RUNS


def test_a_rename_failing_after_the_stop_brings_the_old_database_and_artifacts_back(tracking, tmp_path):
    host, inventory, uri, archive = tracking
    host.run(f"chattr +i {ARTIFACTS}")  # the artifact root can't be renamed: the database swap before it must be undone
    try:
        result = fab(inventory, "restore-tracking", "--from", str(archive))
    finally:
        host.run(f"chattr -i {ARTIFACTS}")
    assert result.returncode == 1
    assert "Operation not permitted" in said(result)
    assert "the old database and artifacts serve again: nothing was restored" in said(result)
    assert run_names(uri) == ALL_RUNS
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    (after,) = client.search_runs([client.get_experiment_by_name("faults").experiment_id], "attributes.run_name = 'after'")
    assert len((tmp_path / client.download_artifacts(after.info.run_id, "artifact.txt", str(tmp_path))).read_bytes()) == 4 * 1024 * 1024
    assert host.run("cd / && runuser -u postgres -- psql -tAX -c \"select datname from pg_database where datname like 'mlflow%' order by 1\"").stdout.split() == ["mlflow"]
    assert host.run(f"ls -d {ARTIFACTS}*").stdout.split() == [ARTIFACTS]


def test_a_leftover_of_an_interrupted_restore_and_an_open_psql_session_do_not_stop_a_restore(tracking):
    host, inventory, uri, archive = tracking
    host.run("cd / && runuser -u postgres -- createdb -O mlflow mlflow_replaced && "
             "runuser -u postgres -- psql -q -d mlflow_replaced -c 'create table left_behind (x int)'")
    host.run(f"mkdir {ARTIFACTS}.replaced && echo kept > {ARTIFACTS}.replaced/left-behind")
    session = host.run("setsid sh -c 'sleep 600 | runuser -u postgres -- psql -d mlflow' </dev/null >/dev/null 2>&1 & echo $!").stdout.strip()
    try:
        wait_for(lambda: host.run("cd / && runuser -u postgres -- psql -tAX -c \"select count(*) from pg_stat_activity where datname = 'mlflow' "
                                  "and application_name = 'psql'\"").stdout.strip() == "1", 30, "the psql session")
        result = fab(inventory, "restore-tracking", "--from", str(archive))
    finally:
        host.run(f"kill -- -{session}", check=False)  # its sleep outlives the closed connection
    assert result.returncode == 0, result.stdout[-4000:]
    assert "database mlflow_replaced, left by an earlier restore that did not finish, is kept as mlflow_replaced_" in said(result)
    assert f"{ARTIFACTS}.replaced, left by an earlier restore that did not finish, is kept as {ARTIFACTS}.replaced-" in said(result)
    assert "closed 1 open connection(s) to mlflow and mlflow_restoring" in said(result)
    assert run_names(uri) == {"before-1", "before-2"}
    kept = host.run("cd / && runuser -u postgres -- psql -tAX -c \"select datname from pg_database where datname like 'mlflow_replaced%'\"").stdout.split()
    assert len(kept) == 1 and kept[0].startswith("mlflow_replaced_")
    assert host.run(f"cd / && runuser -u postgres -- psql -tAX -d {kept[0]} -c 'select count(*) from left_behind'").stdout.strip() == "0"
    assert host.run(f"cat {ARTIFACTS}.replaced-*/left-behind").stdout.strip() == "kept"
    assert host.run(f"ls -d {ARTIFACTS}.replaced", check=False).returncode != 0  # what this restore replaced went after its gate


# ---- upgrade-tracking on a second host (mlt20): a rollback after the migration keeps what was logged during the env build ----

OLD, NEW = "3.16.1", "3.17.2"  # 3.17 adds two schema revisions


@pytest.fixture(scope="module")
def old_tracking(module_hosts, tmp_path_factory):
    (host,) = module_hosts("mlt20", prebaked={"mlt20": ("tracking",)})
    inventory = write_inventory(tmp_path_factory.mktemp("upgrade-rollback") / "hosts.toml", {"mlt20": host_entry(host, ["tracking"])},
                                tracking={"workers": 1, **PLAIN_HTTP, "mlflow_version": OLD})
    result = fab(inventory, "setup-tracking")
    assert result.returncode == 0, result.stdout[-3000:]
    return host, inventory, f"http://{host.address}:5000"


def test_an_upgrade_rolled_back_after_its_migration_keeps_the_runs_logged_while_its_env_was_built(old_tracking):
    import subprocess

    from tests.integration.fabrun import FAB, REPO

    host, inventory, uri = old_tracking
    log_run(uri, "before-upgrade", b"old")
    # the new server can't start: its unit names another env than the one this drop-in lets through
    old_env = host.run("grep -o '/opt/mlflow/envs/tracking-[0-9a-f]*' /etc/systemd/system/mlflow-tracking.service").stdout.strip()
    host.run("mkdir -p /etc/systemd/system/mlflow-tracking.service.d && printf '[Service]\\nExecStartPre=/bin/grep -q %s "
             "/etc/systemd/system/mlflow-tracking.service\\n' " + old_env + " > /etc/systemd/system/mlflow-tracking.service.d/only-old-env.conf "
             "&& systemctl daemon-reload")
    upgrade = subprocess.Popen([str(FAB), "upgrade-tracking", "--mlflow-version", NEW], cwd=REPO, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, env={**__import__("os").environ, "FABRIC_INVENTORY": str(inventory), "COLUMNS": "200"})
    try:
        wait_for(lambda: host.run(f"ls {BACKUPS}/mlflow-backup-*.tar 2>/dev/null | wc -l").stdout.strip() == "1", 300, "the upgrade's backup")
        log_run(uri, "during-build", b"logged after the backup, before the stop")
        output, _ = upgrade.communicate(timeout=900)
    finally:
        upgrade.kill()
        host.run("rm -rf /etc/systemd/system/mlflow-tracking.service.d && systemctl daemon-reload")
    print(output)
    said_text = " ".join(output.split())
    assert upgrade.returncode == 1
    assert "the migration changed the schema: mlflow_before_upgrade, copied with the server stopped, takes its place" in said_text
    assert host.run("curl -s http://127.0.0.1:5000/version").stdout.strip() == OLD
    assert run_names(uri) == {"before-upgrade", "during-build"}
    assert host.run("cd / && runuser -u postgres -- psql -tAX -c \"select datname from pg_database where datname like 'mlflow%'\"").stdout.split() == ["mlflow"]
