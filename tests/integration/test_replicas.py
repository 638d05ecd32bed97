"""A team-scale tracking service on real hosts, TLS and sign-in on: PostgreSQL on a db host (mlt45), artifacts in a real
S3 server (rclone on mlt44), two tracking replicas (mlt46, mlt47) sharing both and one set of secrets, a balancer (mlt48)."""

from __future__ import annotations

import json
import os
import re
import tarfile
import threading
import time
from pathlib import Path

import pytest

from tests.integration.fabrun import fab, host_entry, recap, wait_for, write_inventory
from tests.integration.test_monitoring import query
from tests.integration.s3server import start_s3_server

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore:Unverified HTTPS request")]  # each replica's own self-signed certificate

PREFIX = "team"
# The service starts on OLD; the module's last test upgrades its replicas to NEW.
OLD, NEW = "3.16.1", "3.17.2"
LEARNED_CERTIFICATES = Path("~/.mlflow/certs").expanduser()
ON_THE_HOST = "https://127.0.0.1:5000"  # a replica's front door as the host itself sees it (its firewall admits loopback)


@pytest.fixture(scope="module")
def team(module_hosts, tmp_path_factory):
    s3_host, db, one, two, lb, models = module_hosts(
        "mlt44", "mlt45", "mlt46", "mlt47", "mlt48", "mlt13",
        prebaked={"mlt45": ("db",), "mlt46": ("replica",), "mlt47": ("replica",), "mlt48": ("lb",), "mlt13": ("models",)})
    s3 = start_s3_server(s3_host)
    directory = tmp_path_factory.mktemp("replicas")
    credentials = s3.credentials_file(directory / "s3.env")
    hosts = {"mlt45": host_entry(db, ["db"]), "mlt46": host_entry(one, ["tracking"]), "mlt47": host_entry(two, ["tracking"]),
             "mlt48": host_entry(lb, ["lb"]), "mlt13": host_entry(models, ["models"])}

    def inventory(monitor=None, **tracking):
        settings = {"workers": 1, "mlflow_version": OLD, "database": "host", "artifacts": f"s3://{s3.bucket}/{PREFIX}",
                    "s3_endpoint_url": s3.endpoint_url, "s3_credentials_file": str(credentials), **tracking}
        if monitor:
            hosts["mlt58"] = host_entry(monitor, ["monitor"])
        return write_inventory(directory / "hosts.toml", hosts, tracking=settings)

    result = fab(inventory(), "setup-tracking")
    assert result.returncode == 0, result.stdout[-5000:]
    assert f"tracking service: https://{lb.address}:5000 -> mlt46, mlt47" in result.stdout
    return s3, db, one, two, lb, inventory


def admin_password(host) -> str:
    return re.search(r'user = "admin:(.*)"', host.run("cat /etc/mlflow/admin.curl").stdout).group(1)


@pytest.fixture(scope="module")
def monitor(team, module_hosts):
    """A monitor host (mlt58) beside the service, set up with setup-monitoring; in hosts.toml from then on."""
    (host,) = module_hosts("mlt58")
    *_, inventory = team
    result = fab(inventory(monitor=host), "setup-monitoring")
    assert result.returncode == 0, result.stdout[-5000:]
    return host


def sidecar_env(replica) -> tuple[str, str]:
    """The env the tracking unit starts, and the one its metrics service runs."""
    unit_env = replica.run("grep -o '/opt/mlflow/envs/tracking-[0-9a-f]*' /etc/systemd/system/mlflow-tracking.service | head -1").stdout.strip()
    command = replica.run("tr '\\0' ' ' < /proc/$(systemctl show -p MainPID --value mlflow-tracking-metrics)/cmdline").stdout
    return unit_env, command.split()[0].removesuffix("/bin/python")


@pytest.fixture
def through_the_balancer(team, monkeypatch):
    """MLflow's client signed in as the admin, trusting the balancer's self-signed certificate; the service's URL."""
    *_, one, _, lb, _ = team
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin_password(one))
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(LEARNED_CERTIFICATES / f"{lb.address}_5000.pem"))
    return f"https://{lb.address}:5000"


def server_errors(*hosts) -> str:
    """What the replicas' servers logged as errors lately: the why of a failed request, in a failed assertion's message."""
    command = "journalctl -u mlflow-tracking --since '-10 min' --no-pager -o cat | grep -iE 'error|exception|traceback|fatal' | tail -n 15"
    return "\n".join(f"{host.name}: {line}" for host in hosts for line in host.run(command, check=False).stdout.splitlines())


def main_pid(host) -> str:
    return host.run("systemctl show -p MainPID --value mlflow-tracking").stdout.strip()


class TrackingLoad:
    """Reads (no retry: each must succeed) and MLflow client writes (the client retries a 5xx) through the balancer."""

    def __init__(self, url: str, run_id: str, readers: int = 3, writers: int = 2):
        import requests

        self.url, self.run_id = url, run_id
        self.stop = threading.Event()
        self.reads = self.failed_reads = self.writes = self.failed_writes = 0
        self.errors: list[str] = []
        self.failed_at: list[float] = []  # when each failed request ended (time.monotonic())
        self.lock = threading.Lock()
        self.auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"])
        self.verify = os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]
        self.requests = requests
        self.threads = [threading.Thread(target=self.read, daemon=True) for _ in range(readers)]
        self.threads += [threading.Thread(target=self.write, args=(index,), daemon=True) for index in range(writers)]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(120)

    def count(self, kind: str, error: str = "") -> None:
        with self.lock:
            setattr(self, kind, getattr(self, kind) + 1)
            if error:
                self.errors.append(error)
                self.failed_at.append(time.monotonic())

    def read(self) -> None:
        session = self.requests.Session()
        while not self.stop.is_set():
            try:
                answer = session.get(f"{self.url}/api/2.0/mlflow/runs/get", params={"run_id": self.run_id}, auth=self.auth,
                                     verify=self.verify, timeout=30)
                self.count("reads") if answer.status_code == 200 else self.count("failed_reads", f"read: HTTP {answer.status_code}")
            except self.requests.RequestException as error:
                self.count("failed_reads", f"read: {type(error).__name__}: {error}")

    def write(self, index: int) -> None:
        from mlflow import MlflowClient

        client = MlflowClient(self.url)
        step = 0
        while not self.stop.is_set():
            try:
                client.log_metric(self.run_id, f"load_{index}", float(step), step=step)
                self.count("writes")
            except Exception as error:  # noqa: BLE001 -- every failed client operation is counted and shown
                self.count("failed_writes", f"write: {type(error).__name__}: {error}")
            step += 1

    def wait_for_traffic(self, reads: int = 20, writes: int = 5) -> None:
        wait_for(lambda: self.reads >= reads and self.writes >= writes, 60, "reads and writes through the balancer")

    @property
    def failing_seconds(self) -> float:
        """From the first failed request to the last: how long requests failed (0 when none did)."""
        return self.failed_at[-1] - self.failed_at[0] if self.failed_at else 0.0

    def outcome(self) -> str:
        return (f"{self.reads} reads ({self.failed_reads} failed), {self.writes} writes ({self.failed_writes} failed), "
                f"failing for {self.failing_seconds:.1f} s: {self.errors[:5]}")


@pytest.fixture
def load_run(through_the_balancer):
    from mlflow import MlflowClient

    client = MlflowClient(through_the_balancer)
    experiment = client.get_experiment_by_name("load") or client.get_experiment(client.create_experiment("load"))
    return through_the_balancer, client.create_run(experiment.experiment_id).info.run_id


def test_replicas_share_one_set_of_secrets_and_keep_no_database_of_their_own(team):
    _, db, one, two, *_ = team
    digests = {host.run("sha256sum /etc/mlflow/tracking.env | cut -c1-64").stdout for host in (one, two)}
    assert len(digests) == 1
    for host in (one, two):
        assert host.run("stat -c '%U %G %a' /etc/mlflow/tracking.env").stdout.strip() == "root mlflow 640"
        assert "mlflow" not in host.run("runuser -u postgres -- psql -tAX -c 'select datname from pg_database' 2>/dev/null || true").stdout
    ps = one.run("ps -eo args").stdout
    assert "AWS_SECRET" not in ps and "PGPASSWORD" not in ps


def test_the_database_takes_tls_connections_from_the_replicas_only(team):
    s3, db, one, *_ = team
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


def test_a_run_logged_through_the_balancer_is_on_both_replicas_with_its_artifacts_in_the_bucket(team, through_the_balancer, tmp_path):
    from mlflow import MlflowClient

    s3, _, one, two, *_ = team
    client = MlflowClient(through_the_balancer)
    run = client.create_run(client.create_experiment("team-scale"))
    (tmp_path / "notes.txt").write_text("logged through the balancer\n")
    client.log_artifact(run.info.run_id, str(tmp_path / "notes.txt"))
    client.log_metric(run.info.run_id, "rmse", 0.7)
    client.set_terminated(run.info.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
    stored = s3.objects(f"{PREFIX}/")
    assert any(key.endswith(f"{run.info.run_id}/artifacts/notes.txt") for key in stored), stored
    assert not any(".mlflow-fab/" in key for key in stored), "the health probes left objects behind"

    for replica in (one, two):  # each replica answers only the balancers: asked from the host itself
        metrics = replica.run(f"curl -sfk -K /etc/mlflow/admin.curl '{ON_THE_HOST}/api/2.0/mlflow/runs/get?run_id={run.info.run_id}'")
        assert {"rmse": 0.7}.items() <= {m["key"]: m["value"] for m in json.loads(metrics.stdout)["run"]["data"]["metrics"]}.items()
        path = f"{run.info.artifact_uri.removeprefix('mlflow-artifacts:/')}/notes.txt"
        downloaded = replica.run(f"curl -sfk -K /etc/mlflow/admin.curl '{ON_THE_HOST}/api/2.0/mlflow-artifacts/artifacts/{path}'")
        assert downloaded.stdout == "logged through the balancer\n", (replica.name, downloaded.stdout, downloaded.stderr)


def test_a_replica_answers_only_the_balancers(team):
    import requests

    *_, one, two, lb, _ = team
    for replica in (one, two):
        with pytest.raises(requests.ConnectionError):
            requests.get(f"https://{replica.address}:5000/health", verify=False, timeout=10)
        assert lb.run(f"curl -sk -o /dev/null -w '%{{http_code}}' https://{replica.address}:5000/health").stdout == "200"
        assert replica.run("systemctl is-enabled mlflow-fab-firewall-tracking.service").stdout.strip() == "enabled"


def test_a_user_made_once_signs_in_on_every_replica(team, tmp_path):
    import requests

    *_, one, two, lb, inventory = team
    credentials = tmp_path / "credentials"
    result = fab(inventory(), "tracking-user", "--add", "alice", "--credentials", str(credentials))
    assert result.returncode == 0, result.stdout[-3000:]
    password = re.search(r"mlflow_tracking_password = (\S+)", credentials.read_text()).group(1)
    answer = requests.get(f"https://{lb.address}:5000/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                          auth=("alice", password), verify=str(LEARNED_CERTIFICATES / f"{lb.address}_5000.pem"))
    assert answer.status_code == 200, answer.status_code
    for replica in (one, two):
        status = replica.run(f"curl -sk -o /dev/null -w '%{{http_code}}' -u 'alice:{password}' '{ON_THE_HOST}/api/2.0/mlflow/experiments/search?max_results=1'")
        assert status.stdout == "200", (replica.name, status.stdout)


def test_a_second_run_changes_nothing(team):
    *_, inventory = team
    result = fab(inventory(), "setup-tracking")
    assert result.returncode == 0, result.stdout[-3000:]
    for host in ("mlt45", "mlt46", "mlt47", "mlt48"):
        assert recap(result, host)["changed"] == 0, result.stdout[-3000:]


def test_status_shows_every_replica_and_the_balancers_view_of_it(team):
    *_, inventory = team
    result = fab(inventory(), "status")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "mlt46: up" in result.stdout and "mlt47: up" in result.stdout
    assert result.stdout.count("shared (host)") == 2


def test_the_monitor_host_scrapes_each_replicas_own_metrics_through_both_walls(team, monitor, through_the_balancer):
    import requests
    from mlflow import MlflowClient

    *_, one, two, lb, _ = team
    for replica in (one, two):
        for url in (f"http://{replica.address}:9718/metrics", f"https://{replica.address}:5000/health"):
            with pytest.raises(requests.ConnectionError):
                requests.get(url, verify=False, timeout=10)
        assert sidecar_env(replica)[0] == sidecar_env(replica)[1]
    wait_for(lambda: {r["metric"]["host"] for r in query(monitor, 'up{job="tracking"} == 1')} == {"mlt46", "mlt47"}, 60,
             "both replicas' metrics scraped")

    def answered() -> float:
        """The replicas' 200s so far, as their metrics services serve them to the monitor host."""
        lines = [line for replica in (one, two) for line in monitor.run(f"curl -sf http://{replica.address}:9718/metrics").stdout.splitlines()
                 if line.startswith("mlflow_http_request_total{") and 'status="200"' in line]
        return sum(float(line.split()[-1]) for line in lines)

    before = answered()
    client = MlflowClient(through_the_balancer)
    for _ in range(20):
        client.search_experiments(max_results=1)
    after = answered()
    assert after - before >= 20, (before, after)
    scraped = wait_for(lambda: query(monitor, f'sum by (host) (mlflow_http_request_total{{job="tracking", status="200"}}) and on () '
                                              f'sum(mlflow_http_request_total{{job="tracking", status="200"}}) >= {after}'), 60,
                       "the replicas' answers in Prometheus")
    assert {r["metric"]["host"] for r in scraped} == {"mlt46", "mlt47"}, "both replicas answered the balancer"


def test_a_replica_killed_under_load_costs_no_read_and_no_client_write(team, load_run):
    _, _, one, *_ = team
    url, run_id = load_run
    with TrackingLoad(url, run_id) as load:
        load.wait_for_traffic()
        killed = main_pid(one)
        one.run(f"kill -9 {killed}")
        wait_for(lambda: main_pid(one) not in ("0", killed) and
                 one.run("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:5050/health", check=False).stdout == "200",
                 120, "systemd to bring the killed server back")
        served = load.reads
        load.wait_for_traffic(reads=served + 20, writes=load.writes + 5)
    print("kill -9 under load:", load.outcome())
    assert load.failed_reads == 0 and load.failed_writes == 0, load.outcome()


def test_a_changed_setting_restarts_the_replicas_one_at_a_time_with_no_failed_request(team, load_run):
    *_, one, two, lb, inventory = team
    url, run_id = load_run
    before = {host.name: main_pid(host) for host in (one, two)}
    with TrackingLoad(url, run_id) as load:
        load.wait_for_traffic()
        result = fab(inventory(workers=2), "setup-tracking")
        load.wait_for_traffic(reads=load.reads + 20, writes=load.writes + 5)
    assert result.returncode == 0, result.stdout[-4000:]
    print("workers changed under load:", load.outcome())
    assert load.failed_reads == 0 and load.failed_writes == 0, load.outcome()
    assert all(main_pid(host) != before[host.name] for host in (one, two)), "both replicas run the new setting"
    for name in ("mlt46", "mlt47"):
        assert f"balancer mlt48: drain {name} before its server restarts" in result.stdout
        assert f"balancer mlt48: {name} back behind the balancers" in result.stdout
    assert " down;" not in lb.run("cat /etc/nginx/conf.d/mlflow-tracking.conf").stdout


def test_wrong_s3_keys_stop_before_any_server_restarts_and_change_no_secrets_file(team, tmp_path):
    s3, _, one, two, _, inventory = team
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
    _, db, one, two, _, inventory = team
    url = tmp_path / "db.url"
    url.write_text(f"postgresql://mlflow:not-the-password@{db.address}:5433/mlflow\n")
    url.chmod(0o600)
    def state(host):
        return main_pid(host), host.run("sha256sum /etc/mlflow/tracking.env /etc/mlflow/basic_auth.ini").stdout

    before = {host.name: state(host) for host in (one, two)}
    hosts_toml = inventory(database="external", database_url_file=str(url))
    hosts_toml.write_text(hosts_toml.read_text().replace('roles = ["db"]', "roles = []"))
    result = fab(hosts_toml, "setup-tracking")
    assert result.returncode == 1
    assert f"the database {db.address}:5433 does not answer as mlflow" in result.stdout, result.stdout[-3000:]
    assert "not-the-password" not in result.stdout
    assert {host.name: state(host) for host in (one, two)} == before, "a server restarted, or its secrets or auth config changed"


def test_secrets_files_on_this_machine_must_be_private(team, tmp_path):
    s3, *_, inventory = team
    loose = s3.credentials_file(tmp_path / "loose.env")
    os.chmod(loose, 0o644)
    result = fab(inventory(s3_credentials_file=str(loose)), "setup-tracking")
    assert result.returncode == 2
    assert f"s3_credentials_file {loose}: other users of this machine may read it: chmod 600 {loose}" in result.stdout + result.stderr


def test_a_model_logged_through_the_balancer_is_in_the_bucket_and_deploys_from_the_service(team, through_the_balancer):
    from tests.wine import log_wine_model

    s3, *_, inventory = team
    run_id = log_wine_model(through_the_balancer)
    assert any(key.endswith("/artifacts/MLmodel") for key in s3.objects(f"{PREFIX}/")), "the model is not in the bucket"
    assert fab(inventory(), "setup-lb").returncode == 0
    signed_in = {key: os.environ[key] for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    result = fab(inventory(), "deploy-model", "--run-id", run_id, env=signed_in)
    assert result.returncode == 0, result.stdout[-4000:]
    assert recap(result, "mlt13")["failed"] == 0
    predicted = fab(inventory(), "predict", "--each")
    assert predicted.returncode == 0 and "mlt13" in predicted.stdout, predicted.stdout[-2000:]


def test_a_backup_dumps_the_shared_database_once_and_lists_the_artifacts_in_the_bucket(team, tmp_path):
    s3, *_, inventory = team
    result = fab(inventory(), "backup-tracking", "--download", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:]
    (downloaded,) = tmp_path.glob("*-mlflow-backup-*.tar")
    with tarfile.open(downloaded) as archive:
        assert set(archive.getnames()) == {"manifest.json", "SHA256SUMS", "mlflow.dump", "artifacts.tsv"}
        listing = archive.extractfile("artifacts.tsv").read().decode()
    listed = {key: int(size) for key, size, _ in (line.split("\t") for line in listing.splitlines())}
    assert listed == s3.objects(f"{PREFIX}/") and any(key.endswith("/artifacts/notes.txt") for key in listed), listing


def test_a_restore_says_which_artifacts_are_missing_then_brings_back_the_runs_of_the_backup(team, through_the_balancer, tmp_path):
    import requests
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    s3, _, one, two, _, inventory = team
    client = MlflowClient(through_the_balancer)
    experiment = client.create_experiment("restore")
    kept = client.create_run(experiment)
    (tmp_path / "kept.txt").write_text("in the backup\n")
    client.log_artifact(kept.info.run_id, str(tmp_path / "kept.txt"))
    client.log_metric(kept.info.run_id, "rmse", 0.5)
    assert fab(inventory(), "backup-tracking", "--download", str(tmp_path)).returncode == 0
    (backup,) = tmp_path.glob("*-mlflow-backup-*.tar")
    later = client.create_run(experiment)
    key = next(key for key in s3.objects(f"{PREFIX}/") if key.endswith(f"{kept.info.run_id}/artifacts/kept.txt"))
    # removed through the service's artifact proxy, as a user of the service would
    proxied = f"{through_the_balancer}/api/2.0/mlflow-artifacts/artifacts/{key.removeprefix(f'{PREFIX}/')}"
    signed_in = dict(auth=(os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]),
                     verify=os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"], timeout=30)
    assert requests.delete(proxied, **signed_in).status_code == 200
    pids = {host.name: main_pid(host) for host in (one, two)}

    refused = fab(inventory(), "restore-tracking", "--from", str(backup))
    assert refused.returncode != 0 and f"missing: s3://{s3.bucket}/{key}" in refused.stdout, refused.stdout[-3000:]
    assert "1 missing" in refused.stdout and "--accept-missing-artifacts" in refused.stdout
    assert {host.name: main_pid(host) for host in (one, two)} == pids, "a refused restore stopped a replica"
    assert client.get_run(later.info.run_id).info.run_id == later.info.run_id

    assert requests.put(proxied, data=b"in the backup\n", **signed_in).status_code == 200  # the same bytes: the same ETag
    restored = fab(inventory(), "restore-tracking", "--from", str(backup))
    assert restored.returncode == 0, restored.stdout[-5000:]
    assert "0 missing, 0 changed" in restored.stdout and "safety backup of the current state:" in restored.stdout
    assert client.get_run(kept.info.run_id).data.metrics["rmse"] == 0.5
    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST|not found"):
        client.get_run(later.info.run_id)
    for host in (one, two):
        assert host.run("systemctl is-active mlflow-tracking").stdout.strip() == "active"
    assert one.run("test -e /var/backups/mlflow/.restore-shared", check=False).returncode != 0, "the staged backup was left"


def test_an_upgrade_migrates_once_and_rolls_the_replicas_under_load_keeping_every_run(team, load_run, monitor):
    from mlflow import MlflowClient

    *_, one, two, lb, inventory = team
    url, run_id = load_run
    client = MlflowClient(url)
    kept = client.create_run(client.get_run(run_id).info.experiment_id, run_name="before-upgrade")
    client.log_metric(kept.info.run_id, "accuracy", 0.93)
    with TrackingLoad(url, run_id) as load:
        load.wait_for_traffic()
        result = fab(inventory(), "upgrade-tracking", "--mlflow-version", NEW)
        load.wait_for_traffic(reads=load.reads + 20, writes=load.writes + 5)
    print("upgrade under load:", load.outcome())
    assert result.returncode == 0, result.stdout[-5000:]
    assert result.stdout.count("schema before:") == 1 and "backup" in result.stdout
    assert re.search(r"balancer mlt48: mlt4[67] back behind the balancers, mlt4[67] drained", result.stdout), "no swap"
    for host in (one, two):
        assert host.run("curl -s -K /etc/mlflow/admin.curl http://127.0.0.1:5050/version").stdout.strip() == NEW
        assert host.run("ls /opt/mlflow/envs | grep -c tracking-").stdout.strip() == "1"
        unit_env, sidecar = sidecar_env(host)
        assert sidecar == unit_env, "the metrics service restarted with the server, in the new env"
    assert client.get_run(kept.info.run_id).data.metrics["accuracy"] == 0.93
    # what the issue asks of an upgrade: how long requests fail, if at all; MLflow's client rides it out (it retries 5xx).
    # After the migration an old server's worker that makes its store then answers every request 500 ("out-of-date
    # database schema"). One replica comes here drained (the wrong-keys and unreachable-database tests leave the one of
    # the last turn so) and restarted by the restore, one of its workers with no store yet: it stays drained until its
    # own switch, which comes first; the other serves on the old MLflow only until it is back (README).
    assert load.failed_writes == 0 and load.failing_seconds <= 15, load.outcome() + "\n" + server_errors(one, two)
    if load.failed_reads:
        print("reads that failed during the upgrade:", load.outcome(), server_errors(one, two), sep="\n")
    assert " down;" not in lb.run("cat /etc/nginx/conf.d/mlflow-tracking.conf").stdout
