"""setup-monitoring decided from facts: the exporters' wall and config on every host, Prometheus' config and rules."""

import json

import pytest
import yaml

from tasks.inventory import InventoryError, LbSettings, load_inventory
from tasks.monitoring import exporters, prometheus
from tasks.ops import firewall
from tasks.ops.facts import Facts
from tasks.templates import TEMPLATES, render
from tests.unit.fake_remote import FakeFleet, FakeHost
from tests.unit.test_tracking_plan import DEBIAN, changed, file_fact

INVENTORY = """
[tracking]
backup_schedule = "daily"
[monitoring]
retention = "30d"
model_p99_seconds = 2
[hosts.mon1]
address = "10.0.0.9"
roles = ["monitor"]
[hosts.t1]
address = "10.0.0.5"
roles = ["tracking"]
[hosts.m1]
address = "fd00::7"
roles = ["models"]
"""


def inventory(tmp_path, text=INVENTORY):
    (tmp_path / "hosts.toml").write_text(text)
    return load_inventory(tmp_path / "hosts.toml")


def converged_facts(target) -> dict:
    """What a host answers once setup-monitoring went through."""
    wall = target.wall
    running = {fact: value for exporter in target.exporters for fact, value in (
        (exporter.state_fact, "ActiveState=active\nUnitFileState=enabled\nMainPID=42"), (exporter.probe_fact, f"{exporter.checks[0].label} 200"))}
    packages = ["nftables", "curl"] + [exporter.unit for exporter in target.exporters]
    return {
        exporters.INSTALLED: "\n".join(f"{package} ii " for package in packages),
        wall.wall.rules_file: file_fact(firewall.render_rules(wall.wall, target.ports, list(wall.sources))),
        wall.wall.unit_file: file_fact(firewall.render_unit(wall.wall)),
        wall.wall.table_loaded: "loaded",
        exporters.DEFAULTS_FILE: file_fact(target.defaults()),
        exporters.NGINX_STATUS_FILE: file_fact(target.nginx_status()),
        exporters.NGINX_EXPORTER_DEFAULTS_FILE: file_fact(target.nginx_exporter_defaults()),
        exporters.POSTGRES_EXPORTER_DEFAULTS_FILE: file_fact(target.postgres_exporter_defaults()),
        exporters.PROMETHEUS_ROLE: "1",
        exporters.TRACKING_RECORDS: "1",
        exporters.TRACKING_METRICS_SCRIPT_FILE: file_fact((TEMPLATES / "prometheus" / "tracking_metrics.py").read_text()),
        exporters.TRACKING_METRICS_UNIT_FILE: file_fact(target.tracking_metrics_unit()),
        **running,
    }


def test_every_host_gets_an_exporter_on_its_inventory_address_answering_the_monitor_hosts_only(tmp_path):
    targets = {target.host.name: target for target in exporters.targets(inventory(tmp_path))}
    assert set(targets) == {"mon1", "t1", "m1"}
    assert targets["m1"].node.address == "[fd00::7]:9100" and "--web.listen-address=[fd00::7]:9100" in targets["m1"].defaults()
    assert targets["t1"].wall.sources == ("10.0.0.9",) and targets["t1"].ports == [9100, 9113, 9187, 9718], "node, nginx (TLS front door), postgres, tracking"
    assert targets["m1"].ports == [9100, 3903], "node, mtail (the models' answer logs)"
    assert "LOGS=/var/log/mlflow-models/*.log\n" in targets["m1"].mtail_defaults()
    assert targets["mon1"].ports == [9100, 9090], "the monitor's own Prometheus port is behind the wall while it installs"
    rules = firewall.render_rules(targets["t1"].wall.wall, [9100], ["10.0.0.9"])
    assert "table inet mlflow_fab_monitor" in rules and "tcp dport { 9100 } ip saddr { 10.0.0.9 } accept" in rules


def test_the_wall_goes_up_before_the_package_starts_the_exporter_and_a_new_config_restarts_it(tmp_path):
    target = exporters.targets(inventory(tmp_path))[1]
    names = changed(exporters.plan(target, Facts({exporters.TRACKING_RECORDS: "1"})))
    assert names.index("firewall") < names.index("packages") < names.index(f"file {exporters.NODE_EXPORTER_DEFAULTS}")
    assert names.index(f"file {exporters.NODE_EXPORTER_DEFAULTS}") < names.index(f"restart {exporters.NODE_EXPORTER}") < names.index(f"{exporters.NODE_EXPORTER} gate")


def test_a_converged_host_is_a_no_op_and_an_old_backup_seeds_the_backup_metric(tmp_path):
    target = exporters.targets(inventory(tmp_path))[1]
    assert changed(exporters.plan(target, Facts(converged_facts(target)))) == []
    seeded = exporters.plan(target, Facts({**converged_facts(target), exporters.UNRECORDED_BACKUP: "1764450000"}))
    assert changed(seeded) == ["backup metric"] and "mlflow_backup_last_success_timestamp_seconds %s" in seeded[-1].script
    assert '"1764450000"' in seeded[-1].script and "chmod 644" in seeded[-1].script


def test_prometheus_scrapes_every_host_with_its_roles_and_keeps_to_loopback(tmp_path):
    loaded = inventory(tmp_path)
    (target,) = prometheus.targets(loaded, exporters.targets(loaded))
    config = yaml.safe_load(target.config())
    assert config["global"]["scrape_interval"] == "15s" and config["rule_files"] == ["rules/*.yml"]
    nodes = next(job for job in config["scrape_configs"] if job["job_name"] == "node")["static_configs"]
    assert nodes == [{"targets": ["10.0.0.9:9100"], "labels": {"host": "mon1", "roles": "monitor"}},
                     {"targets": ["10.0.0.5:9100"], "labels": {"host": "t1", "roles": "tracking", "backups": "scheduled"}},
                     {"targets": ["[fd00::7]:9100"], "labels": {"host": "m1", "roles": "models"}}]
    assert "--web.listen-address=127.0.0.1:9090" in target.defaults() and "--storage.tsdb.retention.time=30d" in target.defaults()
    assert {rule.get("alert") for group in yaml.safe_load(target.rules())["groups"] for rule in group["rules"]} - {None} == {
        "TargetDown", "MlflowServiceDown", "UnitFailed", "DiskAlmostFull", "CertificateExpiresSoon", "BackupStale", "BackupNeverMade", "ModelErrors",
        "ModelSlow", "TrackingErrors"}


def test_a_new_config_is_checked_by_promtool_before_it_is_installed_then_reloaded(tmp_path):
    loaded = inventory(tmp_path)
    (target,) = prometheus.targets(loaded, exporters.targets(loaded))
    blackbox = target.blackbox
    facts = {prometheus.INSTALLED: "prometheus ii \ncurl ii \nprometheus-blackbox-exporter ii ", prometheus.DEFAULTS_FILE: file_fact(target.defaults()),
             prometheus.BLACKBOX_CONFIG_FILE: file_fact(render("prometheus/blackbox.yml.j2")),
             prometheus.BLACKBOX_DEFAULTS_FILE: file_fact(render("prometheus/blackbox.default.j2", config=prometheus.BLACKBOX_CONFIG,
                                                                 port=prometheus.BLACKBOX_PORT)),
             blackbox.state_fact: "ActiveState=active\nUnitFileState=enabled", blackbox.probe_fact: f"{blackbox.checks[0].label} 200",
             prometheus.CONFIG_FILE: file_fact("old"), prometheus.RULES_FILE: file_fact(target.rules()),
             prometheus.STATE: "ActiveState=active\nUnitFileState=enabled", target.probe_fact: "/-/ready 200"}
    names = changed(prometheus.plan(target, Facts(facts)))
    assert names == ["check config", f"file {prometheus.CONFIG}", "reload prometheus"]
    facts[prometheus.DEFAULTS_FILE] = file_fact("old")
    names = changed(prometheus.plan(target, Facts(facts)))
    assert "reload prometheus" not in names and f"restart {prometheus.PROMETHEUS}" in names and "health gate" in names


def test_a_failed_promtool_check_installs_nothing(tmp_path):
    from types import SimpleNamespace

    from tasks.monitoring.setup import setup_monitoring
    from tasks.ops import facts as f

    loaded = inventory(tmp_path)
    fleet = FakeFleet({"mon1": FakeHost(facts={f.os_release(): DEBIAN}, fail="promtool check config"),
                       "t1": FakeHost(facts={f.os_release(): DEBIAN, exporters.TRACKING_RECORDS: "1"}),
                       "m1": FakeHost(facts={f.os_release(): DEBIAN})})
    reports = {report.host: report for report in setup_monitoring(SimpleNamespace(clone=lambda: None), loaded, False,
                                                                  connect=lambda host, config: fleet(host))}
    assert reports["mon1"].failed and not reports["t1"].failed
    (applied,) = [sent.script for sent in fleet.sent("mon1") if "promtool check config" in sent.script]
    assert applied.index("promtool check config") < applied.index(prometheus.CONFIG)


@pytest.mark.parametrize("text, expected", [
    ("[monitoring]\nretention = \"two weeks\"\n", "retention must be a duration"),
    ("[monitoring]\nnode_exporter_port = 5000\n[hosts.t1]\naddress = \"10.0.0.5\"\nroles = [\"tracking\"]\n", "node_exporter_port 5000 is the tracking port"),
    ("[monitoring]\nscrape = \"1s\"\n", r"unknown key 'scrape' in \[monitoring\]"),
    ("[monitoring]\ntracking_metrics_port = 5000\n[hosts.t1]\naddress = \"10.0.0.5\"\nroles = [\"tracking\"]\n", "tracking_metrics_port 5000 is the tracking port"),
    ("[monitoring]\ntracking_error_ratio = 5\n", "tracking_error_ratio must be between 0 and 1"),
    ("[hosts.x]\naddress = \"10.0.0.5\"\nroles = [\"monitoring\"]\n", "unknown role 'monitoring'"),
])
def test_bad_monitoring_settings_are_refused_naming_the_key(tmp_path, text, expected):
    with pytest.raises(InventoryError, match=expected):
        inventory(tmp_path, text)


def test_lb_hosts_turn_their_model_log_into_request_metrics_for_the_monitor_hosts(tmp_path):
    loaded = inventory(tmp_path, INVENTORY + '[hosts.lb1]\naddress = "10.0.0.20"\nroles = ["lb"]\n')
    targets = {target.host.name: target for target in exporters.targets(loaded)}
    lb = targets["lb1"]
    assert lb.ports == [9100, 3903, 9113] and not targets["t1"].balancer
    names = changed(exporters.plan(lb, Facts({})))
    assert names.index("compile mtail program") < names.index(f"file {exporters.MTAIL_PROGRAM}") < names.index("restart mtail")
    assert "LOGS=/var/log/nginx/mlflow-models.log" in lb.mtail_defaults() and "HOST=10.0.0.20" in lb.mtail_defaults()
    (target,) = prometheus.targets(loaded, list(targets.values()))
    jobs = {job["job_name"]: job["static_configs"] for job in yaml.safe_load(target.config())["scrape_configs"]}
    assert jobs["balancer"] == [{"targets": ["10.0.0.20:3903"], "labels": {"host": "lb1"}}]
    assert "model:latency_seconds:p99_5m > 2" in target.rules()


def test_the_balancer_logs_each_answer_in_the_form_the_mtail_program_reads():
    import re

    from tasks.serving.balancer import REQUESTS_LOG, Server, Upstream, render_config

    config = render_config(Upstream("wine-2", 8001, (Server("m1", "10.0.0.5", 5001),)), LbSettings())
    assert "log_format mlflow_model_wine_2 'wine-2 $status $request_time \"$upstream_addr\"';" in config
    assert f"access_log {REQUESTS_LOG} mlflow_model_wine_2;" in config
    pattern = re.search(r"^/(.*)/ \{$", exporters.program_text(), re.MULTILINE).group(1)  # RE2 and Python agree on it
    line = 'wine-2 502 2.003 "10.0.0.5:5001, 10.0.0.6:5001"'
    assert re.fullmatch(pattern, line).group("upstream") == "10.0.0.6:5001", "the server that answered last"


def test_status_shows_each_models_figures_as_prometheus_gives_them():
    from tasks.monitoring.live import parse_figures

    def answer(*results):
        return json.dumps({"status": "success", "data": {"result": [{"metric": {"model": m}, "value": [0, v]} for m, v in results]}})

    text = "\n".join([f"requests/s\t{answer(('wine', '12.3456'), ('iris', '0'))}", f"errors\t{answer(('wine', '0.0123'), ('iris', 'NaN'))}",
                      f"p99\t{answer(('wine', '0.0456'))}", "p99\tcurl: (7) Failed to connect"])
    assert parse_figures(text) == {"wine": {"requests/s": "12.35", "errors": "1.2%", "p99": "46 ms"},
                                   "iris": {"requests/s": "0.00", "errors": "-"}}
    assert parse_figures("requests/s\t") == {}


def test_status_reads_the_live_figures_on_the_monitor_host_only():
    from tasks.inventory import Host, TrackingSettings
    from tasks.monitoring.live import figures_fact
    from tasks.overview.status import LIVE_FIGURES, host_status
    from tasks.report import HostReport
    from tasks.tracking.service import TrackingService

    service = TrackingService(TrackingSettings(), ())
    answer = json.dumps({"data": {"result": [{"metric": {"model": "wine"}, "value": [0, "2"]}]}})
    fleet = FakeFleet({"mon1": FakeHost(facts={figures_fact(9090): f"requests/s\t{answer}"}), "m1": FakeHost()})
    reports = {name: HostReport(name) for name in ("mon1", "m1")}
    host_status(fleet(Host(name="mon1", address="10.0.0.9", roles=("monitor",))), reports["mon1"], service, 9090)
    host_status(fleet(Host(name="m1", address="10.0.0.5", roles=("models",))), reports["m1"], service, 9090)
    assert reports["mon1"].details[LIVE_FIGURES] == {"wine": {"requests/s": "2.00"}} and LIVE_FIGURES not in reports["m1"].details


def test_where_nginx_or_postgresql_run_their_exporters_follow(tmp_path):
    with_db = INVENTORY.replace('backup_schedule = "daily"', 'backup_schedule = "daily"\ndatabase = "host"').replace(
        "[monitoring]", "[monitoring]\npostgres_exporter_port = 9300")
    loaded = inventory(tmp_path, with_db + '[hosts.db1]\naddress = "10.0.0.30"\nroles = ["db"]\n')
    targets = {target.host.name: target for target in exporters.targets(loaded)}
    assert [e.unit for e in targets["db1"].exporters] == [exporters.NODE_EXPORTER, exporters.POSTGRES_EXPORTER]
    assert exporters.POSTGRES_EXPORTER not in [e.unit for e in targets["t1"].exporters], "a replica has no PostgreSQL of its own"
    steps = exporters.plan(targets["db1"], Facts({}))
    names = changed(steps)
    assert names.index("packages (postgres exporter)") < names.index("database role prometheus") < names.index(f"restart {exporters.POSTGRES_EXPORTER}")
    assert "GRANT pg_monitor TO prometheus" in next(step.script for step in steps if step.name == "database role prometheus")
    assert "--web.listen-address=10.0.0.30:9300" in targets["db1"].postgres_exporter_defaults()
    restart = next(step for step in steps if step.name == f"restart {exporters.POSTGRES_EXPORTER}")
    lines = restart.script.splitlines()
    stop, forget, start = (lines.index(f"systemctl {verb} {exporters.POSTGRES_EXPORTER}" + tail)
                           for verb, tail in (("stop", ""), ("reset-failed", " 2>/dev/null || true"), ("start", "")))
    assert stop < forget < start, "failures before its config forgotten once it is stopped, when no restart of systemd's can be pending"
    no_tls = inventory(tmp_path, INVENTORY.replace("[monitoring]", "[tracking]\ntls = false\n[monitoring]", 1).replace('[tracking]\nbackup_schedule = "daily"\n', "", 1))
    t1 = next(target for target in exporters.targets(no_tls) if target.host.name == "t1")
    assert [e.unit for e in t1.exporters] == [exporters.NODE_EXPORTER, exporters.POSTGRES_EXPORTER, exporters.TRACKING_METRICS], "no nginx without TLS"


def test_every_tls_endpoint_is_probed_for_its_certificate_and_each_exporter_has_its_job(tmp_path):
    loaded = inventory(tmp_path, INVENTORY.replace("[monitoring]", "[models.wine]\nport = 8001\n[monitoring]") + '[hosts.lb1]\naddress = "10.0.0.20"\nroles = ["lb"]\n')
    (target,) = prometheus.targets(loaded, exporters.targets(loaded))
    config = yaml.safe_load(target.config())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"prometheus", "node", "balancer", "models", "nginx", "postgres", "tracking", "tls"}
    assert [c["targets"][0] for c in jobs["models"]["static_configs"]] == ["[fd00::7]:3903"]
    assert [c["targets"][0] for c in jobs["nginx"]["static_configs"]] == ["10.0.0.5:9113", "10.0.0.20:9113"]
    assert [c["targets"][0] for c in jobs["postgres"]["static_configs"]] == ["10.0.0.5:9187"]
    assert jobs["tls"]["static_configs"] == [{"targets": ["10.0.0.5:5000"], "labels": {"host": "t1", "endpoint": "tracking"}},
                                             {"targets": ["10.0.0.20:8001"], "labels": {"host": "lb1", "endpoint": "model wine"}}]
    assert jobs["tls"]["relabel_configs"][-1]["replacement"] == "127.0.0.1:9115" and jobs["tls"]["params"] == {"module": ["tls_connect"]}
    assert "CertificateExpiresSoon" in target.rules()


def test_a_tracking_host_serves_its_servers_own_metrics_apart_from_its_sign_in(tmp_path):
    target = exporters.targets(inventory(tmp_path))[1]
    steps = exporters.plan(target, Facts({exporters.TRACKING_RECORDS: "1"}))
    names = changed(steps)
    assert names.index(f"file {exporters.TRACKING_METRICS_SCRIPT}") < names.index(f"restart {exporters.TRACKING_METRICS}") < names.index(f"{exporters.TRACKING_METRICS} gate")
    assert names.index(f"file {exporters.TRACKING_METRICS_UNIT}") < names.index("daemon-reload") < names.index(f"restart {exporters.TRACKING_METRICS}")
    unit = target.tracking_metrics_unit()
    assert "BindsTo=mlflow-tracking.service" in unit and "WantedBy=mlflow-tracking.service" in unit, "started and stopped with the server"
    assert "User=mlflow" in unit and "ReadWritePaths" not in unit and "read-only system." in unit
    assert ('ExecStart=/bin/sh -c \'exec "$$(grep -o "/opt/mlflow/envs/tracking-[0-9a-f]*" /etc/systemd/system/mlflow-tracking.service | head -1)'
            '/bin/python" /usr/local/lib/mlflow-fab/tracking_metrics.py /run/mlflow-tracking 10.0.0.5 9718\'') in unit
    gate = steps[names.index(f"{exporters.TRACKING_METRICS} gate")]
    assert "10.0.0.5:9718/metrics" in gate.summary


def test_a_tracking_server_that_records_no_metrics_stops_setup_monitoring_on_its_host_saying_what_to_do(tmp_path):
    target = exporters.targets(inventory(tmp_path))[1]
    (step,) = exporters.plan(target, Facts({exporters.TRACKING_RECORDS: "0"}))
    assert step.failed and "run `fab setup-tracking` first" in step.summary


def test_prometheus_scrapes_each_tracking_servers_metrics_and_alerts_on_its_errors(tmp_path):
    loaded = inventory(tmp_path, INVENTORY.replace("model_p99_seconds = 2", "model_p99_seconds = 2\ntracking_error_ratio = 0.2"))
    (target,) = prometheus.targets(loaded, exporters.targets(loaded))
    jobs = {job["job_name"]: job for job in yaml.safe_load(target.config())["scrape_configs"]}
    assert jobs["tracking"]["static_configs"] == [{"targets": ["10.0.0.5:9718"], "labels": {"host": "t1"}}]
    assert "tracking:errors:ratio5m > 0.2" in target.rules()


def test_fab_monitor_prints_its_url_only_once_the_tunnels_port_takes_connections():
    import socket

    from tasks.cli.monitoring import free_local_port, listening

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert listening(server.getsockname()[1])
    assert not listening(free_local_port(), timeout=0.2)
