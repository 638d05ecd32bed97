"""What every host runs for the monitor hosts: Debian's node exporter on the host's inventory address (CPU, memory, disks,
the states of our systemd units, and the textfile metrics our scripts leave); mtail on lb hosts, turning the
balancer's model log into request metrics per model and model host, and on model hosts, turning each model's answer log
into the host's own (what a model with no balancer in front has); the nginx and PostgreSQL exporters where those run;
on tracking hosts the server's own request metrics. Each answers the monitor hosts only.

Runbook this replaces: apt-get install prometheus-node-exporter (which listens on every interface); edit
/etc/default/prometheus-node-exporter; grep the nginx log for 5xx by hand; open the ports to the Prometheus server in the
firewall, or forget to.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from tasks.inventory import Host, Inventory, MonitoringSettings
from tasks.ops import facts as f
from tasks.ops import firewall
from tasks.ops.files import ensure_file
from tasks.ops.firewall import FirewallPolicy, Wall
from tasks.ops.health import HttpCheck, gate_script, probe_command, probe_healthy
from tasks.ops.metrics import TEXTFILE_DIR, textfile_script
from tasks.ops.nginx import config_step
from tasks.ops.pyenv import ENVS_ROOT
from tasks.ops.steps import Step
from tasks.ops.system import ensure_packages
from tasks.ops.systemd import daemon_reload, ensure_enabled, ensure_running
from tasks.serving.balancer import REQUESTS_LOG
from tasks.serving.deploy import ANSWERS_LOGS
from tasks.templates import TEMPLATES, render, render_script
from tasks.tracking import server as tracking_server
from tasks.tracking.server import BACKUP_DIR, BACKUP_METRIC
from tasks.values import address_port

NODE_EXPORTER = "prometheus-node-exporter"
NODE_EXPORTER_DEFAULTS = f"/etc/default/{NODE_EXPORTER}"
MTAIL = "mtail"
MTAIL_DEFAULTS = "/etc/default/mtail"
MTAIL_PROGRAM = "/etc/mtail/mlflow-models.mtail"
NGINX_EXPORTER = "prometheus-nginx-exporter"
NGINX_EXPORTER_DEFAULTS = f"/etc/default/{NGINX_EXPORTER}"
NGINX_STATUS_CONFIG = "/etc/nginx/conf.d/mlflow-fab-status.conf"
POSTGRES_EXPORTER = "prometheus-postgres-exporter"
POSTGRES_EXPORTER_DEFAULTS = f"/etc/default/{POSTGRES_EXPORTER}"
TRACKING_METRICS = f"{tracking_server.UNIT}-metrics"
TRACKING_METRICS_UNIT = f"/etc/systemd/system/{TRACKING_METRICS}.service"
TRACKING_METRICS_SCRIPT = "/usr/local/lib/mlflow-fab/tracking_metrics.py"
MONITOR_WALL = Wall("exporter ports", "the monitor hosts", "inet mlflow_fab_monitor", "/etc/mlflow/firewall-monitor.nft",
                    "mlflow-fab-firewall-monitor.service", "setup-monitoring")
# The units whose states the node exporter reports (anchored by the exporter; `[.]` survives systemd's unquoting).
OUR_UNITS = "(mlflow-.+|nginx|postgresql.*|prometheus.*|fail2ban)[.]service"
GATE_TIMEOUT = 60
BACKUP_METRIC_FILE = f"{TEXTFILE_DIR}/mlflow_backup.prom"

# curl: the gates ask the exporters as Prometheus would
EXPORTER_PACKAGES = [NODE_EXPORTER, "curl"]
INSTALLED = f.installed_packages(firewall.FIREWALL_PACKAGES + EXPORTER_PACKAGES + [MTAIL, NGINX_EXPORTER, POSTGRES_EXPORTER])
DEFAULTS_FILE = f.file_content(NODE_EXPORTER_DEFAULTS)
MTAIL_DEFAULTS_FILE = f.file_content(MTAIL_DEFAULTS)
MTAIL_PROGRAM_FILE = f.file_content(MTAIL_PROGRAM)
NGINX_EXPORTER_DEFAULTS_FILE = f.file_content(NGINX_EXPORTER_DEFAULTS)
NGINX_STATUS_FILE = f.file_content(NGINX_STATUS_CONFIG)
POSTGRES_EXPORTER_DEFAULTS_FILE = f.file_content(POSTGRES_EXPORTER_DEFAULTS)
TRACKING_METRICS_UNIT_FILE = f.file_content(TRACKING_METRICS_UNIT)
TRACKING_METRICS_SCRIPT_FILE = f.file_content(TRACKING_METRICS_SCRIPT)
# 1 when the tracking server records its requests (a server set up before this fabfile did not)
TRACKING_RECORDS = f.Fact("tracking_records_metrics", f"grep -c -- '--expose-prometheus' {tracking_server.UNIT_PATH}")
# the exporter signs in to PostgreSQL as its own OS user (peer), a role that may read the statistics and nothing else
PROMETHEUS_ROLE = f.Fact("pg_role_prometheus", "cd / && runuser -u postgres -- psql -tAX -c \"select 1 from pg_roles where rolname = 'prometheus'\"")

# the newest backup's time (seconds since the epoch), when the host makes backups and no backup metric is there yet
UNRECORDED_BACKUP = f.Fact("unrecorded_backup", f"[ -e {BACKUP_METRIC_FILE} ] || ls -1t {BACKUP_DIR}/mlflow-backup-*.tar 2>/dev/null "
                                                "| head -1 | xargs -r stat -c %Y")


@dataclass(frozen=True)
class Exporter:
    """One exporter's service: its unit, where it listens, and a metric its /metrics always shows."""

    unit: str
    host_address: str
    port: int
    shows: str

    @property
    def address(self) -> str:
        return address_port(self.host_address, self.port)

    @property
    def checks(self) -> list[HttpCheck]:
        return [HttpCheck("/metrics", base=f"http://{self.address}", expect=self.shows)]

    @property
    def probe_fact(self) -> f.Fact[str]:
        return f.Fact(f"probe:{self.unit}", probe_command(self.port, self.checks))

    @property
    def state_fact(self) -> f.Fact[dict[str, str]]:
        return f.service_state(self.unit)

    def facts(self) -> list[f.Fact]:
        return [self.state_fact, self.probe_fact]


@dataclass(frozen=True)
class ExporterTarget:
    """One host's exporters as they should be, and who may scrape them."""

    host: Host
    settings: MonitoringSettings
    monitors: tuple[str, ...]  # the monitor hosts' addresses
    # Prometheus on this host (a monitor host): its port is behind the same wall while the package starts it on every
    # interface, before setup-monitoring gives it 127.0.0.1
    prometheus_port: int | None = None

    @property
    def wall(self) -> FirewallPolicy:
        return FirewallPolicy(MONITOR_WALL, self.monitors, off_because="no monitor hosts")

    @property
    def balancer(self) -> bool:
        """An lb host: mtail reads its model log."""
        return "lb" in self.host.roles

    @property
    def serves_models(self) -> bool:
        """A model host: mtail reads each model's answer log."""
        return "models" in self.host.roles

    @property
    def runs_mtail(self) -> bool:
        return self.balancer or self.serves_models

    @property
    def answers_only(self) -> bool:
        """mtail of a model host that is no lb host (a balancer's mtail is scraped as the balancer's, answers and all)."""
        return self.serves_models and not self.balancer

    @property
    def node(self) -> Exporter:
        return Exporter(NODE_EXPORTER, self.host.address, self.settings.node_exporter_port, "node_exporter_build_info")

    @property
    def mtail(self) -> Exporter:
        return Exporter(MTAIL, self.host.address, self.settings.mtail_port, "mtail_lines_total")

    @property
    def runs_nginx(self) -> bool:
        """An lb host, or a tracking server's TLS front door."""
        return self.balancer or ("tracking" in self.host.roles and self.host.tracking.tls)

    @property
    def runs_postgresql(self) -> bool:
        """A db host, or a one-host tracking server with its own PostgreSQL."""
        return "db" in self.host.roles or ("tracking" in self.host.roles and self.host.tracking.database == "local")

    @property
    def runs_tracking(self) -> bool:
        return "tracking" in self.host.roles

    @property
    def tracking(self) -> Exporter:
        return Exporter(TRACKING_METRICS, self.host.address, self.settings.tracking_metrics_port, "mlflow_exporter_info")

    @property
    def nginx(self) -> Exporter:
        return Exporter(NGINX_EXPORTER, self.host.address, self.settings.nginx_exporter_port, "nginx_up")

    @property
    def postgres(self) -> Exporter:
        return Exporter(POSTGRES_EXPORTER, self.host.address, self.settings.postgres_exporter_port, "pg_up")

    @property
    def exporters(self) -> list[Exporter]:
        """Every exporter of this host, the node exporter first."""
        return ([self.node] + ([self.mtail] if self.runs_mtail else []) + ([self.nginx] if self.runs_nginx else [])
                + ([self.postgres] if self.runs_postgresql else []) + ([self.tracking] if self.runs_tracking else []))

    @property
    def ports(self) -> list[int]:
        return [exporter.port for exporter in self.exporters] + ([self.prometheus_port] if self.prometheus_port else [])

    def defaults(self) -> str:
        return render("prometheus-node-exporter.default.j2", listen=self.node.address, units=OUR_UNITS, textfile_dir=TEXTFILE_DIR)

    def mtail_defaults(self) -> str:
        logs = ([REQUESTS_LOG] if self.balancer else []) + ([ANSWERS_LOGS] if self.serves_models else [])
        return render("prometheus/mtail.default.j2", logs=logs, address=self.host.address, port=self.mtail.port)

    def nginx_status(self) -> str:
        return render("prometheus/nginx-status.conf.j2", port=self.settings.nginx_status_port)

    def nginx_exporter_defaults(self) -> str:
        return render("prometheus/nginx-exporter.default.j2", listen=self.nginx.address, port=self.settings.nginx_status_port)

    def postgres_exporter_defaults(self) -> str:
        return render("prometheus/postgres-exporter.default.j2", listen=self.postgres.address)

    def tracking_metrics_unit(self) -> str:
        return render("prometheus/mlflow-tracking-metrics.service.j2", unit=TRACKING_METRICS, tracking_unit=tracking_server.UNIT,
                      tracking_unit_path=tracking_server.UNIT_PATH, envs_root=ENVS_ROOT, user=tracking_server.SERVICE_USER,
                      script=TRACKING_METRICS_SCRIPT, metrics_dir=tracking_server.METRICS_DIR, address=self.host.address,
                      port=self.tracking.port, writable=[])

    def facts(self) -> list[f.Fact]:
        mtail = [MTAIL_DEFAULTS_FILE, MTAIL_PROGRAM_FILE, *self.mtail.facts()] if self.runs_mtail else []
        nginx = [NGINX_STATUS_FILE, NGINX_EXPORTER_DEFAULTS_FILE, *self.nginx.facts()] if self.runs_nginx else []
        postgres = [PROMETHEUS_ROLE, POSTGRES_EXPORTER_DEFAULTS_FILE, *self.postgres.facts()] if self.runs_postgresql else []
        tracking = [TRACKING_RECORDS, TRACKING_METRICS_SCRIPT_FILE, TRACKING_METRICS_UNIT_FILE, *self.tracking.facts()] if self.runs_tracking else []
        return [f.os_release(), INSTALLED, *firewall.facts(self.wall), DEFAULTS_FILE, *self.node.facts(), UNRECORDED_BACKUP,
                *mtail, *nginx, *postgres, *tracking]


def targets(inventory: Inventory) -> list[ExporterTarget]:
    monitors = tuple(host.address for host in inventory.with_role("monitor"))
    return [ExporterTarget(host, inventory.monitoring, monitors,
                           inventory.monitoring.prometheus_port if "monitor" in host.roles else None)
            for host in inventory.hosts.values()]


def plan(target: ExporterTarget, facts: f.Facts) -> list[Step]:
    """The wall first (the package starts the exporter on every interface), then the exporter on the inventory address."""
    if target.runs_tracking and facts[TRACKING_RECORDS].strip() in ("", "0"):
        return [Step.failure("tracking server metrics", "the tracking server does not record its requests (it was set up by an "
                             "older fabfile, or is not set up): run `fab setup-tracking` first, then setup-monitoring again")]
    installed = facts[INSTALLED]
    wall = [ensure_packages(firewall.FIREWALL_PACKAGES, installed, name="packages (firewall)"),
            *firewall.steps(target.wall, target.ports, facts)]
    package = ensure_packages(EXPORTER_PACKAGES, installed)
    defaults = ensure_file(NODE_EXPORTER_DEFAULTS, target.defaults(), facts[DEFAULTS_FILE])
    steps = [*wall, package, defaults, *serving_steps(target.node, facts, {"the package": package, NODE_EXPORTER_DEFAULTS: defaults})]
    steps += mtail_steps(target, facts) if target.runs_mtail else []
    steps += nginx_exporter_steps(target, facts) if target.runs_nginx else []
    steps += postgres_exporter_steps(target, facts) if target.runs_postgresql else []
    steps += tracking_metrics_steps(target, facts) if target.runs_tracking else []
    return steps + backup_metric_steps(facts[UNRECORDED_BACKUP])


def nginx_exporter_steps(target: ExporterTarget, facts: f.Facts) -> list[Step]:
    """nginx's stub_status on 127.0.0.1 (validated with nginx -t, reloaded), and the exporter reading it."""
    status = config_step(NGINX_STATUS_CONFIG, target.nginx_status(), facts[NGINX_STATUS_FILE])
    package = ensure_packages([NGINX_EXPORTER], facts[INSTALLED], name="packages (nginx exporter)")
    defaults = ensure_file(NGINX_EXPORTER_DEFAULTS, target.nginx_exporter_defaults(), facts[NGINX_EXPORTER_DEFAULTS_FILE])
    # the exporter exits when nginx refuses it, and its gate fails on that restart: nginx answers first
    stub_status = f"http://127.0.0.1:{target.settings.nginx_status_port}/stub_status"
    answering = (f"for i in $(seq 100); do curl -sf -o /dev/null {stub_status} && break; sleep 0.1; done\n"
                 f"curl -sf -o /dev/null {stub_status} || {{ echo 'nginx does not answer {stub_status}'; exit 1; }}")
    inputs = {"the package": package, NGINX_EXPORTER_DEFAULTS: defaults}
    return [status, package, defaults, *serving_steps(target.nginx, facts, inputs, before_start=answering)]


def postgres_exporter_steps(target: ExporterTarget, facts: f.Facts) -> list[Step]:
    """The exporter as role prometheus (pg_monitor: statistics only), over the local socket."""
    package = ensure_packages([POSTGRES_EXPORTER], facts[INSTALLED], name="packages (postgres exporter)")
    if facts[PROMETHEUS_ROLE].strip() == "1":
        role = Step.ok("database role prometheus", "exists")
    else:
        role = Step.change("database role prometheus", "create, member of pg_monitor; it signs in as the exporter's OS user (peer)",
                           "cd / && runuser -u postgres -- psql -qX -v ON_ERROR_STOP=1 -c 'CREATE ROLE prometheus LOGIN' "
                           "-c 'GRANT pg_monitor TO prometheus'")
    defaults = ensure_file(POSTGRES_EXPORTER_DEFAULTS, target.postgres_exporter_defaults(), facts[POSTGRES_EXPORTER_DEFAULTS_FILE])
    inputs = {"the package": package, "database role prometheus": role, POSTGRES_EXPORTER_DEFAULTS: defaults}
    return [package, role, defaults, *serving_steps(target.postgres, facts, inputs)]


def tracking_metrics_steps(target: ExporterTarget, facts: f.Facts) -> list[Step]:
    """The tracking server's request metrics served apart from it, so Prometheus needs no MLflow user (its sign-in lets
    only admins read the server's own /metrics) and the API stays closed to anonymous clients."""
    script = ensure_file(TRACKING_METRICS_SCRIPT, (TEMPLATES / "prometheus" / "tracking_metrics.py").read_text(), facts[TRACKING_METRICS_SCRIPT_FILE])
    unit = ensure_file(TRACKING_METRICS_UNIT, target.tracking_metrics_unit(), facts[TRACKING_METRICS_UNIT_FILE])
    inputs = {TRACKING_METRICS_SCRIPT: script, TRACKING_METRICS_UNIT: unit}
    return [script, unit, daemon_reload(unit.changed), *serving_steps(target.tracking, facts, inputs)]


def mtail_steps(target: ExporterTarget, facts: f.Facts) -> list[Step]:
    """mtail on the balancer's model log and the models' answer logs, its program compiled before it is installed; a change restarts it (the
    counters start again from 0, which Prometheus' rate() takes as a reset)."""
    package = ensure_packages([MTAIL], facts[INSTALLED], name="packages (mtail)")
    program = program_text()
    compiled = Step.change("compile mtail program", "mtail --compile_only on the new program, before it is installed",
                           render_script("prometheus/mtail-compile.sh.j2", program=base64.b64encode(program.encode()).decode()))
    install = ensure_file(MTAIL_PROGRAM, program, facts[MTAIL_PROGRAM_FILE])
    defaults = ensure_file(MTAIL_DEFAULTS, target.mtail_defaults(), facts[MTAIL_DEFAULTS_FILE])
    inputs = {"the package": package, MTAIL_PROGRAM: install, MTAIL_DEFAULTS: defaults}
    return [package, *([compiled] if install.changed else []), install, defaults, *serving_steps(target.mtail, facts, inputs)]


def serving_steps(exporter: Exporter, facts: f.Facts, inputs: dict[str, Step], before_start: str = "") -> list[Step]:
    """(Re)started when an input changed or it is down (after BEFORE_START, a script), enabled, and gated on its /metrics
    as Prometheus will ask it."""
    restart = ensure_running(exporter.unit, exporter.port, facts[exporter.state_fact], [name for name, step in inputs.items() if step.changed])
    if restart.changed and before_start:
        restart.script = f"{before_start}\n{restart.script}"
    steps = [restart, ensure_enabled(exporter.unit, facts[exporter.state_fact])]
    if restart.changed or not probe_healthy(facts[exporter.probe_fact], exporter.checks):
        return steps + [Step.change(f"{exporter.unit} gate", f"wait up to {GATE_TIMEOUT} s for {exporter.address}/metrics",
                                    gate_script(exporter.unit, exporter.port, exporter.checks, GATE_TIMEOUT, after_restart=restart.changed))]
    return steps + [Step.ok(f"{exporter.unit} gate", f"{exporter.address}/metrics answers")]


def program_text() -> str:
    return (TEMPLATES / "prometheus" / "mlflow-models.mtail").read_text()


def backup_metric_steps(newest_backup: str) -> list[Step]:
    """A host whose backups were made before the exporter was here: the newest one's time, so the alert on stopped
    backups starts from it (mlflow-backup writes it from now on)."""
    if not newest_backup.strip().isdigit():
        return []
    seed = textfile_script("mlflow_backup", BACKUP_METRIC, "When mlflow-backup last made a backup.", newest_backup.strip())
    return [Step.change("backup metric", f"{BACKUP_METRIC} from the newest backup in {BACKUP_DIR}", seed)]
