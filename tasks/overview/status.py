"""`fab status`: every inventory host's services, versions and health, in one table."""

from __future__ import annotations

from tasks.ops import facts as f
from tasks.ops.health import probe_healthy
from tasks.ops.steps import Step
from tasks.serving.deploy import running_release_command
from tasks.serving.history import MODELS_ROOT
from tasks.tracking.server import POSTGRESQL_STATE, SERVICE_STATE, TrackingTarget

COLUMNS = ("os", "tracking", "mlflow", "postgresql", "health", "url", "models")
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


def host_status(remote, report) -> None:
    target = TrackingTarget(remote.host, remote.connection.host)
    version = f.Fact("version", target.local_curl("/version"))
    facts = f.gather(remote, [f.os_release(), SERVICE_STATE, POSTGRESQL_STATE, version, target.probe_fact, MODELS])
    models, models_active = model_summary(facts[MODELS])
    service = facts[SERVICE_STATE]
    installed = service.get("UnitFileState", "") not in ("", "not-found")
    healthy = probe_healthy(facts[target.probe_fact], target.health_checks)
    report.details = {
        "os": facts[f.os_release()].split("\n")[0].rpartition("|")[2],
        "tracking": f"{service['ActiveState']} (pid {service['MainPID']})" if installed else "not installed",
        "mlflow": facts[version] or "-",
        "postgresql": facts[POSTGRESQL_STATE] or "-",
        "health": ("healthy" if healthy else "UNHEALTHY") if installed else "-",
        "url": target.url if installed else "-",
        "models": models,
    }
    if installed and not healthy:
        report.steps.append(Step.failure("status", "tracking server installed but not healthy"))
    elif not models_active:
        report.steps.append(Step.failure("status", "a model service is not active, or runs another release than its current link"))
    else:
        report.steps.append(Step.ok("status", "healthy" if installed else "no tracking server"))
