"""Monitoring on real hosts: a tracking server (mlt51), a balancer (mlt52) and two model hosts (mlt53, mlt54) watched by
a monitor host (mlt50) running Debian's Prometheus, rules evaluated every second so an alert fires within its `for` time;
then canaries judged by their live traffic. The models come from a local MLflow store (sqlite) on this machine."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.integration.fabrun import FAB, REPO, fab, host_entry, recap, wait_for, write_inventory
from tests.integration.test_rolling import ROW
from tests.wine import log_flaky_model, log_wine_model

pytestmark = pytest.mark.integration

RULE_TESTS = Path(__file__).resolve().parents[1] / "monitoring" / "mlflow-fab-rules.test.yml"


class Watched(NamedTuple):
    monitor: object
    tracked: object
    lb: object
    models: object  # the first model host: the canary
    other: object  # the second model host
    inventory: Path
    env: dict  # HOME and the local MLflow store, for fab deploy-model


@pytest.fixture(scope="module")
def watched(module_hosts, tmp_path_factory):
    import mlflow

    monitor, tracked, lb, models, other = module_hosts("mlt50", "mlt51", "mlt52", "mlt53", "mlt54", prebaked={
        "mlt51": ("tracking",), "mlt52": ("lb",), "mlt53": ("models",), "mlt54": ("models",)})
    home = tmp_path_factory.mktemp("monitoring")
    inventory = write_inventory(
        home / "hosts.toml",
        {"mlt50": host_entry(monitor, ["monitor"]), "mlt51": host_entry(tracked, ["tracking"]), "mlt52": host_entry(lb, ["lb"]),
         "mlt53": host_entry(models, ["models"]), "mlt54": host_entry(other, ["models"])},
        tracking={"tls": True, "auth": True, "workers": 2, "backup_schedule": "daily"},
        lb={"tls": False, "auth": False},
        monitoring={"scrape_interval": "1s", "evaluation_interval": "1s"},
    )
    store = f"sqlite:///{home}/mlflow.db"
    mlflow.set_tracking_uri(store)
    mlflow.create_experiment("wine-quality", artifact_location=str(home / "artifacts"))
    run_id = log_wine_model(store)
    env = {"HOME": str(home), "MLFLOW_TRACKING_URI": store}
    for task in (("setup-tracking",), ("setup-lb",), ("deploy-model", "--run-id", run_id), ("setup-monitoring",)):
        result = fab(inventory, *task, env=env)
        assert result.returncode == 0, result.stdout[-5000:]
    return Watched(monitor, tracked, lb, models, other, inventory, env)


def query(monitor, promql: str) -> list[dict]:
    answer = monitor.run(f"curl -s -G --data-urlencode {shlex.quote('query=' + promql)} http://127.0.0.1:9090/api/v1/query")
    return json.loads(answer.stdout)["data"]["result"]


def test_prometheus_listens_on_loopback_only_and_scrapes_every_host(watched):
    monitor = watched.monitor
    listening = monitor.run("ss -ltnH 'sport = :9090'").stdout.split()
    assert "127.0.0.1:9090" in listening and "0.0.0.0:9090" not in listening and "*:9090" not in listening, listening
    wait_for(lambda: {r["metric"]["host"]: r["metric"]["roles"] for r in query(monitor, 'up{job="node"} == 1')}
             == {"mlt50": "monitor", "mlt51": "tracking", "mlt52": "lb", "mlt53": "models", "mlt54": "models"}, 60,
             "every node exporter up, with its roles")
    assert wait_for(lambda: query(monitor, 'up{job="balancer", host="mlt52"} == 1'), 60, "mtail on the balancer up")


def test_an_exporter_answers_the_monitor_hosts_only(watched):
    import requests

    monitor, tracked = watched.monitor, watched.tracked
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://{tracked.address}:9100/metrics", timeout=10)
    metrics = monitor.run(f"curl -sf http://{tracked.address}:9100/metrics").stdout
    assert 'node_systemd_unit_state{name="mlflow-tracking.service",state="active",type="simple"} 1' in metrics


def test_nginx_postgresql_and_certificates_are_watched_where_they_run(watched):
    monitor = watched.monitor
    wait_for(lambda: {r["metric"]["host"] for r in query(monitor, "nginx_up == 1")} == {"mlt51", "mlt52"}, 60,
             "the nginx exporters of the tracking server's front door and of the balancer")
    wait_for(lambda: {r["metric"]["host"] for r in query(monitor, "pg_up == 1")} == {"mlt51"}, 60, "the tracking server's PostgreSQL")
    expiry = wait_for(lambda: query(monitor, 'probe_ssl_earliest_cert_expiry{host="mlt51", endpoint="tracking"}'), 60,
                      "the tracking front door's certificate expiry")
    assert float(expiry[0]["value"][1]) - time.time() > 14 * 86400
    assert not query(monitor, 'ALERTS{alertname="CertificateExpiresSoon"}')


def test_the_tracking_servers_own_metrics_reach_prometheus_while_its_api_keeps_asking_for_a_sign_in(watched):
    import requests

    monitor, tracked = watched.monitor, watched.tracked
    assert requests.get(f"https://{tracked.address}:5000/metrics", verify=False, timeout=10).status_code == 401
    assert requests.get(f"https://{tracked.address}:5000/api/2.0/mlflow/experiments/search?max_results=1", verify=False, timeout=10).status_code == 401
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://{tracked.address}:9718/metrics", timeout=10)
    api = (f"curl -sk -o /dev/null -w '%{{http_code}}\\n' -K /etc/mlflow/admin.curl -H 'Host: {tracked.address}:5000' "
           "'https://127.0.0.1:5000/api/2.0/mlflow/experiments/search?max_results=1'")
    assert tracked.run(f"for i in $(seq 30); do {api}; done").stdout.split() == ["200"] * 30
    counted = wait_for(lambda: query(monitor, 'sum by (host, status) (mlflow_http_request_total{job="tracking", method="GET"}) >= 30'),
                       60, "30 API answers counted by the tracking server")
    assert [(r["metric"]["host"], r["metric"]["status"]) for r in counted] == [("mlt51", "200")]
    assert wait_for(lambda: query(monitor, 'tracking:latency_seconds:p99_5m{host="mlt51"} > 0'), 60, "the tracking server's p99")


def test_a_tracking_server_killed_and_restarted_by_systemd_is_scraped_again(watched):
    monitor, tracked = watched.monitor, watched.tracked
    def main_pid(unit):
        return tracked.run(f"systemctl show -p MainPID --value {unit}").stdout.strip()

    server, metrics = main_pid("mlflow-tracking"), main_pid("mlflow-tracking-metrics")
    assert server != "0" and metrics != "0"
    tracked.run(f"kill -9 {server}")
    wait_for(lambda: main_pid("mlflow-tracking") not in ("0", server) and main_pid("mlflow-tracking-metrics") not in ("0", metrics), 60,
             "the server restarted by systemd, and its metrics service with it")
    assert wait_for(lambda: tracked.run("curl -sf http://127.0.0.1:5050/health", check=False).returncode == 0, 120, "the server answers again")
    tracked.run("curl -s -o /dev/null -K /etc/mlflow/admin.curl -H 'Host: 127.0.0.1:5050' 'http://127.0.0.1:5050/api/2.0/mlflow/experiments/search?max_results=1'")
    wait_for(lambda: query(monitor, 'up{job="tracking", host="mlt51"} == 1 and on (instance) mlflow_exporter_info'), 60,
             "Prometheus scraping the restarted server's metrics")


def test_the_shipped_alert_rules_pass_their_tests_with_the_installed_promtool(watched):
    monitor = watched.monitor
    monitor.run("rm -rf /root/rule-tests && mkdir /root/rule-tests && cp /etc/prometheus/rules/mlflow-fab.yml /root/rule-tests/")
    monitor.run("cat > /root/rule-tests/rules.test.yml", input=RULE_TESTS.read_text())
    result = monitor.run("cd /root/rule-tests && promtool test rules rules.test.yml", check=False)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_predictions_through_the_balancer_give_each_models_request_rate_and_latency_per_model_host(watched):
    import requests

    monitor, lb, models = watched.monitor, watched.lb, watched.models
    def predict(times: int) -> None:
        for _ in range(times):
            assert requests.post(f"http://{lb.address}:5001/invocations", json=ROW, timeout=30).status_code == 200

    predict(80)  # round robin: 40 to each model host
    upstream = f"{models.address}:5001"
    counted = wait_for(lambda: [r for r in query(monitor, f'sum by (model, upstream, status) (mlflow_model_requests_total{{upstream="{upstream}"}}) >= 40')],
                       60, "40 answers from the first model host counted at the balancer")
    assert [(r["metric"]["model"], r["metric"]["status"]) for r in counted] == [("model", "200")]
    predict(80)  # mtail makes a series at its first line: rates need the increase a second round brings
    rate = wait_for(lambda: query(monitor, 'model:requests:rate5m{model="model"} > 0'), 60, "the model's request rate")
    p99 = wait_for(lambda: query(monitor, 'model:latency_seconds:p99_5m{model="model"}'), 60, "the model's p99 latency")
    errors = query(monitor, 'model:errors:ratio5m{model="model"}')
    print(f"model: {float(rate[0]['value'][1]):.2f} requests/s, p99 {float(p99[0]['value'][1]) * 1000:.0f} ms, "
          f"errors {float(errors[0]['value'][1]):.0%}")
    assert 0 < float(p99[0]["value"][1]) < 10 and float(errors[0]["value"][1]) == 0


def test_each_model_host_measures_its_own_answers(watched):
    """What each model host served, from the answer log its model server writes (mtail on the host): the predictions the
    balancer sent, and those sent to the host itself, a malformed one answered 400."""
    monitor, other = watched.monitor, watched.other
    wait_for(lambda: {r["metric"]["host"] for r in query(monitor, 'up{job="models"} == 1')} == {"mlt53", "mlt54"}, 60,
             "mtail on both model hosts up")
    line = other.run("tail -n 1 /var/log/mlflow-models/model.log").stdout.strip()
    assert line.startswith("served model 200 ") and line.endswith(f" {other.address}:5001"), line
    other.run("cat > /root/row.json", input=json.dumps(ROW))
    send = f"curl -s -o /dev/null -w '%{{http_code}}\\n' -H 'Content-Type: application/json' http://{other.address}:5001/invocations"
    assert other.run(f"for i in $(seq 30); do {send} --data-binary @/root/row.json; done").stdout.split() == ["200"] * 30
    address = f"{other.address}:5001"

    def served(malformed: int) -> dict[str, float]:
        promql = f'sum by (status) (mlflow_model_served_total{{job="models", host="mlt54", model="model", address="{address}"}})'
        statuses = {r["metric"]["status"]: float(r["value"][1]) for r in query(monitor, promql)}
        return statuses if statuses.get("400", 0) >= malformed else {}

    # in two rounds, each counted before the next: mtail makes the 400s' series at its first line, and the error ratio's
    # rate needs an increase of a series Prometheus has already seen
    for malformed in (5, 10):
        assert other.run(f"for i in $(seq 5); do {send} --data-binary '{{\"nope\": 1}}'; done").stdout.split() == ["400"] * 5
        counted = wait_for(lambda: served(malformed), 60, f"{malformed} malformed requests counted on mlt54")
    assert counted["200"] >= 40 + 30 and set(counted) == {"200", "400"}, f"the balancer's 40 at least and the host's own 30: {counted}"
    assert wait_for(lambda: query(monitor, 'model_host:errors:ratio5m{model="model", host="mlt54"} > 0'), 60, "mlt54's error ratio")
    assert wait_for(lambda: query(monitor, 'model_host:latency_seconds:p99_5m{model="model", host="mlt54"} > 0'), 60, "mlt54's p99")
    assert other.run("stat -c '%U %a' /var/log/mlflow-models/model.log").stdout.split() == ["mlflow-model", "644"]


def test_answers_after_the_logs_rotate_are_still_counted(watched):
    """logrotate as the hosts run it: Debian's nginx rotation on the balancer (the file renamed, nginx told to reopen)
    and ours on a model host (copytruncate); mtail follows both and counts what is answered afterwards."""
    import requests

    monitor, lb, other = watched.monitor, watched.lb, watched.other
    address = f"{other.address}:5001"
    at_balancer = f'sum(mlflow_model_requests_total{{model="model", upstream="{address}", status="200"}})'
    on_host = 'sum(mlflow_model_served_total{job="models", host="mlt54", model="model", status="200"})'

    def counted(promql: str) -> float:
        result = query(monitor, promql)
        return float(result[0]["value"][1]) if result else 0.0

    before = {promql: wait_for(lambda promql=promql: counted(promql), 60, promql) for promql in (at_balancer, on_host)}
    lb.run("logrotate -f /etc/logrotate.d/nginx")
    other.run("logrotate -f /etc/logrotate.d/mlflow-models")
    assert lb.run("test -s /var/log/nginx/mlflow-models.log.1", check=False).returncode == 0, "the balancer's model log rotated"
    assert other.run("test -s /var/log/mlflow-models/model.log.1 && ! test -s /var/log/mlflow-models/model.log", check=False).returncode == 0
    for _ in range(40):  # round robin: 20 to mlt54
        assert requests.post(f"http://{lb.address}:5001/invocations", json=ROW, timeout=30).status_code == 200
    assert int(lb.run("grep -c ' 200 ' /var/log/nginx/mlflow-models.log").stdout) >= 40, "nginx writes to the new file"
    assert int(other.run("grep -c '^served model 200 ' /var/log/mlflow-models/model.log").stdout) >= 20, "appended from its start"
    for promql in (at_balancer, on_host):
        wait_for(lambda promql=promql: counted(promql) >= before[promql] + 20, 60, f"the 20 answers after the rotation in {promql}")


def test_status_shows_each_models_live_figures(watched):
    result = fab(watched.inventory, "status")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "last 5 minutes at the balancers, Prometheus on mlt50" in result.stdout, result.stdout[-3000:]
    row = next(line for line in result.stdout.splitlines() if line.strip("│ ").startswith("model "))
    assert "0.0%" in row and " ms" in row, row


def test_a_stopped_model_service_fires_its_alert(watched):
    monitor, models = watched.monitor, watched.models
    models.run("systemctl stop mlflow-model@model")
    try:
        firing = wait_for(lambda: [alert for alert in json.loads(monitor.run("curl -s http://127.0.0.1:9090/api/v1/alerts").stdout)["data"]["alerts"]
                                   if alert["labels"]["alertname"] == "MlflowServiceDown" and alert["state"] == "firing"], 180,
                          "MlflowServiceDown firing")
        assert firing[0]["labels"]["host"] == "mlt53" and firing[0]["labels"]["name"] == "mlflow-model@model.service"
    finally:
        models.run("systemctl start mlflow-model@model")


def test_a_backup_is_recorded_for_the_alert_on_stopped_backups(watched):
    monitor, inventory = watched.monitor, watched.inventory
    wait_for(lambda: query(monitor, 'ALERTS{alertname="BackupNeverMade", host="mlt51", alertstate="pending"}'), 60,
             "BackupNeverMade pending: mlt51 has a schedule and no backup yet")
    before = time.time()
    result = fab(inventory, "backup-tracking")
    assert result.returncode == 0, result.stdout[-3000:]
    recorded = wait_for(lambda: query(monitor, f'mlflow_backup_last_success_timestamp_seconds{{host="mlt51"}} >= {int(before)}'), 60,
                        "the backup's time scraped from mlt51")
    assert recorded[0]["metric"]["roles"] == "tracking"
    wait_for(lambda: not query(monitor, 'ALERTS{alertname=~"Backup.*"}'), 30, "no backup alert once the backup is recorded")


def test_a_second_run_changes_nothing(watched):
    inventory = watched.inventory
    result = fab(inventory, "setup-monitoring")
    assert result.returncode == 0, result.stdout[-3000:]
    assert all(recap(result, host)["changed"] == 0 for host in ("mlt50", "mlt51", "mlt52", "mlt53", "mlt54")), result.stdout[-3000:]


def test_fab_monitor_opens_prometheus_here_until_ctrl_c(watched):
    import requests

    inventory = watched.inventory
    environment = {**{key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}, "FABRIC_INVENTORY": str(inventory)}
    tunnel = subprocess.Popen([str(FAB), "monitor"], cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = tunnel.stdout.readline()
        assert line.startswith("Prometheus of mlt50: http://127.0.0.1:"), line
        url = line.split()[3]
        assert requests.get(f"{url}-/ready", timeout=10).status_code == 200
        assert requests.get(f"{url}api/v1/query", params={"query": "up"}, timeout=10).json()["status"] == "success"
    finally:
        tunnel.send_signal(signal.SIGINT)
        output, _ = tunnel.communicate(timeout=30)
    assert tunnel.returncode == 0 and "tunnel closed" in output, output


class Predictions:
    """A steady stream of predictions through the balancer, one strong wine (alcohol 14.5) in three: the flaky model
    fails on those, the wine model answers them."""

    def __init__(self, lb):
        import requests

        strong = json.loads(json.dumps(ROW))
        strong["dataframe_split"]["data"][0][-1] = 14.5
        self.url, self.rows, self.requests = f"http://{lb.address}:5001/invocations", [ROW, ROW, strong], requests
        self.stop, self.statuses = threading.Event(), []
        self.thread = threading.Thread(target=self.send, daemon=True)

    def send(self) -> None:
        session = self.requests.Session()
        while not self.stop.is_set():
            try:
                self.statuses.append(session.post(self.url, json=self.rows[len(self.statuses) % 3], timeout=30).status_code)
            except self.requests.RequestException:
                self.statuses.append(0)

    def __enter__(self):
        self.thread.start()
        wait_for(lambda: len(self.statuses) >= 30, 60, "predictions flowing through the balancer")
        return self

    def __exit__(self, *exc_info):
        self.stop.set()
        self.thread.join(60)


def serving(host) -> str:
    return host.run("basename $(readlink /opt/mlflow/models/model/current)").stdout.strip()


def test_a_canary_failing_under_live_traffic_is_rolled_back_by_its_bake_and_no_other_host_is_touched(watched):
    before = {host.name: serving(host) for host in (watched.models, watched.other)}
    other_history = watched.other.run("wc -l < /opt/mlflow/models/model/history.jsonl").stdout
    flaky = log_flaky_model(watched.env["MLFLOW_TRACKING_URI"])
    with Predictions(watched.lb):
        result = fab(watched.inventory, "deploy-model", "--run-id", flaky, "--canary", "1", "--bake", "15", "--max-error-rate", "5%",
                     env=watched.env)
    assert result.returncode != 0 and "canary failed its bake: error rate" in result.stdout, result.stdout[-4000:]
    assert {host.name: serving(host) for host in (watched.models, watched.other)} == before
    assert watched.other.run("wc -l < /opt/mlflow/models/model/history.jsonl").stdout == other_history, "the other host was switched"
    assert any("mlt54" in line and "untouched" in line for line in result.stdout.splitlines()), result.stdout[-3000:]


class WeightedWindow:
    """Each model host's answers (lines of its answer log) while the balancer's config for the model has weights."""

    def __init__(self, lb, hosts):
        self.lb, self.hosts = lb, hosts
        self.start: dict[str, int] = {}
        self.answers: dict[str, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)

    def counts(self) -> dict[str, int]:
        return {host.name: int(host.run("wc -l < /var/log/mlflow-models/model.log").stdout) for host in self.hosts}

    def watch(self) -> None:
        while not self.stop.wait(0.2) and not self.answers:
            weighted = "weight=" in self.lb.run("cat /etc/nginx/conf.d/mlflow-model-model.conf").stdout
            if weighted and not self.start:
                self.start = self.counts()
            elif not weighted and self.start:
                self.answers = {name: count - self.start[name] for name, count in self.counts().items()}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stop.set()
        self.thread.join(30)


def test_a_healthy_canary_passes_its_bake_with_the_share_of_traffic_it_was_given_and_the_deploy_goes_on(watched):
    before = serving(watched.models)
    run_id = log_wine_model(watched.env["MLFLOW_TRACKING_URI"], alpha=0.3)
    with Predictions(watched.lb), WeightedWindow(watched.lb, [watched.models, watched.other]) as window:
        # a p99 limit this machine's 2 shared cores keep under load; the limit itself is judged in tests/unit/test_bake.py
        result = fab(watched.inventory, "deploy-model", "--run-id", run_id, "--canary", "1", "--bake", "10", "--max-p99", "2s",
                     "--canary-weight", "80%", env=watched.env)
    assert result.returncode == 0 and "canary passed its bake" in result.stdout, result.stdout[-4000:]
    assert "mlt53 weighted to 80% of the traffic while it bakes" in result.stdout and "weights back to even" in result.stdout
    assert serving(watched.models) == serving(watched.other) != before
    canary, other = window.answers["mlt53"], window.answers["mlt54"]
    print(f"while weighted: the canary answered {canary}, the other host {other}")
    assert canary / (canary + other) > 0.7, "the canary's share while it baked: 80 %, against 50 % unweighted"
    assert "weight=" not in watched.lb.run("cat /etc/nginx/conf.d/mlflow-model-model.conf").stdout


def test_a_bake_that_cannot_read_the_balancers_log_stops_the_deploy_before_the_first_switch(watched):
    before = {host.name: serving(host) for host in (watched.models, watched.other)}
    run_id = log_wine_model(watched.env["MLFLOW_TRACKING_URI"], alpha=0.4)
    watched.lb.run("rm /var/log/nginx/mlflow-models.log")
    try:
        result = fab(watched.inventory, "deploy-model", "--run-id", run_id, "--canary", "1", "--bake", "10", env=watched.env)
    finally:
        watched.lb.run("nginx -s reopen")
    assert result.returncode != 0 and "stopping before the first switch" in result.stdout, result.stdout[-4000:]
    assert {host.name: serving(host) for host in (watched.models, watched.other)} == before


def test_with_no_balancer_a_models_live_figures_come_from_its_hosts(watched, tmp_path):
    """An inventory with no lb host: model solo on mlt54 alone, its clients straight on the host; Prometheus (set up
    again for this inventory) has its figures from the host's answer log, and `fab status` shows them."""
    import requests

    monitor, other, store = watched.monitor, watched.other, watched.env["MLFLOW_TRACKING_URI"]
    inventory = write_inventory(tmp_path / "hosts.toml", {"mlt50": host_entry(monitor, ["monitor"]), "mlt54": host_entry(other, ["models"])},
                                monitoring={"scrape_interval": "1s", "evaluation_interval": "1s"})
    inventory.write_text(inventory.read_text() + "[models.solo]\nport = 5002\n")
    for task in (("deploy-model", "--run-id", log_wine_model(store, alpha=0.7), "--name", "solo"), ("setup-monitoring",)):
        result = fab(inventory, *task, env=watched.env)
        assert result.returncode == 0, result.stdout[-4000:]
    for _ in range(2):  # mtail makes a series at its first line: rates need the increase a second round brings
        for _ in range(40):
            assert requests.post(f"http://{other.address}:5002/invocations", json=ROW, timeout=30).status_code == 200
        wait_for(lambda: query(monitor, 'sum(mlflow_model_served_total{model="solo", status="200"}) >= 40'), 60, "solo's answers counted")
    assert wait_for(lambda: query(monitor, 'model:requests:rate5m{model="solo"} > 0'), 60, "solo's request rate, from its host")
    result = fab(inventory, "status")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "last 5 minutes at the model hosts, Prometheus on mlt50" in result.stdout, result.stdout[-3000:]
    row = next(line for line in result.stdout.splitlines() if line.strip("│ ").startswith("solo "))
    assert "0.0%" in row and " ms" in row, row


def test_a_monitor_host_that_goes_away_does_not_block_a_deploy_without_bake(watched):
    run_id = log_wine_model(watched.env["MLFLOW_TRACKING_URI"], alpha=0.6)
    watched.monitor.stop()
    result = fab(watched.inventory, "deploy-model", "--run-id", run_id, env=watched.env)
    assert result.returncode == 0, result.stdout[-4000:]
    assert serving(watched.models) == serving(watched.other)
