"""The secure default (TLS and sign-in) at the oldest MLflow we support, on real hosts (mlt6 tracking, mlt7 models).

An older version is refused before any change; a setup-tracking cut off after it wrote tracking.env is repaired by the
next run; the upgrade from the oldest version to the default keeps users and runs; a model logged without an input
example deploys with a /ping-only gate. Tests run in file order on the same two hosts; the laptop's home is a
temporary directory.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess

import pytest

from tasks.values import OLDEST_MLFLOW
from tests.integration.fabrun import FAB, REPO, fab, host_entry, recap, wait_for, write_inventory
from tests.integration.test_front_door import request

pytestmark = pytest.mark.integration

DEFAULT = "3.17.2"
API = "/api/2.0/mlflow/experiments/search?max_results=1"
ADMIN_API = f"curl -s -o /dev/null -w '%{{http_code}}' -K /etc/mlflow/admin.curl http://127.0.0.1:5050{API}"


@pytest.fixture(scope="module")
def hosts(module_hosts, tmp_path_factory):
    tracking, models = module_hosts("mlt6", "mlt7", prebaked={"mlt6": ("tracking",), "mlt7": ("models",)})
    root = tmp_path_factory.mktemp("versions")
    home = root / "home"
    home.mkdir()

    def inventory(version: str):
        entries = {"mlt6": host_entry(tracking, ["tracking"]), "mlt7": host_entry(models, ["models"])}
        return write_inventory(root / "hosts.toml", entries, tracking={"workers": 1, "mlflow_version": version})

    def run(version: str, *args: str):
        return fab(inventory(version), *args, env={"HOME": str(home)})

    return tracking, models, inventory, run, home


def signed_in(tracking, home, user: str, password: str) -> int:
    return request(f"https://{tracking.address}:5000{API}", cafile=home / ".mlflow" / "certs" / f"{tracking.address}_5000.pem",
                   user=user, password=password)[0]


def credentials(home) -> tuple[str, str]:
    values = dict(line.split(" = ", 1) for line in (home / ".mlflow" / "credentials").read_text().splitlines() if " = " in line)
    return values["mlflow_tracking_username"], values["mlflow_tracking_password"]


def test_a_version_older_than_the_oldest_that_works_is_refused_before_any_change(hosts):
    tracking, _, inventory, run, _ = hosts
    result = run("3.10.1", "setup-tracking")
    assert result.returncode == 2
    assert f"mlflow_version must be {OLDEST_MLFLOW} or newer" in result.stderr + result.stdout
    upgrade = run(DEFAULT, "upgrade-tracking", "--mlflow-version", "3.16.0")
    assert upgrade.returncode == 2 and f"--mlflow-version must be {OLDEST_MLFLOW} or newer" in upgrade.stderr + upgrade.stdout
    assert tracking.run("test -e /etc/mlflow", check=False).returncode == 1, "the refused run changed the host"


def test_the_secure_default_runs_on_the_oldest_version(hosts):
    tracking, _, _, run, home = hosts
    result = run(OLDEST_MLFLOW, "setup-tracking")
    assert result.returncode == 0, result.stdout[-4000:]
    assert tracking.run("curl -s -K /etc/mlflow/admin.curl http://127.0.0.1:5050/version").stdout.strip() == OLDEST_MLFLOW
    added = run(OLDEST_MLFLOW, "tracking-user", "--add", "alice")
    assert added.returncode == 0, added.stdout[-2000:]
    user, password = credentials(home)
    assert signed_in(tracking, home, user, password) == 200
    assert signed_in(tracking, home, user, "wrong") == 401
    assert tracking.run("journalctl -u mlflow-tracking --no-pager -o cat | grep -c KeyError", check=False).stdout.strip() == "0"


def psql(tracking, sql: str) -> str:
    return tracking.run(f"cd / && runuser -u postgres -- psql -tAX -c {shlex.quote(sql)}").stdout.strip()


def test_a_setup_killed_after_it_wrote_tracking_env_is_repaired_by_the_next_run(hosts):
    """tracking.env lost, setup-tracking writes a new one and is killed (-9) while it sets the role's password."""
    tracking, _, inventory, _, home = hosts
    tracking.run("rm /etc/mlflow/tracking.env")
    # a transaction holding role mlflow's row: the run's ALTER ROLE waits behind it
    blocker = "BEGIN; ALTER ROLE mlflow CONNECTION LIMIT -1; SELECT pg_sleep(900)"
    tracking.run(f"cd /; nohup setsid runuser -u postgres -- psql -c {shlex.quote(blocker)} >/dev/null 2>&1 </dev/null &")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
           "FABRIC_INVENTORY": str(inventory(OLDEST_MLFLOW)), "HOME": str(home), "COLUMNS": "200"}
    interrupted = subprocess.Popen([str(FAB), "setup-tracking"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: tracking.run("test -s /etc/mlflow/tracking.env", check=False).returncode == 0
                 and psql(tracking, "select count(*) from pg_stat_activity where wait_event_type = 'Lock'") == "1",
                 300, "the run to write tracking.env and wait on the role")
    finally:
        interrupted.kill()
        print(interrupted.communicate(timeout=60)[0])
    psql(tracking, "select pg_terminate_backend(pid) from pg_stat_activity where wait_event_type = 'Lock'")
    psql(tracking, "select pg_terminate_backend(pid) from pg_stat_activity where query like '%pg_sleep(900)%' and pid <> pg_backend_pid()")

    again = fab(inventory(OLDEST_MLFLOW), "setup-tracking", env={"HOME": str(home)})
    assert again.returncode == 0, again.stdout[-4000:]
    assert "changed mlt6 database role mlflow" in " ".join(again.stdout.split())
    # the server must start from what is on disk now, not only keep running on what it had
    tracking.run("systemctl restart mlflow-tracking")
    wait_for(lambda: tracking.run(ADMIN_API, check=False).stdout == "200", 300, "the restarted server to accept the admin")
    user, password = credentials(home)
    assert signed_in(tracking, home, user, password) == 200


def test_an_upgrade_from_the_oldest_version_keeps_users_and_runs(hosts, monkeypatch):
    from mlflow import MlflowClient

    tracking, _, _, run, home = hosts
    user, password = credentials(home)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(home / ".mlflow" / "certs" / f"{tracking.address}_5000.pem"))
    client = MlflowClient(f"https://{tracking.address}:5000")
    experiment = client.create_experiment("before-upgrade")
    run_id = client.create_run(experiment).info.run_id
    client.log_metric(run_id, "accuracy", 0.93)

    upgraded = run(DEFAULT, "upgrade-tracking")
    assert upgraded.returncode == 0, upgraded.stdout[-4000:]
    assert tracking.run("curl -s -K /etc/mlflow/admin.curl http://127.0.0.1:5050/version").stdout.strip() == DEFAULT
    assert client.get_run(run_id).data.metrics == {"accuracy": 0.93}
    assert signed_in(tracking, home, user, "wrong") == 401
    again = run(DEFAULT, "setup-tracking")
    assert again.returncode == 0 and recap(again, "mlt6")["changed"] == 0, again.stdout[-3000:]


def test_a_model_logged_without_an_input_example_is_gated_on_ping_alone(hosts, monkeypatch):
    import mlflow
    import pandas as pd
    from sklearn.linear_model import ElasticNet

    from tests.wine import DATA, pinned_requirements

    tracking, models, _, run, home = hosts
    user, password = credentials(home)
    for key, value in {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password,
                       "MLFLOW_TRACKING_SERVER_CERT_PATH": str(home / ".mlflow" / "certs" / f"{tracking.address}_5000.pem")}.items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(f"https://{tracking.address}:5000")
    mlflow.set_experiment("no-input-example")
    data = pd.read_csv(DATA)
    model = ElasticNet(random_state=42).fit(data.drop(columns="quality"), data["quality"])
    with mlflow.start_run() as logged:
        mlflow.sklearn.log_model(model, name="model", pip_requirements=pinned_requirements())

    result = run(DEFAULT, "deploy-model", "--run-id", logged.info.run_id)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "the gate only checks /ping" in result.stdout
    assert re.search(r"mlt7 +│ updated", result.stdout)
    assert models.run("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:5001/ping").stdout == "200"
    assert models.run("test -e /opt/mlflow/models/model/current/sample.json", check=False).returncode == 1
