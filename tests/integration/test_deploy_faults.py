"""A deploy is a transaction on each host, whatever happens to the laptop (issue 9, section 3).

Hosts: mlt30 tracking, mlt31 and mlt32 models, mlt33 the balancer. Tests run in file order and share the hosts;
each fault is caused for real (SIGINT to fab, a cut connection, a failing restart, a reboot) and each test checks
what every host serves afterwards against what `current`, the history, `fab releases` and `fab status` say.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess

import pytest

from tests.integration.fabrun import FAB, PLAIN_HTTP, PLAIN_LB, REPO, fab, fab_at_once, host_entry, wait_for, write_inventory
from tests.integration.test_rolling import nginx_config, predict_through_lb
from tests.wine import log_wine_model

pytestmark = pytest.mark.integration

MODEL_HOSTS = ("mlt31", "mlt32")
MODEL_DIR = "/opt/mlflow/models/model"
UNIT = "mlflow-model@model"
LOCK = "/run/lock/mlflow-fab/model-model.lock"
# A gate request the model refuses (400): the gate waits its whole health_timeout, long enough to cut the connection.
REFUSED_SAMPLE = {"dataframe_split": {"columns": ["nope"], "data": [[1]]}}
HEALTH_TIMEOUT = 60


@pytest.fixture(scope="module")
def fleet(module_hosts, tmp_path_factory):
    names = ("mlt30", "mlt33", *MODEL_HOSTS)
    roles = {"mlt30": ("tracking",), "mlt33": ("lb",)} | {name: ("models",) for name in MODEL_HOSTS}
    hosts = dict(zip(names, module_hosts(*names, prebaked=roles)))
    entries = {"mlt30": host_entry(hosts["mlt30"], ["tracking"]), "mlt33": host_entry(hosts["mlt33"], ["lb"])}
    entries |= {name: host_entry(hosts[name], ["models"]) for name in MODEL_HOSTS}
    directory = tmp_path_factory.mktemp("faults")
    inventory = write_inventory(directory / "hosts.toml", entries, tracking={"workers": 1, **PLAIN_HTTP}, lb=PLAIN_LB)
    inventory.write_text(inventory.read_text() + f"[models]\nhealth_timeout = {HEALTH_TIMEOUT}\n")
    # another model name on its own port, deployed without the balancer (which serves the model "model")
    without_lb = {name: entry for name, entry in entries.items() if name != "mlt33"}
    fresh_inventory = write_inventory(directory / "fresh.toml", without_lb, tracking={"workers": 1, **PLAIN_HTTP}, lb=PLAIN_LB)
    fresh_inventory.write_text(fresh_inventory.read_text() + f"[models.fresh]\nport = 5002\nhealth_timeout = {HEALTH_TIMEOUT}\n")
    assert all(result.returncode == 0 for result in fab_at_once(inventory, ("setup-tracking",), ("setup-lb",)))
    tracking_uri = f"http://{hosts['mlt30'].address}:5000"
    first = fab(inventory, "deploy-model", "--run-id", log_wine_model(tracking_uri, alpha=0.5), "--batch-size", "100%")
    assert first.returncode == 0, first.stdout[-4000:]
    return hosts, inventory, tracking_uri, fresh_inventory


def current(host, model_dir: str = MODEL_DIR) -> str:
    return host.run(f"basename \"$(readlink {model_dir}/current)\"", check=False).stdout.strip()


def running(host, unit: str = UNIT) -> str:
    """The release the unit's process runs, from its working directory."""
    pid = host.run(f"systemctl show -p MainPID --value {unit}").stdout.strip()
    return host.run(f"basename \"$(readlink /proc/{pid}/cwd)\"", check=False).stdout.strip() if pid != "0" else ""


def recorded(host) -> str:
    """The release the history says serves (its stack's top)."""
    from tasks.serving.history import parse_history, recorded_release

    return recorded_release(parse_history(host.run(f"cat {MODEL_DIR}/history.jsonl").stdout))


def serving_state(hosts) -> dict[str, tuple[str, str, str]]:
    return {name: (current(hosts[name]), running(hosts[name]), recorded(hosts[name])) for name in MODEL_HOSTS}


def assert_consistent(hosts, inventory) -> None:
    """Every model host runs what `current` links and the history records; releases and status say so; no lock."""
    listing = fab(inventory, "releases")
    status = fab(inventory, "status")
    for name in MODEL_HOSTS:
        link, runs, history = serving_state(hosts)[name]
        assert link == runs == history, (name, link, runs, history)
        assert hosts[name].run(f"test -e {LOCK}", check=False).returncode == 1, f"{name} kept the deploy lock"
        assert re.search(rf"{runs} +│ current", listing.stdout) and f"{runs} serves" in listing.stdout
        assert re.search(rf"{name} .*model: active {runs}", status.stdout)
    assert listing.returncode == 0 and status.returncode == 0
    assert " down;" not in nginx_config(hosts, "mlt33")
    for _ in range(4):  # round robin over both hosts
        assert len(predict_through_lb(hosts["mlt30"], "mlt33")) == 1


def background_deploy(inventory, *args) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env |= {"FABRIC_INVENTORY": str(inventory), "COLUMNS": "200"}
    # a test run started in the background inherits SIGINT ignored; fab must get it as from a terminal's Ctrl-C
    return subprocess.Popen([str(FAB), "deploy-model", *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def switch_units(host) -> str:
    return host.run("systemctl list-units --all --no-legend --plain 'mlflow-switch-*'", check=False).stdout.strip()


def downloaded_model(tracking_uri, tmp_path, alpha: float):
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.artifacts.download_artifacts(f"runs:/{log_wine_model(tracking_uri, alpha=alpha)}/model", dst_path=str(tmp_path / "download"))
    return shutil.copytree(model, tmp_path / "edited")


def table_row(output: str, host: str) -> str:
    return next(line for line in output.splitlines() if re.match(rf"[│ ]*{host} +│", line))


def test_sigint_right_after_a_switch_starts_lets_the_host_finish_it(fleet):
    hosts, inventory, tracking_uri, _ = fleet
    before = serving_state(hosts)
    deploy = background_deploy(inventory, "--run-id", log_wine_model(tracking_uri, alpha=0.3))
    try:
        wait_for(lambda: switch_units(hosts["mlt31"]), 600, "the switch unit on mlt31", interval=0.2)
        deploy.send_signal(signal.SIGINT)
    finally:
        output, _ = deploy.communicate(timeout=900)
        print(output)  # also when the wait above failed: what the deploy said is the diagnosis
    assert deploy.returncode != 0
    assert "interrupted" in output and "waiting up to" in output
    new = current(hosts["mlt31"])
    assert new != before["mlt31"][0]
    assert re.search(rf"updated +│ {new} ", table_row(output, "mlt31")), "the table says what mlt31 serves"
    assert re.search(rf"untouched +│ {before['mlt32'][1]} ", table_row(output, "mlt32"))
    assert serving_state(hosts)["mlt32"] == before["mlt32"]
    assert_consistent(hosts, inventory)


def cut_ssh_from_the_laptop(host, seconds: int) -> None:
    """Drop every packet of the laptop's SSH connections on the host for a while; the host itself lifts the rule."""
    host.run("command -v nft >/dev/null || apt-get install -y -q nftables >/dev/null", timeout=300)
    rules = "table inet s3cut {\n  chain input {\n    type filter hook input priority -10;\n    tcp dport 22 ip saddr 10.88.0.1 drop\n  }\n}\n"
    host.run(f"printf '{rules}' > /root/s3cut.nft && nft -c -f /root/s3cut.nft")
    # a service rather than timers: a timer may fire up to its AccuracySec (1 min) late
    cut = f"sleep 1; nft -f /root/s3cut.nft; sleep {seconds}; nft delete table inet s3cut"
    host.run(f"systemd-run --quiet --collect --unit=s3cut /bin/sh -c '{cut}'")


def test_the_laptop_cut_off_mid_gate_the_host_rolls_back_by_itself(fleet, tmp_path):
    hosts, inventory, tracking_uri, _ = fleet
    before = serving_state(hosts)
    sample = tmp_path / "refused.json"
    sample.write_text(json.dumps(REFUSED_SAMPLE))
    deploy = background_deploy(inventory, "--run-id", log_wine_model(tracking_uri, alpha=0.6), "--sample", str(sample))
    try:
        wait_for(lambda: current(hosts["mlt31"]) != before["mlt31"][0], 600, "mlt31 to switch", interval=0.2)
        wait_for(lambda: hosts["mlt31"].run("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:5001/ping", check=False).stdout == "200",
                 120, "the new release to answer /ping while the gate waits for a prediction")
        cut_ssh_from_the_laptop(hosts["mlt31"], seconds=45)
    finally:
        output, _ = deploy.communicate(timeout=900)
        print(output)  # also when the wait above failed: what the deploy said is the diagnosis
    assert deploy.returncode == 1
    assert "the switch goes on by itself on the host" in output and "reconnecting" in output
    assert "health gate failed" in output and "roll back" in output
    assert re.search(rf"rolled back +│ {before['mlt31'][1]} ", table_row(output, "mlt31"))
    assert serving_state(hosts) == before  # nothing recorded for the release that never passed its gate
    assert_consistent(hosts, inventory)


def test_a_restart_that_fails_rolls_back_on_the_host(fleet, tmp_path):
    hosts, inventory, tracking_uri, _ = fleet
    before = serving_state(hosts)
    model = downloaded_model(tracking_uri, tmp_path, alpha=0.4)
    (model / "fail-the-restart").write_text("the drop-in below refuses to start a release holding this file\n")
    drop_in = f"/etc/systemd/system/{UNIT}.service.d/s3-fail.conf"
    hosts["mlt31"].run(f"mkdir -p $(dirname {drop_in}) && printf '[Service]\\nExecStartPre=/usr/bin/test ! -e "
                       f"{MODEL_DIR}/current/model/fail-the-restart\\n' > {drop_in} && systemctl daemon-reload")
    try:
        result = fab(inventory, "deploy-model", "--model-uri", str(model))
    finally:
        hosts["mlt31"].run(f"rm -f {drop_in} && systemctl daemon-reload")
    assert result.returncode == 1
    assert re.search(r"failed mlt31 restart mlflow-model@model", result.stdout)
    assert "restart mlflow-model@model of" in result.stdout and "failed: back to" in result.stdout
    assert re.search(rf"rolled back +│ {before['mlt31'][1]} ", table_row(result.stdout, "mlt31"))
    assert re.search(r"untouched", table_row(result.stdout, "mlt32"))
    assert serving_state(hosts) == before
    assert_consistent(hosts, inventory)


def test_a_mismatch_between_current_and_the_process_is_reported_and_repaired(fleet):
    hosts, inventory, _, _ = fleet
    serving = current(hosts["mlt32"])
    other = next(name for name in hosts["mlt32"].run(f"ls {MODEL_DIR}/releases").stdout.split() if name != serving)
    # what an interrupted switch of an older version left: `current` moved, the old process still runs
    hosts["mlt32"].run(f"ln -sfn releases/{other} {MODEL_DIR}/.current.tmp && mv -T {MODEL_DIR}/.current.tmp {MODEL_DIR}/current")
    listing = fab(inventory, "releases")
    assert f"{serving} serves, but current links {other}: deploy again to repair" in listing.stdout
    assert re.search(rf"{other} +│ linked, not serving", listing.stdout)
    status = fab(inventory, "status")
    assert status.returncode == 1 and re.search(rf"mlt32 .*model: active {serving} \(current links", status.stdout)
    run_id = json.loads(hosts["mlt32"].run(f"cat {MODEL_DIR}/releases/{other}/manifest.json").stdout)["run_id"]
    repair = fab(inventory, "deploy-model", "--run-id", run_id, "-H", "mlt32")
    assert repair.returncode == 0, repair.stdout[-3000:]
    assert "restart mlflow-model@model: because release changed" in repair.stdout
    assert running(hosts["mlt32"]) == other == current(hosts["mlt32"]) == recorded(hosts["mlt32"])


def test_a_first_deploy_that_fails_its_gate_starts_nothing_even_after_a_reboot(fleet, testbed, tmp_path):
    hosts, inventory, tracking_uri, fresh_inventory = fleet
    fresh_dir, fresh_unit = "/opt/mlflow/models/fresh", "mlflow-model@fresh"
    model = downloaded_model(tracking_uri, tmp_path, alpha=0.8)
    (model / "model.skops").write_bytes(b"not a zip file")
    result = fab(fresh_inventory, "deploy-model", "--model-uri", str(model), "--name", "fresh", "-H", "mlt32")
    assert result.returncode == 1
    assert "health gate failed" in result.stdout and "BadZipFile" in result.stdout
    assert "nothing served before: mlflow-model@fresh is stopped and disabled" in result.stdout
    assert re.search(r"stopped +│ nothing ", table_row(result.stdout, "mlt32"))
    host = hosts["mlt32"]
    assert host.run(f"test -e {fresh_dir}/current", check=False).returncode == 1
    assert host.run(f"systemctl is-enabled {fresh_unit}", check=False).stdout.strip() == "disabled"

    host.stop()
    hosts["mlt32"] = host = testbed.start("mlt32", fresh=False)
    wait_for(lambda: host.run(f"systemctl is-active {UNIT}", check=False).stdout.strip() == "active", 120, "the model unit after the reboot")
    assert host.run(f"systemctl is-active {fresh_unit}", check=False).stdout.strip() == "inactive"
    assert host.run(f"journalctl -b -u {fresh_unit} --no-pager -q", check=False).stdout.strip() == ""
    assert host.run(f"test -e {fresh_dir}/current", check=False).returncode == 1
    listing = fab(fresh_inventory, "releases", "--name", "fresh", "-H", "mlt32")
    assert "nothing serves: mlflow-model@fresh is not active" in listing.stdout
    wait_for(lambda: host.run("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:5001/ping", check=False).stdout == "200",
             180, "the model to answer after the reboot")
    assert_consistent(hosts, inventory)
