"""Drive the real `fab` CLI against test hosts, and wait for conditions with a deadline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FAB = Path(sys.executable).with_name("fab")

# Tests of everything but the front door talk to MLflow directly; hosts.toml must ask for that explicitly.
PLAIN_HTTP = {"tls": False, "auth": False}
# The same for the balancer in front of the models, and model ports open to every address.
PLAIN_LB = {"tls": False, "auth": False, "firewall": False}

# Every line `fab` printed in this test session: the secrets test greps it.
transcript: list[str] = []


def fab(inventory: Path, *args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    # mlflow.set_tracking_uri() in a test exports MLFLOW_TRACKING_URI into this process: no test's fab inherits another's
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    environment = {**inherited, "FABRIC_INVENTORY": str(inventory), "COLUMNS": "200", **(env or {})}
    result = subprocess.run([str(FAB), *args], cwd=REPO, env=environment, capture_output=True, text=True, timeout=timeout)
    transcript.append(result.stdout + result.stderr)
    print(result.stdout, result.stderr)
    return result


def fab_at_once(inventory: Path, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """fab(inventory, *command) for each command at the same time (tasks on different hosts); results in order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        return list(pool.map(lambda command: fab(inventory, *command), commands))


def recap(result: subprocess.CompletedProcess, host: str) -> dict[str, int]:
    line = next(line for line in result.stdout.splitlines() if line.startswith(f"{host} ok="))
    return {key: int(value) for key, value in (part.split("=") for part in line.split()[1:])}


def wait_for(condition, timeout: float, what: str, interval: float = 0.5):
    """Poll condition() until it returns something truthy; fail with `what` after the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def write_inventory(path: Path, hosts: dict[str, dict], tracking: dict | None = None, accept_new_host_keys: bool = True,
                    lb: dict | None = None, monitoring: dict | None = None) -> Path:
    """hosts.toml from plain dicts (json.dumps of str, int, bool and lists is valid TOML).

    Host keys are learned on first use into a known_hosts file beside it: every fresh test host has new keys.
    """
    lines = [
        "[defaults]",
        f"known_hosts = {json.dumps(str(path.with_name('known_hosts')))}",
        f"accept_new_host_keys = {json.dumps(accept_new_host_keys)}",
        "[tracking]",
        *(f"{key} = {json.dumps(value)}" for key, value in (tracking or {}).items()),
        "[lb]",
        *(f"{key} = {json.dumps(value)}" for key, value in (lb or {}).items()),
        "[monitoring]",
        *(f"{key} = {json.dumps(value)}" for key, value in (monitoring or {}).items()),
    ]
    for name, table in hosts.items():
        lines.append(f"[hosts.{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items() if not isinstance(value, dict)]
        for section, values in ((key, value) for key, value in table.items() if isinstance(value, dict)):
            lines.append(f"[hosts.{name}.{section}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def host_entry(test_host, roles=(), **overrides) -> dict:
    """An inventory entry for a testbed host, reached as its deploy user with the testbed key."""
    return {"address": test_host.address, "user": test_host.user, "identity": str(test_host.identity), "roles": list(roles), **overrides}
