"""migrate-tracking on real hosts: a one-host server (mlt38, its own PostgreSQL and artifacts on disk) moved into a
service of replicas (db host mlt39, replica demo2, artifacts in a real S3 server on demo3)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.integration.fabrun import PLAIN_HTTP, fab, host_entry, write_inventory
from tests.integration.s3server import start_s3_server
from tests.wine import log_wine_model

pytestmark = pytest.mark.integration


def digests(directory: Path) -> dict[str, str]:
    return {path.relative_to(directory).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def move(module_hosts, tmp_path_factory):
    import mlflow

    old, db, replica, s3_host = module_hosts("mlt38", "mlt39", "demo2", "demo3",
                                             prebaked={"mlt38": ("tracking",), "mlt39": ("db",), "demo2": ("replica",)})
    s3 = start_s3_server(s3_host)
    directory = tmp_path_factory.mktemp("migrate")
    one_host = write_inventory(directory / "one-host.toml", {"mlt38": host_entry(old, ["tracking"])}, tracking={**PLAIN_HTTP, "workers": 1})
    assert fab(one_host, "setup-tracking").returncode == 0
    run_id = log_wine_model(f"http://{old.address}:5000")
    before = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="", dst_path=str(directory / "before")))
    service = write_inventory(directory / "hosts.toml", {
        "mlt38": host_entry(old, []), "mlt39": host_entry(db, ["db"]), "demo2": host_entry(replica, ["tracking"])}, tracking={
        **PLAIN_HTTP, "workers": 1, "database": "host", "artifacts": f"s3://{s3.bucket}/moved", "s3_endpoint_url": s3.endpoint_url,
        "s3_credentials_file": str(s3.credentials_file(directory / "s3.env"))})
    result = fab(service, "setup-tracking")
    assert result.returncode == 0, result.stdout[-4000:]
    return old, replica, s3, service, run_id, digests(before), directory


def test_a_check_changes_nothing(move):
    old, _, _, service, *_ = move
    result = fab(service, "migrate-tracking", "--from", "mlt38", "--check")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "no run yet" in result.stdout and "(runs, experiments, registered models)" in result.stdout
    assert old.run("systemctl is-active mlflow-tracking").stdout.strip() == "active"


def test_the_runs_and_artifacts_move_and_the_old_server_is_retired(move):
    import mlflow

    old, replica, s3, service, run_id, before, directory = move
    result = fab(service, "migrate-tracking", "--from", "mlt38")
    assert result.returncode == 0, result.stdout[-5000:]
    assert "each checked (size and MD5)" in result.stdout and "as on the server" in result.stdout
    mlflow.set_tracking_uri(f"http://{replica.address}:5000")
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/") and "rmse" in run.data.metrics
    after = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="", dst_path=str(directory / "after")))
    assert digests(after) == before, "an artifact changed or went missing on the way"
    moved = old.run("find /var/lib/mlflow/artifacts -type f | wc -l").stdout.strip()
    assert len([key for key in s3.objects("moved/") if ".mlflow-fab/" not in key]) == int(moved)
    assert old.run("systemctl is-active mlflow-tracking", check=False).stdout.strip() == "inactive"
    assert old.run("systemctl is-enabled mlflow-tracking", check=False).stdout.strip() == "disabled"


def test_a_service_that_holds_runs_is_refused(move):
    old, _, _, service, *_ = move
    result = fab(service, "migrate-tracking", "--from", "mlt38")
    assert result.returncode == 1
    assert "already holds 1 runs: migrate-tracking moves a server into a service that has none" in result.stdout
