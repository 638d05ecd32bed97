"""Model endpoints behind the balancer: TLS, sign-in and a firewall on the model host.

mlt21 is the lb host, mlt22 the model host, mlt23 an outsider on the same network. The model comes
from a local MLflow store (sqlite) on this machine: no tracking host is needed. Tests run in file order.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import pytest
import requests

from tests.integration.fabrun import fab, host_entry, recap, wait_for, write_inventory
from tests.integration.test_rolling import ROW
from tests.wine import log_wine_model

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TESTED_BLOCK = "<!-- tested: tests/integration/test_model_endpoints.py runs this block as it is -->"

PORT = 5001
FIREWALL_UNIT = "mlflow-fab-firewall.service"


def ping_command(address: str) -> str:
    """GET /ping with bash alone (the lb and outsider hosts have no curl): the status line, or bash's connect error."""
    request = "printf 'GET /ping HTTP/1.0\\r\\n\\r\\n' >&3"
    return f"timeout 10 bash -c \"exec 3<>/dev/tcp/{address}/{PORT} && {request} && head -n 1 <&3\" 2>&1"


class Endpoints(NamedTuple):
    hosts: dict
    roots: dict  # testinfra hosts, as root
    run: Callable  # run(*fab_args, **lb_settings)
    home: Path  # the laptop's HOME: certificates and credentials land under it
    run_id: str  # deployed by the fixture
    next_run_id: str  # deployed by a later test, then again (a no-op for the model) with the firewall off


@pytest.fixture(scope="module")
def endpoints(module_hosts, tmp_path_factory, infra):
    import mlflow

    home = tmp_path_factory.mktemp("laptop")
    names = ("mlt21", "mlt22", "mlt23")
    hosts = dict(zip(names, module_hosts(*names, prebaked={"mlt21": ("lb",), "mlt22": ("models",)})))
    path = home / "hosts.toml"

    def inventory(**lb):
        entries = {"mlt21": host_entry(hosts["mlt21"], ["lb"]), "mlt22": host_entry(hosts["mlt22"], ["models"])}
        return write_inventory(path, entries, lb=lb)

    tracking_uri = f"sqlite:///{home}/mlflow.db"
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.create_experiment("wine-quality", artifact_location=str(home / "artifacts"))
    run_id, next_run_id = log_wine_model(tracking_uri), log_wine_model(tracking_uri, alpha=0.3)
    env = {"HOME": str(home), "MLFLOW_TRACKING_URI": tracking_uri}

    def run(*args, **lb):
        return fab(inventory(**lb), *args, env=env)

    setup = run("setup-lb")
    assert setup.returncode == 0, setup.stdout[-3000:]
    deploy = run("deploy-model", "--run-id", run_id)
    assert deploy.returncode == 0, deploy.stdout[-3000:]
    add = run("model-user", "--add", "alice")
    assert add.returncode == 0, add.stdout[-3000:]
    roots = {name: infra(host) for name, host in hosts.items()}
    return Endpoints(hosts, roots, run, home, run_id, next_run_id)


def url(e: Endpoints, scheme: str = "https") -> str:
    return f"{scheme}://{e.hosts['mlt21'].address}:{PORT}/invocations"


def credentials_file(e: Endpoints, name: str = "alice") -> Path:
    return e.home / ".mlflow" / "model-users" / f"{name}.curl"


def credentials(e: Endpoints) -> tuple[str, str]:
    """user and password from the curl config file `fab model-user` wrote: user = "NAME:PASSWORD"."""
    user, _, password = credentials_file(e).read_text().split('"')[1].partition(":")
    return user, password


def predict(e: Endpoints, auth):
    certificate = e.home / ".mlflow" / "certs" / f"{e.hosts['mlt21'].address}_{PORT}.pem"
    return requests.post(url(e), json=ROW, auth=auth, verify=str(certificate), timeout=30, allow_redirects=False)


def test_predictions_need_tls_and_a_user(endpoints):
    e = endpoints
    assert stat.S_IMODE(os.stat(credentials_file(e)).st_mode) == 0o600
    good = predict(e, credentials(e))
    assert good.status_code == 200 and len(good.json()["predictions"]) == 1
    assert predict(e, None).status_code == 401
    assert predict(e, ("alice", "wrong")).status_code == 401
    plain = requests.post(url(e, "http"), json=ROW, auth=credentials(e), timeout=30, allow_redirects=False)
    assert plain.status_code == 308 and plain.headers["Location"].startswith("https://")
    users = e.roots["mlt21"].file("/etc/nginx/mlflow-models.users")
    assert (users.user, users.group, users.mode) == ("root", "www-data", 0o640)
    assert users.content_string.startswith("alice:$6$") and credentials(e)[1] not in users.content_string


def readme_block(language: str) -> str:
    [block] = re.findall(re.escape(TESTED_BLOCK) + f"\n```{language}\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return block


def json_values(text: str) -> list:
    """Every JSON value in text, also when curl printed them one after another on one line."""
    decoder, values, index = json.JSONDecoder(), [], 0
    while index < len(text.rstrip()):
        value, index = decoder.raw_decode(text, index)
        values.append(value)
        while index < len(text) and text[index].isspace():
            index += 1
    return values


def test_the_readme_client_examples_work_as_written(endpoints):
    e = endpoints
    certificate = e.home / ".mlflow" / "certs" / f"{e.hosts['mlt21'].address}_{PORT}.pem"
    env = {**os.environ, "URL": url(e), "CERT": str(certificate), "USER_FILE": str(credentials_file(e))}
    shell = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", readme_block("sh")], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert shell.returncode == 0, shell.stdout + shell.stderr
    answers = json_values(shell.stdout)
    assert len(answers) == 5 and all(len(answer["predictions"]) == 1 for answer in answers), shell.stdout
    python = subprocess.run([sys.executable, "-c", readme_block("python")], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert python.returncode == 0, python.stderr[-3000:]
    assert len(json.loads(python.stdout)) == 3


def test_a_guide_era_request_gets_the_errors_the_readme_names(endpoints):
    e = endpoints
    old = {"columns": ROW["dataframe_split"]["columns"], "data": ROW["dataframe_split"]["data"]}
    certificate = e.home / ".mlflow" / "certs" / f"{e.hosts['mlt21'].address}_{PORT}.pem"
    send = lambda content_type: requests.post(url(e), data=json.dumps(old), headers={"Content-Type": content_type},
                                              auth=credentials(e), verify=str(certificate), timeout=30)
    with_format = send("application/json; format=pandas-split")
    assert with_format.status_code == 415 and "Unrecognized content type parameters: format" in with_format.text
    bare = send("application/json")
    assert bare.status_code == 400 and "exactly one of the input fields" in bare.text


def test_fab_predict_names_the_host_and_the_release(endpoints, tmp_path):
    e = endpoints
    release = e.roots["mlt22"].run("basename $(readlink /opt/mlflow/models/model/current)").stdout.strip()
    through = e.run("predict")
    assert through.returncode == 0, through.stdout[-3000:]
    assert f"HTTP 200 from release {release} on mlt22" in through.stdout and '"predictions"' in through.stdout
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(ROW))
    each = e.run("predict", "--each", "--input", str(rows))
    assert each.returncode == 0 and f"HTTP 200 from release {release} on mlt22" in each.stdout, each.stdout[-3000:]
    rows.write_text("fixed acidity: 7")
    bad = e.run("predict", "--input", str(rows))
    assert bad.returncode == 2 and "not JSON" in bad.stdout + bad.stderr
    nobody = e.run("predict", "--user", "bob")
    assert nobody.returncode == 2 and "bob" in nobody.stdout + nobody.stderr


def test_the_model_port_answers_only_the_balancer(endpoints):
    e = endpoints
    ping = ping_command(e.hosts["mlt22"].address)
    assert " 200 " in e.roots["mlt21"].run(ping).stdout
    outsider = e.roots["mlt23"].run(ping)
    assert outsider.rc != 0 and "Connection refused" in outsider.stdout
    assert " 200 " in e.roots["mlt22"].run(ping_command("127.0.0.1")).stdout
    assert "table inet mlflow_fab" in e.roots["mlt22"].run("nft list tables").stdout
    assert e.roots["mlt22"].service(FIREWALL_UNIT).is_enabled


def test_the_firewall_is_back_after_a_reboot(endpoints, testbed):
    e = endpoints
    e.hosts["mlt22"].stop()
    testbed.start("mlt22", fresh=False)
    ping = ping_command(e.hosts["mlt22"].address)
    wait_for(lambda: " 200 " in e.roots["mlt21"].run(ping).stdout, 180, "the model to serve the balancer again after the reboot")
    outsider = e.roots["mlt23"].run(ping)
    assert outsider.rc != 0 and "Connection refused" in outsider.stdout


def test_a_deploy_drains_the_balancer_and_keeps_tls_and_sign_in(endpoints):
    e = endpoints
    deploy = e.run("deploy-model", "--run-id", e.next_run_id)
    assert deploy.returncode == 0, deploy.stdout[-3000:]
    assert "drained mlt22" in deploy.stdout and "back in the balancer: mlt22" in deploy.stdout
    config = e.roots["mlt21"].file("/etc/nginx/conf.d/mlflow-model-model.conf").content_string
    assert "listen 5001 ssl;" in config and "auth_basic_user_file" in config and " down;" not in config
    assert predict(e, None).status_code == 401
    assert predict(e, credentials(e)).status_code == 200


def test_reset_password_and_remove(endpoints):
    e = endpoints
    old = credentials(e)
    assert e.run("model-user", "--reset-password", "alice").returncode == 0
    assert predict(e, old).status_code == 401
    new = credentials(e)
    assert predict(e, new).status_code == 200
    assert e.run("model-user", "--remove", "alice").returncode == 0
    assert predict(e, new).status_code == 401
    assert not credentials_file(e).exists()


def test_setup_lb_again_changes_nothing(endpoints):
    again = endpoints.run("setup-lb")
    assert again.returncode == 0 and recap(again, "mlt21")["changed"] == 0


def test_firewall_off_removes_our_table(endpoints):
    e = endpoints
    e.roots["mlt22"].run_expect([0], "nft add table inet someone_elses")
    deploy = e.run("deploy-model", "--run-id", e.next_run_id, firewall=False)
    assert deploy.returncode == 0, deploy.stdout[-3000:]
    tables = e.roots["mlt22"].run("nft list tables").stdout
    assert "table inet mlflow_fab" not in tables and "table inet someone_elses" in tables
    assert not e.roots["mlt22"].file(f"/etc/systemd/system/{FIREWALL_UNIT}").exists
    assert " 200 " in e.roots["mlt23"].run(ping_command(e.hosts["mlt22"].address)).stdout
