"""`fab status`: every inventory host's services, versions and health, in one table."""

from __future__ import annotations

import shlex

from tasks.monitoring.live import figures_fact
from tasks.ops import facts as f
from tasks.ops.health import probe_healthy
from tasks.ops.steps import Step
from tasks.serving.deploy import running_release_command
from tasks.serving.history import MODELS_ROOT
from tasks.tracking.frontdoor import NGINX_CONFIG
from tasks.tracking.server import POSTGRESQL_STATE, SERVICE_STATE, TrackingTarget
from tasks.tracking.service import TrackingService
from tasks.values import address_port

COLUMNS = ("os", "tracking", "mlflow", "postgresql", "health", "url", "models", "balancer")
LIVE_FIGURES = "live figures"  # a monitor host's report: model -> column -> figure
# `NAME STATE CURRENT RUNNING` per model with a current link
MODELS = f.Fact(
    "models",
    f"for d in {MODELS_ROOT}/*/; do [ -L \"$d/current\" ] || continue; name=$(basename \"$d\"); "
    "running=$(" + running_release_command("mlflow-model@$name") + "); "
    "printf '%s %s %s %s\\n' \"$name\" \"$(systemctl is-active mlflow-model@$name)\" \"$(basename \"$(readlink \"$d/current\")\")\" "
    "\"${running:--}\"; done",
)


def model_summary(text: str) -> tuple[str, bool]:
    """'wine active CURRENT RUNNING' lines -> a cell, and whether every model service is active and runs its current release."""
    rows = [line.split() for line in text.splitlines() if len(line.split()) == 4]
    cells, consistent = [], True
    for name, state, current, running in rows:
        # '-': a process started before its unit's WorkingDirectory named the release
        mismatch = state == "active" and running not in ("-", current)
        cells.append(f"{name}: {state} {running if mismatch else current}" + (f" (current links {current}: deploy again)" if mismatch else ""))
        consistent = consistent and state == "active" and not mismatch
    return "\n".join(cells) or "-", consistent


def balancer_view(service: TrackingService) -> f.Fact:
    """`NAME drained|CODE` per replica, as this balancer sees it: drained in its config, or what the replica's /health answers."""
    scheme = "https" if service.settings.tls else "http"
    upstreams = {host.name: address_port(host.address, service.settings.port) for host in service.replicas}
    checks = "".join(
        f"if grep -F {shlex.quote(f' {upstream} ')} {NGINX_CONFIG} | grep -q ' down;'; "
        f"then echo '{name} drained'; else echo \"{name} $(curl -sk --max-time 3 -o /dev/null -w '%{{http_code}}' "
        f"{shlex.quote(f'{scheme}://{upstream}/health')})\"; fi; "
        for name, upstream in upstreams.items())
    return f.Fact("balancer", f"[ -f {NGINX_CONFIG} ] && {{ {checks}}}")


def view_summary(text: str) -> tuple[str, bool]:
    """'NAME drained|CODE' lines -> a cell, and whether every replica is in service and answers."""
    rows = [line.split() for line in text.splitlines() if len(line.split()) == 2]
    cells = [f"{name}: {'drained' if state == 'drained' else 'up' if state == '200' else f'DOWN ({state})'}" for name, state in rows]
    return "\n".join(cells) or "-", all(state == "200" for _, state in rows)


def host_status(remote, report, tracking_service: TrackingService, prometheus_port: int = 0) -> None:
    """prometheus_port: on a monitor host, also each model's live figures (report.details[LIVE_FIGURES])."""
    target = TrackingTarget(remote.host, remote.connection.host)
    version = f.Fact("version", target.local_curl("/version"))
    fronts = tracking_service.fronted and "lb" in remote.host.roles
    view = balancer_view(tracking_service)
    live = figures_fact(prometheus_port) if prometheus_port and "monitor" in remote.host.roles else None
    facts = f.gather(remote, [f.os_release(), SERVICE_STATE, POSTGRESQL_STATE, version, target.probe_fact, MODELS]
                     + ([view] if fronts else []) + ([live] if live else []))
    models, models_active = model_summary(facts[MODELS])
    service = facts[SERVICE_STATE]
    installed = service.get("UnitFileState", "") not in ("", "not-found")
    healthy = probe_healthy(facts[target.probe_fact], target.health_checks)
    report.details = {
        "os": facts[f.os_release()].split("\n")[0].rpartition("|")[2],
        "tracking": f"{service['ActiveState']} (pid {service['MainPID']})" if installed else "not installed",
        "mlflow": facts[version] or "-",
        "postgresql": f"shared ({tracking_service.settings.database})" if tracking_service.shared and installed
        else facts[POSTGRESQL_STATE] or "-",
        "health": ("healthy" if healthy else "UNHEALTHY") if installed else "-",
        "url": target.url if installed else "-",
        "models": models,
    }
    if live:
        report.details[LIVE_FIGURES] = facts[live]
    replicas_in_service = True
    if fronts:
        report.details["balancer"], replicas_in_service = view_summary(facts[view])
    if installed and not healthy:
        report.steps.append(Step.failure("status", "tracking server installed but not healthy"))
    elif not models_active:
        report.steps.append(Step.failure("status", "a model service is not active, or runs another release than its current link"))
    elif not replicas_in_service:
        report.steps.append(Step.failure("status", "a tracking replica is drained or does not answer this balancer"))
    else:
        report.steps.append(Step.ok("status", "healthy" if installed else "no tracking server"))
