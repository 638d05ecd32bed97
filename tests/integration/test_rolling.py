"""Rolling deploys behind nginx: one lb host (mlt19), three model hosts (mlt26-28), a tracking host (mlt29).

Tests run in file order and share the hosts; the last one powers a host off.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import shutil

import pytest

from tests.integration.fabrun import FAB, PLAIN_HTTP, PLAIN_LB, REPO, fab, fab_at_once, host_entry, recap, wait_for, write_inventory
from tests.integration.load import LoadGenerator
from tests.wine import log_wine_model

pytestmark = pytest.mark.integration

MODEL_HOSTS = ("mlt26", "mlt27", "mlt28")
MODEL_DIR = "/opt/mlflow/models/model"
LOCK = "/run/lock/mlflow-fab/model-model.lock"
ROW = {"dataframe_split": {
    "columns": ["fixed acidity", "volatile acidity", "citric acid", "residual sugar", "chlorides", "free sulfur dioxide",
                "total sulfur dioxide", "density", "pH", "sulphates", "alcohol"],
    "data": [[7, 0.27, 0.36, 20.7, 0.045, 45, 170, 1.001, 3, 0.45, 8.8]]}}


@pytest.fixture(scope="module")
def fleet(module_hosts, tmp_path_factory):
    names = ("mlt29", "mlt19", *MODEL_HOSTS)
    roles = {"mlt29": ("tracking",), "mlt19": ("lb",)} | {name: ("models",) for name in MODEL_HOSTS}
    hosts = dict(zip(names, module_hosts(*names, prebaked=roles)))
    entries = {"mlt29": host_entry(hosts["mlt29"], ["tracking"]), "mlt19": host_entry(hosts["mlt19"], ["lb"])}
    entries |= {name: host_entry(hosts[name], ["models"]) for name in MODEL_HOSTS}
    inventory = write_inventory(tmp_path_factory.mktemp("rolling") / "hosts.toml", entries, tracking={"workers": 1, **PLAIN_HTTP}, lb=PLAIN_LB)
    assert all(result.returncode == 0 for result in fab_at_once(inventory, ("setup-tracking",), ("setup-lb",)))
    tracking_uri = f"http://{hosts['mlt29'].address}:5000"
    first = fab(inventory, "deploy-model", "--run-id", log_wine_model(tracking_uri, alpha=0.5), "--batch-size", "100%")
    assert first.returncode == 0, first.stdout[-4000:]
    return hosts, inventory, tracking_uri


def current(host) -> str:
    return host.run(f"basename $(readlink {MODEL_DIR}/current)", check=False).stdout.strip()


def predict_through_lb(client, lb: str = "mlt19") -> list[float]:
    result = client.run(f"curl -s -X POST -H 'Content-Type: application/json' --data-binary @- http://{lb}:5001/invocations",
                        input=json.dumps(ROW))
    return json.loads(result.stdout)["predictions"]


def nginx_config(hosts, lb: str = "mlt19") -> str:
    return hosts[lb].run("cat /etc/nginx/conf.d/mlflow-model-model.conf").stdout


def test_setup_lb_balances_every_model_host_and_is_idempotent(fleet):
    hosts, inventory, _ = fleet
    config = nginx_config(hosts)
    assert all(f"server {hosts[name].address}:5001" in config for name in MODEL_HOSTS) and " down;" not in config
    assert hosts["mlt19"].run("nginx -t", check=False).returncode == 0
    again = fab(inventory, "setup-lb")
    assert recap(again, "mlt19")["changed"] == 0
    assert len(predict_through_lb(hosts["mlt29"])) == 1


def test_rolling_deploy_under_load_fails_no_request(fleet):
    hosts, inventory, tracking_uri = fleet
    run_id = log_wine_model(tracking_uri, alpha=0.3)
    load = LoadGenerator(hosts["mlt29"], "http://mlt19:5001/invocations", json.dumps(ROW))
    load.start()
    try:
        wait_for(lambda: int(hosts["mlt19"].run("wc -l < /var/log/nginx/access.log").stdout) > 10, 30, "load to arrive")
        result = fab(inventory, "deploy-model", "--run-id", run_id, "--batch-size", "1")
    finally:
        counts = load.stop()
    print("load during the rolling deploy:", counts)
    assert result.returncode == 0, result.stdout[-4000:]
    assert [line for line in result.stdout.splitlines() if "batch " in line and "/3" in line]  # three batches of one
    assert counts["sent"] > 50
    assert counts["failed"] == 0, counts["errors"]
    releases = {current(hosts[name]) for name in MODEL_HOSTS}
    assert len(releases) == 1 and " down;" not in nginx_config(hosts)
    audit = hosts["mlt26"].run("tail -n 1 /var/log/mlflow-fab/deploys.jsonl").stdout
    assert json.loads(audit)["result"] == "updated" and json.loads(audit)["action"] == "deploy"


def test_failing_canary_touches_no_other_host(fleet, tmp_path):
    import mlflow

    hosts, inventory, tracking_uri = fleet
    before = {name: current(hosts[name]) for name in MODEL_HOSTS}
    pids = {name: hosts[name].run("systemctl show -p MainPID --value mlflow-model@model").stdout for name in ("mlt27", "mlt28")}
    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.artifacts.download_artifacts(f"runs:/{log_wine_model(tracking_uri, alpha=0.8)}/model", dst_path=str(tmp_path / "m"))
    corrupted = shutil.copytree(model, tmp_path / "corrupted")
    (corrupted / "model.skops").write_bytes(b"not a zip")
    result = fab(inventory, "deploy-model", "--model-uri", str(corrupted), "--canary", "1", "--max-failures", "0")
    assert result.returncode == 1
    assert re.search(r"mlt26 +│ rolled back", result.stdout)
    assert re.search(r"mlt27 +│ untouched", result.stdout) and re.search(r"mlt28 +│ untouched", result.stdout)
    assert {name: current(hosts[name]) for name in MODEL_HOSTS} == before
    assert {name: hosts[name].run("systemctl show -p MainPID --value mlflow-model@model").stdout for name in ("mlt27", "mlt28")} == pids
    assert " down;" not in nginx_config(hosts)
    for _ in range(6):  # round robin: every host answers in turn, all with the old model
        assert len(predict_through_lb(hosts["mlt29"])) == 1
    assert all(hosts[name].run(f"test -e {LOCK}", check=False).returncode == 1 for name in MODEL_HOSTS)


def background_deploy(inventory, run_id, *options):
    env = {**os.environ, "FABRIC_INVENTORY": str(inventory), "COLUMNS": "200"}
    return subprocess.Popen([str(FAB), "deploy-model", "--run-id", run_id, *options], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_second_deploy_is_refused_by_the_lock(fleet):
    hosts, inventory, tracking_uri = fleet
    first_run, second_run = log_wine_model(tracking_uri, alpha=0.25), log_wine_model(tracking_uri, alpha=0.35)
    first = background_deploy(inventory, first_run, "--pause", "15")
    try:
        wait_for(lambda: hosts["mlt28"].run(f"test -e {LOCK}", check=False).returncode == 0, 300, "the first deploy's lock")
        second = fab(inventory, "deploy-model", "--run-id", second_run)
    finally:
        output, _ = first.communicate(timeout=900)
    print(output)
    assert second.returncode == 1
    assert "model model is locked by deploy of" in second.stdout and f"deploy runs:/{first_run}/model" in second.stdout
    assert "stopping before any traffic moved" in second.stdout
    assert first.returncode == 0
    assert all(hosts[name].run(f"test -e {LOCK}", check=False).returncode == 1 for name in MODEL_HOSTS)


def test_a_host_powered_off_mid_deploy_stops_the_deploy(fleet, testbed):
    hosts, inventory, tracking_uri = fleet
    before_mlt28 = current(hosts["mlt28"])
    run_id = log_wine_model(tracking_uri, alpha=0.45)
    deploy = background_deploy(inventory, run_id, "--pause", "20")
    try:
        wait_for(lambda: current(hosts["mlt26"]) != before_mlt28, 600, "mlt26 to be updated")
        hosts["mlt27"].poweroff_hard()
    finally:
        output, _ = deploy.communicate(timeout=900)
    print(output)
    assert deploy.returncode == 1
    assert re.search(r"mlt27 +│ unreachable", output) and re.search(r"mlt28 +│ untouched", output)
    assert current(hosts["mlt28"]) == before_mlt28
    for name in ("mlt26", "mlt28"):
        assert hosts[name].run(f"test -e {LOCK}", check=False).returncode == 1
    assert f"server {hosts['mlt27'].address}:5001 max_fails=1 fail_timeout=5s down;" in nginx_config(hosts)
    for _ in range(4):
        assert len(predict_through_lb(hosts["mlt29"])) == 1
