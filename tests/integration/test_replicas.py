"""A team-scale tracking service on real hosts: PostgreSQL on a db host (mlt45), artifacts in a real S3 server (rclone on
mlt44), two tracking replicas (mlt46, mlt47) sharing both and one set of secrets."""

from __future__ import annotations

import os
import re

import pytest

from tests.integration.fabrun import fab, host_entry, recap, write_inventory
from tests.integration.s3server import start_s3_server

pytestmark = pytest.mark.integration

PREFIX = "team"


@pytest.fixture(scope="module")
def team(module_hosts, tmp_path_factory):
    s3_host, db, one, two = module_hosts("mlt44", "mlt45", "mlt46", "mlt47",
                                         prebaked={"mlt45": ("db",), "mlt46": ("replica",), "mlt47": ("replica",)})
    s3 = start_s3_server(s3_host)
    directory = tmp_path_factory.mktemp("replicas")
    credentials = s3.credentials_file(directory / "s3.env")
    hosts = {"mlt45": host_entry(db, ["db"]), "mlt46": host_entry(one, ["tracking"]), "mlt47": host_entry(two, ["tracking"])}

    def inventory(**tracking):
        settings = {"tls": False, "workers": 1, "database": "host", "artifacts": f"s3://{s3.bucket}/{PREFIX}",
                    "s3_endpoint_url": s3.endpoint_url, "s3_credentials_file": str(credentials), **tracking}
        return write_inventory(directory / "hosts.toml", hosts, tracking=settings)

    result = fab(inventory(), "setup-tracking")
    assert result.returncode == 0, result.stdout[-5000:]
    return s3, db, one, two, inventory


def admin_env(host) -> dict[str, str]:
    password = re.search(r'user = "admin:(.*)"', host.run("cat /etc/mlflow/admin.curl").stdout).group(1)
    return {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}


def main_pid(host) -> str:
    return host.run("systemctl show -p MainPID --value mlflow-tracking").stdout.strip()


def test_replicas_share_one_set_of_secrets_and_keep_no_database_of_their_own(team):
    _, db, one, two, _ = team
    digests = {host.run("sha256sum /etc/mlflow/tracking.env | cut -c1-64").stdout for host in (one, two)}
    assert len(digests) == 1
    for host in (one, two):
        assert host.run("stat -c '%U %G %a' /etc/mlflow/tracking.env").stdout.strip() == "root mlflow 640"
        assert host.run("systemctl is-active postgresql", check=False).stdout.strip() != "active" or \
            host.run("runuser -u postgres -- psql -tAX -c \"select 1 from pg_database where datname='mlflow'\"", check=False).stdout.strip() == ""
    ps = one.run("ps -eo args").stdout
    assert "AWS_SECRET" not in ps and "PGPASSWORD" not in ps


def test_the_database_takes_tls_connections_from_the_replicas_only(team):
    s3, db, one, _, _ = team
    assert db.run("runuser -u postgres -- psql -tAX -c 'show ssl'").stdout.strip() == "on"
    hba = db.run("cat /etc/postgresql/mlflow-fab/pg_hba.conf").stdout
    assert f"hostssl  mlflow  mlflow  {one.address}/32  scram-sha-256" in hba
    uri = f"host={db.address} dbname=mlflow user=mlflow sslmode=require connect_timeout=5"
    # a replica signs in over TLS with the shared password; any other host is turned away by pg_hba, password or not
    assert one.run(f"PGPASSWORD=$(sed -n 's/^PGPASSWORD=//p' /etc/mlflow/tracking.env) "
                   f"psql '{uri}' -tAX -c 'select ssl from pg_stat_ssl where pid = pg_backend_pid()'").stdout.strip() == "t"
    s3.host.run("command -v psql || DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-client >/dev/null", timeout=300)
    refused = s3.host.run(f"PGPASSWORD=wrong psql '{uri}' -c 'select 1'", check=False)
    assert refused.returncode != 0 and "no pg_hba.conf entry" in refused.stderr, refused.stderr


def test_a_run_logged_on_one_replica_is_read_and_downloaded_on_the_other_with_its_artifacts_in_the_bucket(team, tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    s3, _, one, two, _ = team
    for key, value in admin_env(one).items():
        monkeypatch.setenv(key, value)
    client_one, client_two = MlflowClient(f"http://{one.address}:5000"), MlflowClient(f"http://{two.address}:5000")
    experiment = client_one.create_experiment("team-scale")
    run = client_one.create_run(experiment)
    (tmp_path / "notes.txt").write_text("logged through replica one\n")
    client_one.log_artifact(run.info.run_id, str(tmp_path / "notes.txt"))
    client_one.log_metric(run.info.run_id, "rmse", 0.7)
    client_one.set_terminated(run.info.run_id)

    seen = client_two.get_run(run.info.run_id)
    assert seen.data.metrics["rmse"] == 0.7
    assert seen.info.artifact_uri.startswith("mlflow-artifacts:/"), seen.info.artifact_uri
    mlflow.set_tracking_uri(f"http://{two.address}:5000")
    downloaded = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="notes.txt", dst_path=str(tmp_path / "out"))
    assert open(downloaded).read() == "logged through replica one\n"
    stored = s3.objects(f"{PREFIX}/")
    assert any(key.endswith(f"{run.info.run_id}/artifacts/notes.txt") for key in stored), stored
    assert not any(".mlflow-fab/" in key for key in stored), "the health probes left objects behind"


def test_a_second_run_changes_nothing(team):
    *_, inventory = team
    result = fab(inventory(), "setup-tracking")
    assert result.returncode == 0, result.stdout[-3000:]
    for host in ("mlt45", "mlt46", "mlt47"):
        assert recap(result, host)["changed"] == 0, result.stdout[-3000:]


def test_wrong_s3_keys_stop_before_any_server_restarts_and_change_no_secrets_file(team, tmp_path):
    s3, _, one, two, inventory = team
    wrong = tmp_path / "wrong.env"
    wrong.write_text(f"AWS_ACCESS_KEY_ID={s3.access_key}\nAWS_SECRET_ACCESS_KEY={'0' * 40}\n")
    wrong.chmod(0o600)
    before = {host.name: (main_pid(host), host.run("sha256sum /etc/mlflow/tracking.env").stdout) for host in (one, two)}
    result = fab(inventory(s3_credentials_file=str(wrong)), "setup-tracking")
    assert result.returncode == 1
    assert "SignatureDoesNotMatch" in result.stdout and "the secret key is wrong: check s3_credentials_file" in result.stdout
    assert "0" * 40 not in result.stdout
    after = {host.name: (main_pid(host), host.run("sha256sum /etc/mlflow/tracking.env").stdout) for host in (one, two)}
    assert after == before


def test_an_unreachable_database_stops_before_any_server_restarts(team, tmp_path):
    _, db, one, two, inventory = team
    url = tmp_path / "db.url"
    url.write_text(f"postgresql://mlflow:not-the-password@{db.address}:5433/mlflow\n")
    url.chmod(0o600)
    before = {host.name: main_pid(host) for host in (one, two)}
    hosts_toml = inventory(database="external", database_url_file=str(url))
    text = hosts_toml.read_text().replace('roles = ["db"]', "roles = []")
    hosts_toml.write_text(text)
    result = fab(hosts_toml, "setup-tracking")
    assert result.returncode == 1
    assert f"the database {db.address}:5433 does not answer as mlflow" in result.stdout, result.stdout[-3000:]
    assert "not-the-password" not in result.stdout
    assert {host.name: main_pid(host) for host in (one, two)} == before


def test_secrets_files_on_this_machine_must_be_private(team, tmp_path):
    s3, *_, inventory = team
    loose = s3.credentials_file(tmp_path / "loose.env")
    os.chmod(loose, 0o644)
    result = fab(inventory(s3_credentials_file=str(loose)), "setup-tracking")
    assert result.returncode == 2
    assert f"s3_credentials_file {loose}: other users of this machine may read it: chmod 600 {loose}" in result.stdout + result.stderr
