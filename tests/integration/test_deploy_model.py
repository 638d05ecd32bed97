"""deploy-model on real hosts: a tracking server (mlt3) and two model hosts (mlt4, mlt5).

Tests run in file order and share the hosts: each one starts from what the previous left serving.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil

import pytest

from tests.integration.fabrun import PLAIN_HTTP, fab, host_entry, recap, write_inventory
from tests.wine import log_wine_model

pytestmark = pytest.mark.integration

MODEL_HOSTS = ("mlt4", "mlt5")
MODEL_DIR = "/opt/mlflow/models/model"
UNIT = "mlflow-model@model"
WINE_ROW = {
    "columns": ["fixed acidity", "volatile acidity", "citric acid", "residual sugar", "chlorides", "free sulfur dioxide",
                "total sulfur dioxide", "density", "pH", "sulphates", "alcohol"],
    "data": [[7, 0.27, 0.36, 20.7, 0.045, 45, 170, 1.001, 3, 0.45, 8.8], [6.3, 0.3, 0.34, 1.6, 0.049, 14, 132, 0.994, 3.3, 0.49, 9.5]],
}


@pytest.fixture(scope="module")
def fleet(module_hosts, tmp_path_factory):
    roles = {"mlt3": ("tracking",)} | {name: ("models",) for name in MODEL_HOSTS}
    hosts = dict(zip(("mlt3", *MODEL_HOSTS), module_hosts("mlt3", *MODEL_HOSTS, prebaked=roles)))
    path = tmp_path_factory.mktemp("deploy") / "hosts.toml"

    def inventory(**model_settings):
        entries = {"mlt3": host_entry(hosts["mlt3"], ["tracking"])}
        entries |= {name: host_entry(hosts[name], ["models"]) for name in MODEL_HOSTS}
        write_inventory(path, entries, tracking={"workers": 1, **PLAIN_HTTP})
        if model_settings:
            path.write_text(path.read_text() + "[models]\n" + "".join(f"{k} = {v}\n" for k, v in model_settings.items()))
        return path

    for name in ("mlt3", "mlt4"):
        watch_pip_users(hosts[name])
    setup = fab(inventory(), "setup-tracking")
    assert setup.returncode == 0, setup.stdout[-3000:]
    return hosts, inventory, f"http://{hosts['mlt3'].address}:5000"


PIP_USERS = "/root/pip-users"


def watch_pip_users(host) -> None:
    """Note, every 0.2 s, the user of each process building a Python env (pip, venv's ensurepip), until stopped."""
    loop = (
        f"while :; do ps -C pip,python3 -o user:32=,args= | grep -E 'pip install|-m venv|-m ensurepip' >> {PIP_USERS}; sleep 0.2; done"
    )
    pid = host.run(f"nohup setsid sh -c {shlex.quote(loop)} >/dev/null 2>&1 </dev/null & echo $!").stdout.strip()
    host.run(f"echo {pid} > {PIP_USERS}.pid")


def pip_users(host) -> set[str]:
    host.run(f"kill $(cat {PIP_USERS}.pid)")
    return {line.split()[0] for line in host.run(f"cat {PIP_USERS}").stdout.splitlines()}


@pytest.fixture(scope="module")
def first_run_id(fleet):
    return log_wine_model(fleet[2], alpha=0.5)


@pytest.fixture(scope="module")
def first_deploy(fleet, first_run_id):
    return fab(fleet[1](), "deploy-model", "--run-id", first_run_id)


def current(host) -> str:
    return host.run(f"basename $(readlink {MODEL_DIR}/current)").stdout.strip()


def main_pid(host) -> str:
    return host.run(f"systemctl show -p MainPID --value {UNIT}").stdout.strip()


def predict_from(client, target) -> list[float]:
    body = json.dumps({"dataframe_split": WINE_ROW})
    result = client.run(
        f"curl -s -X POST -H 'Content-Type: application/json' --data-binary @- http://{target}:5001/invocations", input=body
    )
    return json.loads(result.stdout)["predictions"]


def test_deploy_by_run_id_to_both_model_hosts(fleet, first_deploy):
    hosts, _, _ = fleet
    assert first_deploy.returncode == 0, first_deploy.stdout[-4000:]
    for name in MODEL_HOSTS:
        assert recap(first_deploy, name)["failed"] == 0
        assert hosts[name].run(f"systemctl is-active {UNIT}").stdout.strip() == "active"
        manifest = json.loads(hosts[name].run(f"cat {MODEL_DIR}/current/manifest.json").stdout)
        assert manifest["model_uri"].startswith("runs:/") and len(manifest["digest"]) == 64
        assert {"run_id", "env_hash", "deployed_at", "deployed_by"} <= set(manifest)


def test_another_host_gets_predictions(fleet, first_deploy):
    hosts, _, _ = fleet
    for name in MODEL_HOSTS:
        predictions = predict_from(hosts["mlt3"], name)
        assert len(predictions) == 2 and all(3 < value < 9 for value in predictions)


def test_same_run_again_is_a_no_op(fleet, first_run_id, first_deploy):
    hosts, inventory, _ = fleet
    pids = {name: main_pid(hosts[name]) for name in MODEL_HOSTS}
    again = fab(inventory(), "deploy-model", "--run-id", first_run_id)
    assert again.returncode == 0
    for name in MODEL_HOSTS:
        assert recap(again, name)["changed"] == 0
        assert main_pid(hosts[name]) == pids[name]


def test_envs_are_built_by_the_unprivileged_build_user_and_belong_to_root(fleet, first_deploy):
    hosts, _, _ = fleet
    # setup-tracking built the tracking env on mlt3, the first deploy the model's env on mlt4
    for name in ("mlt3", "mlt4"):
        assert pip_users(hosts[name]) == {"mlflow-build"}
        envs = hosts[name].run("ls -d /opt/mlflow/envs/*/").stdout.split()
        assert envs
        for env in envs:
            assert hosts[name].run(f"stat -c '%U %G %a' {env}").stdout.split() == ["root", "root", "755"]
            assert hosts[name].run(f"find {env} ! -user root -o -perm /022 ! -type l | head -3").stdout == ""
        assert hosts[name].run("stat -c '%U' /var/cache/mlflow-build/pip").stdout.strip() == "mlflow-build"
        assert hosts[name].run("getent passwd mlflow-build | cut -d: -f7").stdout.strip() == "/usr/sbin/nologin"


def model_with_requirements(tracking_uri, tmp_path, requirements: str):
    """A logged wine model, downloaded and given another requirements.txt (a model author can log any file)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    run_id = log_wine_model(tracking_uri, alpha=0.3)
    model = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path / "download"))
    edited = shutil.copytree(model, tmp_path / "edited")
    (edited / "requirements.txt").write_text(requirements)
    return edited


def model_hosts_state(hosts) -> dict[str, str]:
    listing = f"ls {MODEL_DIR}/releases /opt/mlflow/envs /run/lock/mlflow-fab; readlink {MODEL_DIR}/current"
    return {name: hosts[name].run(listing, check=False).stdout for name in MODEL_HOSTS}


def test_hostile_requirements_are_refused_before_any_host_is_touched(fleet, first_deploy, tmp_path):
    hosts, inventory, tracking_uri = fleet
    model = model_with_requirements(tracking_uri, tmp_path, "\n".join([
        "mlflow==3.17.2", "--index-url=http://127.0.0.1:9/simple", "-r /etc/shadow",
        "evil @ https://127.0.0.1:9/evil-1.0-py3-none-any.whl", "./evil", 'evil; os.system("id")',
    ]))
    before = model_hosts_state(hosts)
    result = fab(inventory(), "deploy-model", "--model-uri", str(model))
    assert result.returncode == 2, result.stdout[-3000:]
    assert "nothing was changed" in result.stderr
    for line in ("line 2: '--index-url=http://127.0.0.1:9/simple' is a pip option", "line 3: '-r /etc/shadow' is a pip option",
                 "line 4: 'evil @ https://127.0.0.1:9/evil-1.0-py3-none-any.whl' is a URL", "line 5: './evil' is not a PEP 508",
                 "line 6: 'evil; os.system(\"id\")' is not a PEP 508"):
        assert line in result.stderr
    assert "line 1" not in result.stderr
    assert model_hosts_state(hosts) == before


def test_a_source_only_requirement_needs_allow_source_builds(fleet, first_deploy, tmp_path):
    hosts, inventory, tracking_uri = fleet
    model = model_with_requirements(tracking_uri, tmp_path, "docopt==0.6.2")  # published only as an sdist
    before = model_hosts_state(hosts)
    result = fab(inventory(), "deploy-model", "--model-uri", str(model))
    assert result.returncode == 1
    assert "No matching distribution found for docopt==0.6.2" in result.stdout
    assert "allow_source_builds = true" in result.stdout
    assert model_hosts_state(hosts) == before  # the half-built env is gone, no release, no lock
    for name in MODEL_HOSTS:
        assert len(predict_from(hosts["mlt3"], name)) == 2


def test_check_lists_the_plan_and_changes_nothing(fleet, first_deploy):
    hosts, inventory, tracking_uri = fleet
    run_id = log_wine_model(tracking_uri, alpha=0.1)
    before = {name: hosts[name].run(f"ls {MODEL_DIR}/releases").stdout for name in MODEL_HOSTS}
    result = fab(inventory(), "deploy-model", "--run-id", run_id, "--check")
    assert result.returncode == 0
    assert "would change" in result.stdout and "switch current" in result.stdout
    for name in MODEL_HOSTS:
        assert hosts[name].run(f"ls {MODEL_DIR}/releases").stdout == before[name]
        assert hosts[name].run("ls /tmp").stdout.count("mlflow-fab-") == 0


def test_new_run_with_same_requirements_reuses_the_env(fleet, first_deploy):
    hosts, inventory, tracking_uri = fleet
    previous = current(hosts["mlt4"])
    envs_before = hosts["mlt4"].run("ls /opt/mlflow/envs").stdout
    run_id = log_wine_model(tracking_uri, alpha=0.2)
    result = fab(inventory(), "deploy-model", "--run-id", run_id)
    assert result.returncode == 0
    assert "changed mlt4 python env" not in result.stdout and "ok mlt4 python env" in result.stdout
    assert hosts["mlt4"].run("ls /opt/mlflow/envs").stdout == envs_before
    assert current(hosts["mlt4"]) != previous
    assert hosts["mlt4"].run(f"ls {MODEL_DIR}/releases | wc -l").stdout.strip() == "2"


def test_corrupted_model_fails_the_gate_and_the_previous_release_keeps_serving(fleet, first_deploy, tmp_path):
    import mlflow

    hosts, inventory, tracking_uri = fleet
    serving = {name: current(hosts[name]) for name in MODEL_HOSTS}
    mlflow.set_tracking_uri(tracking_uri)
    run_id = log_wine_model(tracking_uri, alpha=0.7)
    model = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path / "download"))
    corrupted = shutil.copytree(model, tmp_path / "corrupted")
    (corrupted / "model.skops").write_bytes(b"this is not a zip file")

    result = fab(inventory(), "deploy-model", "--model-uri", str(corrupted))
    assert result.returncode == 1
    assert "health gate failed" in result.stdout and "BadZipFile" in result.stdout
    assert "roll back" in result.stdout
    assert recap(result, "mlt4")["failed"] == 1
    assert re.search(r"mlt4 +│ rolled back", result.stdout) and re.search(r"mlt5 +│ untouched", result.stdout)
    for name in MODEL_HOSTS:
        assert current(hosts[name]) == serving[name]
        assert len(predict_from(hosts["mlt3"], name)) == 2


def test_rollback_goes_back_one_release_and_serves_it(fleet, first_deploy):
    hosts, inventory, _ = fleet
    history = [json.loads(line) for line in hosts["mlt4"].run(f"cat {MODEL_DIR}/history.jsonl").stdout.splitlines()]
    serving = current(hosts["mlt4"])
    expected = next(entry["from"] for entry in reversed(history) if entry["action"] == "deploy" and entry["release"] == serving)
    result = fab(inventory(), "rollback-model")
    assert result.returncode == 0, result.stdout[-3000:]
    for name in MODEL_HOSTS:
        assert current(hosts[name]) == expected
        assert len(predict_from(hosts["mlt3"], name)) == 2
    listing = fab(inventory(), "releases")
    assert f"{expected}" in listing.stdout and "current" in listing.stdout and "rollback" in listing.stdout


def test_unknown_run_id_changes_nothing(fleet, first_deploy):
    hosts, inventory, _ = fleet
    history = hosts["mlt4"].run(f"cat {MODEL_DIR}/history.jsonl").stdout
    result = fab(inventory(), "deploy-model", "--run-id", "0" * 32)
    assert result.returncode == 2
    assert f"run {'0' * 32} not found" in result.stderr and "nothing was changed" in result.stderr
    assert hosts["mlt4"].run(f"cat {MODEL_DIR}/history.jsonl").stdout == history


def test_run_without_a_model_is_refused(fleet, first_deploy):
    from mlflow import MlflowClient

    _, inventory, tracking_uri = fleet
    client = MlflowClient(tracking_uri)
    run = client.create_run(client.get_experiment_by_name("wine-quality").experiment_id)
    client.set_terminated(run.info.run_id)
    result = fab(inventory(), "deploy-model", "--run-id", run.info.run_id)
    assert result.returncode == 2
    assert "nothing was changed" in result.stderr


def test_keep_releases_prunes_old_releases(fleet, first_deploy):
    hosts, inventory, tracking_uri = fleet
    run_id = log_wine_model(tracking_uri, alpha=0.9)
    result = fab(inventory(keep_releases=2), "deploy-model", "--run-id", run_id)
    assert result.returncode == 0
    assert "prune releases" in result.stdout
    for name in MODEL_HOSTS:
        releases = hosts[name].run(f"ls {MODEL_DIR}/releases").stdout.split()
        assert len(releases) == 2 and current(hosts[name]) in releases
        assert len(predict_from(hosts["mlt3"], name)) == 2


def test_every_unit_we_install_is_hardened(fleet, first_deploy):
    hosts, _, _ = fleet
    for host, unit in ((hosts["mlt3"], "mlflow-tracking.service"), (hosts["mlt4"], "mlflow-model@model.service")):
        report = host.run(f"systemd-analyze security {unit} --no-pager").stdout
        score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", report).group(1))
        print(f"systemd-analyze security {unit}: {score}")
        assert score <= 3.0, report
