"""backup-tracking and restore-tracking on a real tracking host (mlt8), and the optional backup timer."""

from __future__ import annotations

import pytest

from tests.integration.fabrun import PLAIN_HTTP, fab, host_entry, recap, wait_for, write_inventory

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tracking(module_hosts, tmp_path_factory):
    (host,) = module_hosts("mlt8")
    inventory = write_inventory(tmp_path_factory.mktemp("backups") / "hosts.toml", {"mlt8": host_entry(host, ["tracking"])},
                                tracking={"workers": 1, **PLAIN_HTTP, "backup_schedule": "*-*-* 03:00", "backup_keep": 3})
    result = fab(inventory, "setup-tracking")
    assert result.returncode == 0, result.stdout[-3000:]
    return host, inventory, f"http://{host.address}:5000"


def run_names(tracking_uri) -> set[str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    return {run.info.run_name for experiment in client.search_experiments() for run in client.search_runs([experiment.experiment_id])}


def log_runs(tracking_uri, *names):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("backups")
    for name in names:
        run = client.create_run(experiment, run_name=name)
        client.log_metric(run.info.run_id, "score", 1.0)
        client.log_text(run.info.run_id, f"artifact of {name}", "notes.txt")
        client.set_terminated(run.info.run_id)


def healthy(host) -> bool:
    return host.run("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:5000/health", check=False).stdout == "200"


def test_the_timer_runs_the_same_backup(tracking):
    host, _, _ = tracking
    assert host.run("systemctl is-enabled mlflow-backup.timer").stdout.strip() == "enabled"
    assert "*-*-* 03:00" in host.run("systemctl cat mlflow-backup.timer").stdout
    host.run("systemctl start mlflow-backup.service")
    assert host.run("ls /var/backups/mlflow/mlflow-backup-*.tar | wc -l").stdout.strip() == "1"


def test_backup_destroy_restore_brings_the_runs_back(tracking, tmp_path):
    host, inventory, tracking_uri = tracking
    log_runs(tracking_uri, "first", "second")
    backup = fab(inventory, "backup-tracking", "--download", str(tmp_path))
    assert backup.returncode == 0 and recap(backup, "mlt8")["failed"] == 0
    (downloaded,) = tmp_path.glob("mlt8-mlflow-backup-*.tar")

    host.run("systemctl stop mlflow-tracking && cd / && runuser -u postgres -- dropdb mlflow && "
             "runuser -u postgres -- createdb -O mlflow mlflow && rm -rf /var/lib/mlflow/artifacts/* && systemctl start mlflow-tracking")
    wait_for(lambda: healthy(host), 120, "the server on an empty database")
    assert run_names(tracking_uri) == set()

    restore = fab(inventory, "restore-tracking", "--from", str(downloaded))
    assert restore.returncode == 0, restore.stdout[-3000:]
    assert run_names(tracking_uri) == {"first", "second"}
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("backups").experiment_id], "attributes.run_name = 'first'")[0]
    assert client.download_artifacts(run.info.run_id, "notes.txt", str(tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "artifact of first"


def test_keep_prunes_old_backups(tracking):
    host, inventory, _ = tracking
    for _ in range(3):
        assert fab(inventory, "backup-tracking").returncode == 0
    assert host.run("ls /var/backups/mlflow/mlflow-backup-*.tar | wc -l").stdout.strip() == "3"


@pytest.mark.parametrize("kind", ["missing", "corrupt"])
def test_a_bad_backup_is_refused_before_the_database_is_touched(tracking, tmp_path, kind):
    host, inventory, tracking_uri = tracking
    before = run_names(tracking_uri)
    pid = host.run("systemctl show -p MainPID --value mlflow-tracking").stdout
    source = tmp_path / "backup.tar"
    if kind == "corrupt":
        host.run("cp $(ls /var/backups/mlflow/mlflow-backup-*.tar | head -1) /tmp/good.tar")
        good = host.run("base64 -w0 /tmp/good.tar").stdout
        import base64

        data = bytearray(base64.b64decode(good))
        data[len(data) // 2] ^= 0xFF  # one flipped byte inside the dump or the archive
        source.write_bytes(bytes(data))
    result = fab(inventory, "restore-tracking", "--from", str(source))
    assert result.returncode == 1
    assert ("no such backup" if kind == "missing" else "corrupt") in result.stdout
    assert "safety backup" not in result.stdout
    assert host.run("systemctl show -p MainPID --value mlflow-tracking").stdout == pid
    assert run_names(tracking_uri) == before
