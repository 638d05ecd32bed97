"""Prometheus on the monitor hosts: Debian's package on 127.0.0.1 only (`fab monitor` tunnels to it), its scrape config
drawn from hosts.toml and our alert rules, both checked with promtool before they replace the ones in use.

Runbook this replaces: apt-get install prometheus (which listens on every interface with a sample config); edit
prometheus.yml by hand for every new server; copy alert rules from a blog; kill -HUP and hope the config was valid.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from tasks.converge import converge_host
from tasks.inventory import Host, Inventory, MonitoringSettings
from tasks.monitoring.exporters import Exporter, ExporterTarget, serving_steps
from tasks.serving.balancer import model_names
from tasks.tracking.service import TrackingService
from tasks.ops import facts as f
from tasks.ops.files import ensure_file
from tasks.ops.health import HttpCheck, gate_script, probe_command, probe_healthy
from tasks.ops.remote import Remote
from tasks.ops.steps import Step
from tasks.ops.system import ensure_packages
from tasks.ops.systemd import ensure_enabled, ensure_running
from tasks.report import HostReport, show_note
from tasks.templates import render, render_script
from tasks.values import address_port

PROMETHEUS = "prometheus"
DEFAULTS = "/etc/default/prometheus"
CONFIG = "/etc/prometheus/prometheus.yml"
RULES = "/etc/prometheus/rules/mlflow-fab.yml"
GATE_TIMEOUT = 120

PROMETHEUS_PACKAGES = [PROMETHEUS, "curl"]  # curl: the reload and the gate read its metrics
BLACKBOX = "prometheus-blackbox-exporter"
BLACKBOX_CONFIG = "/etc/prometheus/mlflow-fab-blackbox.yml"
BLACKBOX_DEFAULTS = f"/etc/default/{BLACKBOX}"
BLACKBOX_PORT = 9115
INSTALLED = f.installed_packages(PROMETHEUS_PACKAGES + [BLACKBOX])
BLACKBOX_CONFIG_FILE = f.file_content(BLACKBOX_CONFIG)
BLACKBOX_DEFAULTS_FILE = f.file_content(BLACKBOX_DEFAULTS)
DEFAULTS_FILE = f.file_content(DEFAULTS)
CONFIG_FILE = f.file_content(CONFIG)
RULES_FILE = f.file_content(RULES)
STATE = f.service_state(PROMETHEUS)


@dataclass(frozen=True)
class ScrapeTarget:
    address: str
    labels: dict[str, str]


@dataclass(frozen=True)
class PrometheusTarget:
    """One monitor host's Prometheus as it should be: what it scrapes, how long it keeps it."""

    host: Host
    settings: MonitoringSettings
    # job name -> what it scrapes: the node exporters first, then mtail (balancers, model hosts), the nginx and PostgreSQL exporters and the
    # tracking servers' metrics where they run
    jobs: dict[str, tuple[ScrapeTarget, ...]]
    # the TLS endpoints of hosts.toml, whose certificates the blackbox exporter here reads
    tls_endpoints: tuple[ScrapeTarget, ...] = ()

    @property
    def nodes(self) -> tuple[ScrapeTarget, ...]:
        return self.jobs["node"]

    @property
    def blackbox(self) -> Exporter | None:
        return Exporter(BLACKBOX, "127.0.0.1", BLACKBOX_PORT, "blackbox_exporter_build_info") if self.tls_endpoints else None

    @property
    def port(self) -> int:
        return self.settings.prometheus_port

    @property
    def checks(self) -> list[HttpCheck]:
        return [HttpCheck("/-/ready")]

    @property
    def probe_fact(self) -> f.Fact[str]:
        return f.Fact("prometheus_probe", probe_command(self.port, self.checks))

    def defaults(self) -> str:
        return render("prometheus/prometheus.default.j2", port=self.port, retention=self.settings.retention, config=CONFIG)

    def config(self) -> str:
        return render("prometheus/prometheus.yml.j2", settings=self.settings, monitor=self.host.name, jobs=self.jobs,
                      tls_endpoints=self.tls_endpoints, blackbox=self.blackbox)

    def rules(self) -> str:
        return render("prometheus/mlflow-fab-rules.yml.j2", error_ratio=self.settings.model_error_ratio, p99=self.settings.model_p99_seconds,
                      tracking_error_ratio=self.settings.tracking_error_ratio)

    def facts(self) -> list[f.Fact]:
        blackbox = [BLACKBOX_CONFIG_FILE, BLACKBOX_DEFAULTS_FILE, *self.blackbox.facts()] if self.blackbox else []
        return [f.os_release(), INSTALLED, DEFAULTS_FILE, CONFIG_FILE, RULES_FILE, STATE, self.probe_fact, *blackbox]


def node_target(exporter: ExporterTarget) -> ScrapeTarget:
    host = exporter.host
    labels = {"host": host.name, "roles": ",".join(host.roles)}
    if "tracking" in host.roles and host.tracking.backup_schedule:
        labels["backups"] = "scheduled"
    return ScrapeTarget(exporter.node.address, labels)


def scrape_jobs(exporters: list[ExporterTarget]) -> dict[str, tuple[ScrapeTarget, ...]]:
    jobs = {"node": tuple(node_target(exporter) for exporter in exporters)}
    for job, runs, exporter_of in (("balancer", "balancer", "mtail"), ("models", "answers_only", "mtail"), ("nginx", "runs_nginx", "nginx"), ("postgres", "runs_postgresql", "postgres"),
                                    ("tracking", "runs_tracking", "tracking")):
        found = tuple(ScrapeTarget(getattr(target, exporter_of).address, {"host": target.host.name}) for target in exporters if getattr(target, runs))
        if found:
            jobs[job] = found
    return jobs


def tls_endpoints(inventory: Inventory) -> tuple[ScrapeTarget, ...]:
    """What clients reach over TLS: each one-host tracking server's front door, and on lb hosts each model's port and the
    tracking service's (the replicas behind a balancer answer it alone)."""
    service = TrackingService.of(inventory)
    endpoints = [ScrapeTarget(address_port(host.address, host.tracking.port), {"host": host.name, "endpoint": "tracking"})
                 for host in inventory.with_role("tracking") if host.tracking.tls and not service.fronted]
    for lb in inventory.with_role("lb"):
        if inventory.lb.tls:
            endpoints += [ScrapeTarget(address_port(lb.address, inventory.models.get(name, inventory.models[""]).port),
                                       {"host": lb.name, "endpoint": f"model {name}"}) for name in model_names(inventory)]
        if service.fronted and service.settings.tls:
            endpoints.append(ScrapeTarget(address_port(lb.address, service.settings.port), {"host": lb.name, "endpoint": "tracking"}))
    return tuple(endpoints)


def targets(inventory: Inventory, exporters: list[ExporterTarget]) -> list[PrometheusTarget]:
    jobs, endpoints = scrape_jobs(exporters), tls_endpoints(inventory)
    return [PrometheusTarget(host, inventory.monitoring, jobs, endpoints) for host in inventory.with_role("monitor")]


def check_step(config: str, rules: str) -> Step:
    """promtool on the new config and rules, staged together (the config names the rules relative to itself)."""
    encoded = {name: base64.b64encode(text.encode()).decode() for name, text in (("config", config), ("rules", rules))}
    return Step.change("check config", "promtool check config on the new prometheus.yml and rules, before either is installed",
                       render_script("prometheus/check-config.sh.j2", **encoded))


def plan(target: PrometheusTarget, facts: f.Facts) -> list[Step]:
    package = ensure_packages(PROMETHEUS_PACKAGES, facts[INSTALLED])
    defaults = ensure_file(DEFAULTS, target.defaults(), facts[DEFAULTS_FILE])
    config = ensure_file(CONFIG, target.config(), facts[CONFIG_FILE])
    rules = ensure_file(RULES, target.rules(), facts[RULES_FILE])
    check = [check_step(target.config(), target.rules())] if config.changed or rules.changed else []
    reasons = [name for name, step in (("the package", package), (DEFAULTS, defaults)) if step.changed]
    restart = ensure_running(PROMETHEUS, target.port, facts[STATE], reasons)
    if (config.changed or rules.changed) and not restart.changed:
        reload = Step.change("reload prometheus", "the new config and rules, checked by Prometheus' own reload metric",
                             render_script("prometheus/reload.sh.j2", port=target.port))
    else:
        reload = Step.ok("reload prometheus", "not needed" if not restart.changed else "restarted instead")
    steps = [*blackbox_steps(target, facts), package, defaults, *check, config, rules, restart, reload, ensure_enabled(PROMETHEUS, facts[STATE])]
    if restart.changed or not probe_healthy(facts[target.probe_fact], target.checks):
        steps.append(Step.change("health gate", f"wait up to {GATE_TIMEOUT} s for 127.0.0.1:{target.port}/-/ready",
                                 gate_script(PROMETHEUS, target.port, target.checks, GATE_TIMEOUT, after_restart=restart.changed)))
    else:
        steps.append(Step.ok("health gate", "/-/ready answers"))
    return steps


def blackbox_steps(target: PrometheusTarget, facts: f.Facts) -> list[Step]:
    """The blackbox exporter on 127.0.0.1, which connects to each TLS endpoint for Prometheus and reports its certificate's
    expiry; none when hosts.toml has no TLS endpoint."""
    if not target.blackbox:
        return []
    package = ensure_packages([BLACKBOX], facts[INSTALLED], name="packages (blackbox exporter)")
    config = ensure_file(BLACKBOX_CONFIG, render("prometheus/blackbox.yml.j2"), facts[BLACKBOX_CONFIG_FILE])
    defaults = ensure_file(BLACKBOX_DEFAULTS, render("prometheus/blackbox.default.j2", config=BLACKBOX_CONFIG, port=BLACKBOX_PORT),
                           facts[BLACKBOX_DEFAULTS_FILE])
    inputs = {"the package": package, BLACKBOX_CONFIG: config, BLACKBOX_DEFAULTS: defaults}
    return [package, config, defaults, *serving_steps(target.blackbox, facts, inputs)]


def converge(remote: Remote, report: HostReport, target: PrometheusTarget) -> None:
    converged = converge_host(remote, report, lambda: f.gather(remote, target.facts()), lambda facts: plan(target, facts))
    if converged.done:
        show_note(report, f"Prometheus on 127.0.0.1:{target.port} of {target.host.name}, scraping {len(target.nodes)} hosts "
                          f"and {len(target.tls_endpoints)} TLS endpoints: fab monitor opens it here")
