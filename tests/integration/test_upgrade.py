"""upgrade-tracking on a real host (mlt11): 3.16.1 -> 3.17.2 with runs in it, and an upgrade that can't install."""

from __future__ import annotations

import tarfile

import pytest

from tests.integration.fabrun import PLAIN_HTTP, fab, host_entry, write_inventory

pytestmark = pytest.mark.integration

OLD, NEW = "3.16.1", "3.17.2"


@pytest.fixture(scope="module")
def tracking(module_hosts, tmp_path_factory):
    (host,) = module_hosts("mlt11", prebaked={"mlt11": ("tracking",)})
    path = tmp_path_factory.mktemp("upgrade") / "hosts.toml"

    def inventory(version):
        return write_inventory(path, {"mlt11": host_entry(host, ["tracking"])}, tracking={"workers": 1, **PLAIN_HTTP, "mlflow_version": version})

    result = fab(inventory(OLD), "setup-tracking")
    assert result.returncode == 0, result.stdout[-3000:]
    return host, inventory, f"http://{host.address}:5000"


def server_version(host) -> str:
    return host.run("curl -s http://127.0.0.1:5000/version").stdout.strip()


def main_pid(host) -> str:
    return host.run("systemctl show -p MainPID --value mlflow-tracking").stdout.strip()


def test_an_upgrade_that_cannot_install_leaves_the_old_server_running(tracking):
    host, inventory, _ = tracking
    pid = main_pid(host)
    result = fab(inventory(OLD), "upgrade-tracking", "--mlflow-version", "3.18.0")
    assert result.returncode == 1
    assert "No matching distribution found for mlflow-skinny==3.18.0" in result.stdout
    assert f"the server still runs mlflow {OLD}" in result.stdout
    assert server_version(host) == OLD and main_pid(host) == pid
    assert host.run("ls /opt/mlflow/envs | grep -c tracking-").stdout.strip() == "1", "the failed build left its env behind"


def test_upgrade_keeps_the_runs_and_the_server_healthy(tracking, tmp_path):
    from mlflow import MlflowClient

    host, inventory, tracking_uri = tracking
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("before-upgrade")
    run = client.create_run(experiment, run_name="survivor")
    client.log_metric(run.info.run_id, "accuracy", 0.93)
    client.set_terminated(run.info.run_id)

    result = fab(inventory(NEW), "upgrade-tracking", "--download", str(tmp_path))
    assert result.returncode == 0, result.stdout[-4000:]
    assert "schema before:" in result.stdout and "backup" in result.stdout
    (downloaded,) = tmp_path.glob("mlt11-mlflow-backup-*.tar")
    with tarfile.open(downloaded) as archive:
        assert {"manifest.json", "SHA256SUMS", "mlflow.dump", "artifacts.tar.gz"} <= set(archive.getnames())
    assert server_version(host) == NEW
    kept = client.get_run(run.info.run_id)
    assert kept.info.run_name == "survivor" and kept.data.metrics["accuracy"] == 0.93
    assert host.run("ls /opt/mlflow/envs | grep -c tracking-").stdout.strip() == "1"
    again = fab(inventory(NEW), "setup-tracking")
    assert again.returncode == 0 and "mlt11 ok=" in again.stdout and "changed=0" in again.stdout


def test_setup_tracking_refuses_to_change_the_version_behind_upgrade_tracking(tracking):
    host, inventory, _ = tracking
    result = fab(inventory(OLD), "setup-tracking")
    assert result.returncode == 1
    assert f"the server runs mlflow {NEW} and hosts.toml says {OLD}: nothing was changed" in result.stdout
    assert server_version(host) == NEW
