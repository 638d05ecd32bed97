"""Concurrent work on shared hosts: two models, wine and red, with different requirements on the same model hosts
(mlt35, mlt36; wine listens on 6001 on mlt36) behind two balancers (mlt37, and mlt34, which is also the client that
puts load on mlt37). The models come from a local MLflow store (sqlite) on this machine: no tracking host.

Tests run in file order and share the hosts.
"""

from __future__ import annotations

import json
import os
import subprocess
from importlib.metadata import version
from typing import Callable, NamedTuple

import pytest

from tests.integration.fabrun import FAB, PLAIN_LB, REPO, fab, host_entry, recap, wait_for, write_inventory
from tests.integration.load import LoadGenerator
from tests.integration.test_rolling import ROW
from tests.wine import log_wine_model

pytestmark = pytest.mark.integration

MODEL_HOSTS = ("mlt35", "mlt36")
LB, SECOND_LB = "mlt37", "mlt34"
PORTS = {"wine": 5001, "red": 5002}
WINE_ON_MLT36 = 6001
# red pins one package more than wine: the same model code, another env on every host
RED_EXTRA = (f"packaging=={version('packaging')}",)
MODELS_TOML = f"""
[models.wine]
port = {PORTS["wine"]}
[models.red]
port = {PORTS["red"]}
[hosts.mlt36.models.wine]
port = {WINE_ON_MLT36}
"""


class Fleet(NamedTuple):
    hosts: dict
    run: Callable  # run(*fab_args) -> CompletedProcess
    start: Callable  # start(*fab_args) -> Popen, for deploys at once
    log: Callable  # log(model, alpha) -> run id with that model's requirements


@pytest.fixture(scope="module")
def fleet(module_hosts, tmp_path_factory):
    import mlflow

    home = tmp_path_factory.mktemp("laptop")
    names = (LB, SECOND_LB, *MODEL_HOSTS)
    roles = {LB: ("lb",), SECOND_LB: ("lb",)} | {name: ("models",) for name in MODEL_HOSTS}
    hosts = dict(zip(names, module_hosts(*names, prebaked=roles)))
    entries = {LB: host_entry(hosts[LB], ["lb"]), SECOND_LB: host_entry(hosts[SECOND_LB], ["lb"])}
    entries |= {name: host_entry(hosts[name], ["models"]) for name in MODEL_HOSTS}
    inventory = write_inventory(home / "hosts.toml", entries, lb=PLAIN_LB)
    inventory.write_text(inventory.read_text() + MODELS_TOML)

    tracking_uri = f"sqlite:///{home}/mlflow.db"
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.create_experiment("wine-quality", artifact_location=str(home / "artifacts"))
    env = {"HOME": str(home), "MLFLOW_TRACKING_URI": tracking_uri}

    def run(*args):
        return fab(inventory, *args, env=env)

    def start(*args):
        inherited = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
        environment = {**inherited, "FABRIC_INVENTORY": str(inventory), "COLUMNS": "200", **env}
        return subprocess.Popen([str(FAB), *args], cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def log(model, alpha):
        return log_wine_model(tracking_uri, alpha=alpha, extra_requirements=RED_EXTRA if model == "red" else ())

    setup = run("setup-lb")
    assert setup.returncode == 0, setup.stdout[-3000:]
    hosts[SECOND_LB].run("apt-get install -y -q python3 >/dev/null")  # for the load generator
    return Fleet(hosts, run, start, log)


def finished(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=1800)
    print(output)
    return process.returncode, output


def lb_config(fleet: Fleet, model: str, lb: str = LB) -> str:
    return fleet.hosts[lb].run(f"cat /etc/nginx/conf.d/mlflow-model-{model}.conf").stdout


def port_on(host: str, model: str) -> int:
    return WINE_ON_MLT36 if (host, model) == ("mlt36", "wine") else PORTS[model]


def served_run(fleet: Fleet, host: str, model: str) -> str:
    """The run id of the release `current` points to, once the service on the host's port answers a prediction."""
    test_host = fleet.hosts[host]
    answer = test_host.run(f"curl -sf -X POST -H 'Content-Type: application/json' --data-binary @- "
                           f"http://127.0.0.1:{port_on(host, model)}/invocations", input=json.dumps(ROW))
    assert len(json.loads(answer.stdout)["predictions"]) == 1
    return json.loads(test_host.run(f"cat /opt/mlflow/models/{model}/current/manifest.json").stdout)["run_id"]


def upstream_errors(fleet: Fleet) -> int:
    """Requests the balancer sent to a server that refused or dropped them (a host being restarted, a wrong port)."""
    return int(fleet.hosts[LB].run("grep -c 'upstream' /var/log/nginx/error.log || true").stdout.strip() or 0)


def test_setup_lb_writes_one_file_per_model_with_each_hosts_port(fleet):
    wine, red = lb_config(fleet, "wine"), lb_config(fleet, "red")
    assert f"server {fleet.hosts['mlt35'].address}:5001 " in wine and f"server {fleet.hosts['mlt36'].address}:{WINE_ON_MLT36} " in wine
    assert "listen 5001;" in wine and "mlflow_model_red" not in wine
    assert all(f"server {fleet.hosts[name].address}:5002 " in red for name in MODEL_HOSTS) and "listen 5002;" in red


def test_setup_lb_replaces_the_single_file_of_earlier_versions(fleet):
    lb = fleet.hosts[LB]
    single = lb_config(fleet, "red") + lb_config(fleet, "wine")
    lb.run("rm /etc/nginx/conf.d/mlflow-model-*.conf && cat > /etc/nginx/conf.d/mlflow-models.conf && nginx -t -q && systemctl reload nginx",
           input=single)
    again = fleet.run("setup-lb")
    assert again.returncode == 0, again.stdout[-3000:]
    assert recap(again, LB)["changed"] == 1 and recap(again, SECOND_LB)["changed"] == 0
    assert lb.run("ls /etc/nginx/conf.d").stdout.split() == ["mlflow-model-red.conf", "mlflow-model-wine.conf"]
    assert lb.run("nginx -t", check=False).returncode == 0


def test_a_name_the_balancer_does_not_front_is_refused(fleet):
    refused = fleet.run("deploy-model", "--run-id", "0" * 32, "--name", "blue")
    assert refused.returncode == 2
    assert "does not front model 'blue', only red, wine: add [models.blue]" in refused.stderr + refused.stdout
    assert "drained" not in refused.stdout
    assert all(fleet.hosts[name].run("test -e /opt/mlflow/models", check=False).returncode == 1 for name in MODEL_HOSTS)


def test_two_models_with_their_own_envs_deployed_at_once_keep_every_env_they_link(fleet):
    wine_run, red_run = fleet.log("wine", 0.5), fleet.log("red", 0.6)
    wine = fleet.start("deploy-model", "--run-id", wine_run, "--name", "wine")
    try:
        # red starts while wine's env is being built: red's preflight sees that env, linked to no release yet
        for name in MODEL_HOSTS:
            wait_for(lambda: fleet.hosts[name].run("ls /opt/mlflow/envs 2>/dev/null | grep -q '^model-'", check=False).returncode == 0,
                     900, f"wine's env build on {name}", interval=1)
        red = fleet.run("deploy-model", "--run-id", red_run, "--name", "red")
    finally:
        wine_code, wine_output = finished(wine)
    assert wine_code == 0, wine_output[-4000:]
    assert red.returncode == 0, red.stdout[-4000:]
    for name in MODEL_HOSTS:
        host = fleet.hosts[name]
        assert host.run("find /opt/mlflow/models -xtype l").stdout == ""
        assert host.run("ls /opt/mlflow/envs | grep -c '^model-'").stdout.strip() == "2"
        assert served_run(fleet, name, "wine") == wine_run and served_run(fleet, name, "red") == red_run
        assert host.run("ls /run/lock/mlflow-fab/env-pins").stdout == ""


def test_two_models_deployed_at_once_under_load_fail_no_request(fleet):
    wine_run, red_run = fleet.log("wine", 0.3), fleet.log("red", 0.4)
    client = fleet.hosts[SECOND_LB]
    errors_before = upstream_errors(fleet)
    loads = {model: LoadGenerator(client, f"http://{LB}:{port}/invocations", json.dumps(ROW), connections=2, name=f"load-{model}")
             for model, port in PORTS.items()}
    for load in loads.values():
        load.start()
    try:
        wait_for(lambda: int(fleet.hosts[LB].run("wc -l < /var/log/nginx/access.log").stdout) > 20, 60, "load to arrive")
        wine, red = (fleet.start("deploy-model", "--run-id", run_id, "--name", model) for model, run_id in (("wine", wine_run), ("red", red_run)))
        (wine_code, wine_output), (red_code, red_output) = finished(wine), finished(red)
    finally:
        counts = {model: load.stop() for model, load in loads.items()}
    print("load during the two deploys:", counts)
    assert wine_code == 0, wine_output[-4000:]
    assert red_code == 0, red_output[-4000:]
    for model, count in counts.items():
        assert count["sent"] > 20 and count["failed"] == 0, (model, count)
    # no request met a host that another model's drain had put back in while it restarted, nor a wrong port
    assert upstream_errors(fleet) == errors_before
    for lb in (LB, SECOND_LB):
        assert " down" not in lb_config(fleet, "wine", lb) + lb_config(fleet, "red", lb)
    for name in MODEL_HOSTS:
        assert served_run(fleet, name, "wine") == wine_run and served_run(fleet, name, "red") == red_run


def test_a_drain_failing_on_one_balancer_puts_the_other_back_and_stops(fleet):
    before = {name: served_run(fleet, name, "wine") for name in MODEL_HOSTS}
    fleet.hosts[SECOND_LB].run("rm /etc/nginx/conf.d/mlflow-model-wine.conf && systemctl reload nginx")
    result = fleet.run("deploy-model", "--run-id", fleet.log("wine", 0.7), "--name", "wine")
    assert result.returncode == 1
    assert f"balancer: {SECOND_LB}: model wine is not set up on this balancer: run fab setup-lb first; {LB} put back" in result.stdout
    assert "stopping the deploy" in result.stdout
    assert " down" not in lb_config(fleet, "wine")
    assert {name: served_run(fleet, name, "wine") for name in MODEL_HOSTS} == before
    assert all(fleet.hosts[name].run("test -e /run/lock/mlflow-fab/model-wine.lock", check=False).returncode == 1 for name in MODEL_HOSTS)
    repaired = fleet.run("setup-lb")
    assert repaired.returncode == 0 and recap(repaired, SECOND_LB)["changed"] == 1
