"""`fab run-project` on real hosts: mlt40 runs the tracking server (TLS and sign-in, as by default), mlt41 trains and serves.

The laptop's home is a temporary directory holding the tracking user's credentials and the learned
certificate. Tests run in file order; the env built by the first run is reused by the others.
"""

from __future__ import annotations

import shutil
import signal
import os
import subprocess

import pytest
import requests

from tests.integration.fabrun import FAB, REPO, fab, host_entry, wait_for, write_inventory

pytestmark = pytest.mark.integration

WINE = REPO / "examples" / "wine"


class Training:
    def __init__(self, hosts, home, inventory):
        self.tracking, self.train = hosts
        self.home, self.inventory = home, inventory

    def run(self, *args, timeout: float = 1200):
        return fab(self.inventory, *args, env={"HOME": str(self.home)}, timeout=timeout)

    @property
    def api(self) -> str:
        return f"https://{self.tracking.address}:5000/api/2.0/mlflow"

    def get_run(self, run_id: str) -> dict:
        values = dict(line.split(" = ", 1) for line in (self.home / ".mlflow" / "credentials").read_text().splitlines() if " = " in line)
        auth = (values["mlflow_tracking_username"], values["mlflow_tracking_password"])
        certificate = self.home / ".mlflow" / "certs" / f"{self.tracking.address}_5000.pem"
        answer = requests.get(f"{self.api}/runs/get", params={"run_id": run_id}, auth=auth, verify=str(certificate), timeout=30)
        answer.raise_for_status()
        return answer.json()["run"]


@pytest.fixture(scope="module")
def training(module_hosts, tmp_path_factory):
    hosts = module_hosts("mlt40", "mlt41", prebaked={"mlt40": ("tracking",), "mlt41": ("training", "models")})
    home = tmp_path_factory.mktemp("laptop")
    entries = {"mlt40": host_entry(hosts[0], ["tracking"]), "mlt41": host_entry(hosts[1], ["train", "models"])}
    t = Training(hosts, home, write_inventory(home / "hosts.toml", entries, tracking={"workers": 1}))
    setup = t.run("setup-tracking")
    assert setup.returncode == 0, setup.stdout[-4000:]
    user = t.run("tracking-user", "--add", "trainer")
    assert user.returncode == 0, user.stdout[-3000:]
    return t


def run_id_of(output: str) -> str:
    """From the step line `ok mlt41 run: ID STATUS: URL`."""
    line = next(line for line in output.splitlines() if " mlt41 run: " in line)
    return line.split(" mlt41 run: ", 1)[1].split()[0]


def test_the_example_project_trains_on_the_host_and_logs_a_model(training, infra):
    t = training
    done = t.run("run-project", "examples/wine", "-P", "alpha=0.4", "-P", "l1_ratio=0.2", "--experiment", "wine")
    assert done.returncode == 0, done.stdout[-5000:]
    assert "mlt41 | ElasticNet(alpha=0.4, l1_ratio=0.2): RMSE" in done.stdout  # streamed from the host
    run = t.get_run(run_id_of(done.stdout))
    assert run["info"]["status"] == "FINISHED" and f"FINISHED: https://{t.tracking.address}:5000/#/experiments/" in done.stdout
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert (params["alpha"], params["l1_ratio"]) == ("0.4", "0.2")
    assert any(metric["key"] == "rmse" for metric in run["data"]["metrics"])
    host = infra(t.train)
    credentials = host.file("/var/lib/mlflow-train/.mlflow/credentials")
    assert (credentials.user, credentials.mode) == ("mlflow-train", 0o600)
    assert host.file("/var/lib/mlflow-train/runs").listdir() == []  # the unpacked copy went with the run
    # the run wrote to the journal as the unprivileged user
    assert "ElasticNet(alpha=0.4" in host.run(f"journalctl _UID={host.user('mlflow-train').uid} -o cat --no-pager").stdout
    t.trained = run_id_of(done.stdout)


def test_the_trained_run_deploys_and_predicts(training):
    t = training
    deploy = t.run("deploy-model", "--run-id", t.trained)
    assert deploy.returncode == 0, deploy.stdout[-4000:]
    predicted = t.run("predict")
    assert predicted.returncode == 0 and '"predictions"' in predicted.stdout, predicted.stdout[-3000:]


def test_bad_input_stops_before_anything_runs(training, infra, tmp_path):
    t = training
    units_before = infra(t.train).run("journalctl --no-pager -o cat | grep -c 'Started mlflow-run-' || true").stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (("run-project", str(empty)), "no MLproject file"),
        (("run-project", "examples/wine", "-e", "evaluate"), "entry point 'evaluate' is not in"),
        (("run-project", "examples/wine", "-P", "alpah=0.1"), "no such parameter"),
    ]
    wrong = tmp_path / "wrong.credentials"
    wrong.write_text("[mlflow]\nmlflow_tracking_username = trainer\nmlflow_tracking_password = not-it\n")
    cases.append((("run-project", "examples/wine", "--credentials", str(wrong)), "refused user trainer (HTTP 401)"))
    for args, message in cases:
        result = t.run(*args)
        assert result.returncode == 2 and message in result.stdout + result.stderr, (args, result.stdout, result.stderr)
    units_after = infra(t.train).run("journalctl --no-pager -o cat | grep -c 'Started mlflow-run-' || true").stdout
    assert units_after == units_before


def test_a_git_url_at_a_tag_runs_detached(training, infra, tmp_path):
    t = training
    repository = tmp_path / "wine.git"
    shutil.copytree(WINE, repository)
    git = ["git", "-C", str(repository), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "v1"], check=True)
    subprocess.run(git + ["tag", "v1"], check=True)
    (repository / "MLproject").write_text("broken after v1")
    subprocess.run(git + ["commit", "-qam", "broken"], check=True)
    started = t.run("run-project", f"file://{repository}", "--version", "v1", "-P", "alpha=0.7", "--detach")
    assert started.returncode == 0, started.stdout[-4000:]
    unit = started.stdout.split("started ", 1)[1].split()[0]
    host = infra(t.train)
    wait_for(lambda: host.run(f"systemctl is-active {unit}").stdout.strip() in ("inactive", "failed"), 600, f"{unit} to end")
    assert "succeeded" in host.run(f"journalctl -u {unit} -o cat --no-pager").stdout
    logs = t.run("logs", "-H", "mlt41", "--service", f"run:{unit}")
    assert logs.returncode == 0 and "ElasticNet(alpha=0.7, l1_ratio=0.1)" in logs.stdout


def test_ctrl_c_stops_the_run_on_the_host_and_marks_it_killed(training, infra, tmp_path):
    t = training
    project = tmp_path / "slow"
    project.mkdir()
    shutil.copy(WINE / "python_env.yaml", project)  # the same env as the example: already built
    (project / "MLproject").write_text(
        "name: slow\npython_env: python_env.yaml\nentry_points:\n  main:\n    command: python slow.py\n")
    (project / "slow.py").write_text("import time\nimport mlflow\nwith mlflow.start_run():\n    print('training', flush=True)\n    time.sleep(900)\n")
    output = tmp_path / "fab.out"
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env.update({"FABRIC_INVENTORY": str(t.inventory), "HOME": str(t.home), "COLUMNS": "200"})
    with output.open("w") as sink:
        process = subprocess.Popen([str(FAB), "run-project", str(project)], cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: "mlt41 | training" in output.read_text(), 600, "the run to start training")
            process.send_signal(signal.SIGINT)
            code = process.wait(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
    text = output.read_text()
    assert code != 0 and "KILLED" in text, text[-4000:]
    run = t.get_run(run_id_of(text))
    assert run["info"]["status"] == "KILLED"
    host = infra(t.train)
    assert host.run("pgrep -u mlflow-train").rc == 1  # nothing of the run is left
    assert host.run("systemctl list-units --all --no-legend 'mlflow-run-*'").stdout.strip() == ""
