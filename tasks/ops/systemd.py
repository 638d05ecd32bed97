"""systemd units: reload, enable, restart only when something they depend on changed."""

from __future__ import annotations

from tasks.ops.steps import Step


def daemon_reload(unit_changed: bool) -> Step:
    if not unit_changed:
        return Step.ok("daemon-reload", "not needed")
    return Step.change("daemon-reload", "unit changed", "systemctl daemon-reload")


def ensure_enabled(unit: str, properties: dict[str, str]) -> Step:
    name = f"enable {unit}"
    if properties.get("UnitFileState") == "enabled":
        return Step.ok(name, "enabled")
    return Step.change(name, "enable at boot", f"systemctl enable --quiet {unit}")


def ensure_running(unit: str, properties: dict[str, str], changed_inputs: list[str]) -> Step:
    """Restart when an input changed, start when not running, else leave the process alone."""
    name = f"restart {unit}"
    if changed_inputs:
        return Step.change(name, "because " + ", ".join(changed_inputs) + " changed", f"systemctl restart {unit}")
    if properties.get("ActiveState") != "active":
        return Step.change(name, f"start (was {properties.get('ActiveState', 'unknown')})", f"systemctl restart {unit}")
    return Step.ok(name, f"running, MainPID {properties.get('MainPID')}")
