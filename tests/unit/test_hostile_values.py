"""Hostile values from hosts.toml or the command line: refused before any connection, or inert where they land.

The generated scripts are run with bash for real, but with nothing on PATH and bash's
command_not_found_handle recording each external command's argv instead of running it: nothing on
this machine is touched, and the record shows what every command would have received.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
from invoke.exceptions import Exit

from tasks.cli.serving import checked_name
from tasks.inventory import Host, InventoryError, TrackingSettings, load_inventory
from tasks.ops.files import ensure_directory
from tasks.ops.health import gate_script, probe_command
from tasks.overview.logs import unit_and_role
from tasks.serving import balancer as lb
from tasks.templates import render
from tasks.tracking.server import BACKUP_DIR, BACKUP_SCRIPT, BACKUP_TIMER, BACKUP_UNIT, INSTALLED_ENV, RESTORE_SCRIPT, TrackingTarget
from tasks.values import address_port
from tests.unit.test_inventory import WIDEST_GOOD_VALUES

PAYLOADS = [
    "a b",
    "a'b",
    'a"b',
    "$(touch $PWNED)",
    "$(echo > $PWNED)",
    "`touch $PWNED`",
    "x;touch $PWNED",
    "x|touch $PWNED",
    "x&&touch $PWNED",
    "${PWNED:+$(touch $PWNED)}",
    "x\nExecStartPre=+/bin/sh -c 'touch $PWNED'",
    "x\rExecStartPre=+/bin/sh",
    "x\\",
    "%h",
    "x\u2028y",
]


def toml(value: str) -> str:
    return json.dumps(value)  # TOML's basic strings escape like JSON's


# Every inventory string that lands in a script or a unit/nginx/ini file: (TOML with the value, what the error names).
LANDING = {
    "address": (lambda v: f"[hosts.a]\naddress = {toml(v)}", "[hosts"),
    "host name": (lambda v: f"[hosts.{toml(v)}]\naddress = '10.0.0.1'", "[hosts"),
    "user": (lambda v: f"[defaults]\nuser = {toml(v)}", "[defaults] "),
    "artifacts": (lambda v: f"[tracking]\nartifacts = {toml('/srv/' + v)}", "[tracking] artifacts"),
    "allowed_hosts": (lambda v: f"[tracking]\nallowed_hosts = ['ok.example.com', {toml(v)}]", "[tracking] allowed_hosts"),
    "backup_schedule": (lambda v: f"[tracking]\nbackup_schedule = {toml('daily' + v)}", "[tracking] backup_schedule"),
    "mlflow_version": (lambda v: f"[tracking]\nmlflow_version = {toml('3.17.2' + v)}", "[tracking] mlflow_version"),
    "psycopg2_version": (lambda v: f"[hosts.a]\naddress = '10.0.0.1'\n[hosts.a.tracking]\npsycopg2_version = {toml('2.9.13' + v)}",
                         "[hosts.a.tracking] psycopg2_version"),
    "model": (lambda v: f"[models.{toml(v)}]\nport = 5002", "[models"),
    "host's model": (lambda v: f"[hosts.a]\naddress = '10.0.0.1'\n[hosts.a.models.{toml(v)}]\nport = 5002", "[hosts.a.models"),
}


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("key", LANDING)
def test_hostile_inventory_values_are_refused_naming_file_and_key(tmp_path, key, payload):
    text, names = LANDING[key]
    path = tmp_path / "hosts.toml"
    path.write_text(text(payload))
    with pytest.raises(InventoryError) as error:
        load_inventory(path)
    assert str(error.value).startswith(f"{path}: {names}")


@pytest.mark.parametrize("payload", PAYLOADS + ["model\n", "model\r\n", "-model", "a" * 65, ""])
def test_hostile_model_names_are_refused_on_the_command_line(payload):
    with pytest.raises(Exit):
        checked_name(payload)
    with pytest.raises(Exit):
        unit_and_role(f"model:{payload}")
    assert checked_name("wine_v-2") == "wine_v-2"


# Every command outside bash itself is recorded, not run; mktemp hands out the sandbox, curl answers 200, nothing is a mount point.
PRELUDE = r"""PATH=/nonexistent
cd() { :; }
command_not_found_handle() {
  # one write per command: the commands of a pipeline run at once
  local record; record=$(printf '%s\x1f' "$@"); printf '%s\x1e' "$record" >> "$SANDBOX/argv"
  case "$1" in mktemp) printf '%s\n' "$SANDBOX/work" ;; curl) printf 200 ;; mountpoint) return 1 ;; esac
  return 0
}
curl() { command_not_found_handle curl "$@"; }
"""


@dataclasses.dataclass
class Run:
    result: subprocess.CompletedProcess
    commands: list[list[str]]
    pwned: bool  # a payload's command ran: it wrote $PWNED, or touch was called


def run_recorded(script: str, sandbox: Path, *args: str, answers: str = "") -> Run:
    """Check the script's syntax with bash -n, then run it with every external command recorded.

    answers: bash functions defined after the prelude, e.g. a command that fails or prints something.
    """
    (sandbox / "work").mkdir(parents=True, exist_ok=True)
    (sandbox / "prelude.sh").write_text(PRELUDE + answers)
    (sandbox / "script.sh").write_text(script)
    syntax = subprocess.run(["/bin/bash", "-n", sandbox / "script.sh"], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    env = {"BASH_ENV": str(sandbox / "prelude.sh"), "SANDBOX": str(sandbox), "PWNED": str(sandbox / "pwned")}
    # bytes, decoded by hand: text mode would turn a payload's \r into \n
    ran = subprocess.run(["/bin/bash", sandbox / "script.sh", *args], cwd=sandbox, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    result = subprocess.CompletedProcess(ran.args, ran.returncode, ran.stdout.decode(), ran.stderr.decode())
    record = (sandbox / "argv").read_bytes().decode() if (sandbox / "argv").exists() else ""
    commands = [command.split("\x1f")[:-1] for command in record.split("\x1e")[:-1]]
    return Run(result, commands, (sandbox / "pwned").exists() or any(command[0] == "touch" for command in commands))


def tracking_target(address: str = "10.0.0.5", **settings) -> TrackingTarget:
    host = Host(name="prod1", address=address, roles=("tracking",), user="deploy", tracking=TrackingSettings(**settings))
    return TrackingTarget(host, address)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_backup_script_gives_the_artifact_root_as_one_word(tmp_path, payload):
    artifacts = f"/srv/{payload}"
    script = tracking_target(artifacts=artifacts).backup_files()[BACKUP_SCRIPT][0].replace(BACKUP_DIR, str(tmp_path))
    run = run_recorded(script, tmp_path)
    assert run.result.returncode == 0, run.result.stderr
    assert ["tar", "-C", artifacts, "-czf", f"{tmp_path}/work/artifacts.tar.gz", "."] in run.commands
    assert f'"artifacts": "{artifacts}"' in (tmp_path / "work" / "manifest.json").read_bytes().decode()
    assert not run.pwned


def recordable_restore_script(target: TrackingTarget, sandbox: Path) -> str:
    """mlflow-restore with its safety backup and the server env's python going through the recorder too; its lock in the sandbox."""
    script = target.backup_files()[RESTORE_SCRIPT][0]
    return (script.replace(BACKUP_SCRIPT, Path(BACKUP_SCRIPT).name).replace(INSTALLED_ENV, "/opt/mlflow/envs/tracking-0")
            .replace('"$env/bin/python"', "python").replace(BACKUP_DIR, str(sandbox)))


@pytest.mark.parametrize("payload", PAYLOADS)
def test_restore_script_gives_the_artifact_root_as_one_word(tmp_path, payload):
    artifacts = f"/srv/{payload}"
    script = recordable_restore_script(tracking_target(artifacts=artifacts), tmp_path)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "mlflow.dump").write_text("")
    (tmp_path / "backup.tar").write_text("")
    run = run_recorded(script, tmp_path, str(tmp_path / "backup.tar"))
    assert run.result.returncode == 0, run.result.stdout + run.result.stderr
    assert ["rm", "-rf", f"{artifacts}.restoring"] in run.commands
    assert ["mountpoint", "-q", artifacts] in run.commands
    assert ["mv", "-T", artifacts, f"{artifacts}.replaced"] in run.commands
    assert ["mv", "-T", f"{artifacts}.restoring", artifacts] in run.commands
    assert ["rm", "-rf", f"{artifacts}.replaced"] in run.commands
    assert not run.pwned


@pytest.mark.parametrize("payload", PAYLOADS)
def test_profile_snippet_exports_the_url_verbatim(tmp_path, payload):
    target = tracking_target(address=payload)
    script = target.profile() + "printf '%s' \"$MLFLOW_TRACKING_URI\"\n"
    run = run_recorded(script, tmp_path)
    assert run.result.stdout == target.url and not run.pwned


@pytest.mark.parametrize("payload", PAYLOADS)
def test_health_probe_and_gate_send_the_host_header_verbatim(tmp_path, payload):
    target = tracking_target(address=payload)
    probe = run_recorded(probe_command(target.server_port, target.health_checks), tmp_path / "probe")
    gate = run_recorded(gate_script("mlflow-tracking", target.server_port, target.health_checks, 5, after_restart=False), tmp_path / "gate")
    for run in (probe, gate):
        assert run.result.returncode == 0, run.result.stderr
        curl = next(command for command in run.commands if command[0] == "curl" and "-H" in command)
        assert curl[curl.index("-H") + 1] == f"Host: {address_port(payload, 5000)}"
        assert not run.pwned
    assert f"(Host: {address_port(payload, 5000)}) 200" in probe.result.stdout
    assert f"(Host: {address_port(payload, 5000)}) answered 200" in gate.result.stdout


@pytest.mark.parametrize("payload", PAYLOADS)
def test_directories_are_created_by_their_exact_name(tmp_path, payload):
    path = f"/srv/{payload}"
    run = run_recorded(ensure_directory(path, "mlflow", "mlflow", "750", "").script, tmp_path)
    assert ["install", "-d", "-o", "mlflow", "-g", "mlflow", "-m", "750", path] in run.commands
    assert ["chmod", "750", path] in run.commands and not run.pwned


def directives(unit: str) -> list[str]:
    """What systemd reads from a unit file: its sections and the keys of its settings, in order."""
    return [line.split("=", 1)[0] for line in unit.splitlines() if line and not line.startswith(("#", ";"))]


def unit_files(target: TrackingTarget) -> dict[str, str]:
    files = {path: content for path, (content, _) in target.backup_files().items() if path in (BACKUP_TIMER, BACKUP_UNIT)}
    return {"tracking unit": target.unit("node-1"), **files}


def test_the_widest_accepted_values_add_no_line_to_a_unit_file(tmp_path):
    path = tmp_path / "hosts.toml"
    path.write_text(WIDEST_GOOD_VALUES)
    inventory = load_inventory(path)
    host = inventory.hosts["prod-1_a.example"]
    accepted = unit_files(TrackingTarget(host, host.address))
    plain = unit_files(tracking_target(backup_schedule="daily"))
    assert accepted.keys() == plain.keys()
    for name in accepted:
        assert directives(accepted[name]) == directives(plain[name]), name
    assert "OnCalendar=Mon..Fri *-*-* 03:00:00 Europe/Berlin\n" in accepted[BACKUP_TIMER]
    for model in ("wine-v2", "iris_1"):
        env = render("model.env.j2", name=model, port=host.model(model).port, workers=1)
        assert directives(env) == ["PORT", "WORKERS"]


def test_the_widest_accepted_values_keep_the_balancer_config_whole(tmp_path):
    path = tmp_path / "hosts.toml"
    path.write_text(WIDEST_GOOD_VALUES)
    inventory = load_inventory(path)
    config = "".join(lb.render_config(model, inventory.lb) for model in lb.upstreams(inventory))
    lines = [line.strip() for line in config.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert all(line.endswith(("{", "}", ";")) for line in lines), lines
    assert sum(line.startswith("server prod1.example.com:") or line.startswith("server [2001:db8::10]:") for line in lines) == 4
