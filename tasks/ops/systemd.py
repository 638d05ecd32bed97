"""systemd units: reload, enable, restart only when something they depend on changed."""

from __future__ import annotations

from tasks.ops.steps import Step
from tasks.templates import render_script

# how long a stopped unit's processes may take to let go of its port
PORT_RELEASE_TIMEOUT = 30


def daemon_reload(unit_changed: bool) -> Step:
    if not unit_changed:
        return Step.ok("daemon-reload", "not needed")
    return Step.change("daemon-reload", "unit changed", "systemctl daemon-reload")


def ensure_enabled(unit: str, properties: dict[str, str]) -> Step:
    name = f"enable {unit}"
    if properties.get("UnitFileState") == "enabled":
        return Step.ok(name, "enabled")
    return Step.change(name, "enable at boot", f"systemctl enable --quiet {unit}")


def restart_script(unit: str, port: int) -> str:
    """Stop UNIT, wait until nothing listens on its PORT, start it."""
    return render_script("restart-freeing-port.sh.j2", unit=unit, port=port, timeout=PORT_RELEASE_TIMEOUT)


def ensure_running(unit: str, port: int, properties: dict[str, str], changed_inputs: list[str]) -> Step:
    """Restart when an input changed, start when not running, else leave the process alone."""
    name = f"restart {unit}"
    if changed_inputs:
        return Step.change(name, "because " + ", ".join(changed_inputs) + " changed", restart_script(unit, port))
    if properties.get("ActiveState") != "active":
        return Step.change(name, f"start (was {properties.get('ActiveState', 'unknown')})", restart_script(unit, port))
    return Step.ok(name, f"running, MainPID {properties.get('MainPID')}")
