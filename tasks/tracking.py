"""The MLflow tracking server: PostgreSQL for metadata, an artifact root, a systemd unit.

Runbook this replaces: apt-get install postgresql; CREATE ROLE/DATABASE; python3 -m venv;
pip install mlflow psycopg2; write a unit file; systemctl enable --now; curl /health.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from fabric import task

from tasks import cli
from tasks.fleet import finish, run_on_hosts
from tasks.inventory import Host, TrackingSettings
from tasks.ops import facts as f
from tasks.ops.platform import check_platform
from tasks.ops.files import ensure_directory, ensure_file, ensure_secret_file
from tasks.ops.health import HttpCheck, gate_script, probe_command, probe_healthy
from tasks.ops.pyenv import EnvSpec, ensure_env
from tasks.ops.remote import Remote
from tasks.ops.steps import Step, apply
from tasks.ops.system import ensure_packages, ensure_system_user
from tasks.ops.systemd import daemon_reload, ensure_enabled, ensure_running
from tasks.report import HostReport, show_note, show_step
from tasks.templates import render

UNIT = "mlflow-tracking"
UNIT_PATH = f"/etc/systemd/system/{UNIT}.service"
SERVICE_USER = "mlflow"
HOME = "/var/lib/mlflow"
CONFIG_DIR = "/etc/mlflow"
ENV_FILE = f"{CONFIG_DIR}/tracking.env"
ENVS_ROOT = "/opt/mlflow/envs"
PROFILE = "/etc/profile.d/mlflow.sh"
BACKUP_DIR = "/var/backups/mlflow"
BACKUP_SCRIPT = "/usr/local/sbin/mlflow-backup"
RESTORE_SCRIPT = "/usr/local/sbin/mlflow-restore"
BACKUP_UNIT = "/etc/systemd/system/mlflow-backup.service"
BACKUP_TIMER = "/etc/systemd/system/mlflow-backup.timer"
PACKAGES = ["postgresql", "python3-venv", "curl", "ca-certificates"]
DATABASE = "mlflow"


@dataclass(frozen=True)
class TrackingTarget:
    """One host's tracking server as it should be."""

    host: Host
    address: str  # what clients use to reach the host

    @property
    def settings(self) -> TrackingSettings:
        return self.host.tracking

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.settings.port}"

    @property
    def env_spec(self) -> EnvSpec:
        s = self.settings
        packages = (f"mlflow=={s.mlflow_version}", f"psycopg2-binary=={s.psycopg2_version}", *s.extra_packages)
        return EnvSpec(s.env_manager, packages, python="3.11" if s.env_manager == "conda" else "")

    @property
    def env_path(self) -> str:
        return self.env_spec.path(ENVS_ROOT, "tracking")

    def allowed_hosts(self, node_name: str) -> list[str]:
        names = [self.host.name, self.address, node_name, "localhost", "127.0.0.1"]
        unique = [name for index, name in enumerate(names) if name and name not in names[:index] and "@" not in name]
        return [f"{name}:{self.settings.port}" for name in unique] + list(self.settings.allowed_hosts)

    @property
    def health_checks(self) -> list[HttpCheck]:
        api = "/api/2.0/mlflow/experiments/search?max_results=1"
        return [HttpCheck("/health"), HttpCheck(api, host_header=f"{self.address}:{self.settings.port}")]

    def facts(self) -> list[f.Fact]:
        return [
            f.os_release(),
            f.node_name(),
            f.installed_packages(PACKAGES),
            f.Fact("postgresql", "systemctl is-active postgresql"),
            f.Fact(
                "database",
                "cd / && runuser -u postgres -- psql -tAX -c \"select 'role' from pg_roles where rolname='mlflow' "
                "union all select 'database' from pg_database where datname='mlflow'\"",
            ),
            f.user_exists(SERVICE_USER),
            *[f.path_stat(path) for path, *_ in self.directories()],
            f.path_stat(ENV_FILE),
            f.Fact("env_marker", f"cat {self.env_path}/.complete"),
            f.Fact("running_marker", f"cat \"$(grep -o '{ENVS_ROOT}/tracking-[0-9a-f]*' {UNIT_PATH} | head -1)/.complete\""),
            f.Fact("envs", f"ls -1 {ENVS_ROOT}"),
            f.file_content(UNIT_PATH),
            f.file_content(PROFILE),
            *[f.file_content(path) for path in (BACKUP_SCRIPT, RESTORE_SCRIPT, BACKUP_UNIT, BACKUP_TIMER)],
            f.service_state("mlflow-backup.timer"),
            f.service_state(UNIT),
            f.Fact("probe", probe_command(self.settings.port, self.health_checks)),
        ]

    def directories(self) -> list[tuple[str, str, str, str]]:
        return [
            (HOME, SERVICE_USER, SERVICE_USER, "750"),
            (self.settings.artifacts, SERVICE_USER, SERVICE_USER, "750"),
            (CONFIG_DIR, "root", SERVICE_USER, "750"),
            (ENVS_ROOT, "root", "root", "755"),
        ]

    def backup_files(self) -> dict[str, tuple[str, str]]:
        """path -> (content, mode) of the backup and restore scripts, and of the timer when a schedule is set."""
        s = self.settings
        values = dict(backup_dir=BACKUP_DIR, keep=s.backup_keep, database=DATABASE, artifacts=s.artifacts, port=s.port, unit=UNIT, user=SERVICE_USER)
        files = {
            BACKUP_SCRIPT: (render("mlflow-backup.sh.j2", **values), "755"),
            RESTORE_SCRIPT: (render("mlflow-restore.sh.j2", **values), "755"),
        }
        if s.backup_schedule:
            files[BACKUP_UNIT] = (render("mlflow-backup.service.j2", keep=s.backup_keep), "644")
            files[BACKUP_TIMER] = (render("mlflow-backup.timer.j2", schedule=s.backup_schedule), "644")
        return files

    def unit(self, node_name: str) -> str:
        s = self.settings
        return render(
            "mlflow-tracking.service.j2",
            unit=UNIT,
            user=SERVICE_USER,
            home=HOME,
            env_file=ENV_FILE,
            env_path=self.env_path,
            port=s.port,
            workers=s.workers,
            artifacts=s.artifacts,
            job_runner=s.job_runner,
            allowed_hosts=self.allowed_hosts(node_name),
            writable=sorted({HOME, s.artifacts}),
        )


def generate_env_file_script() -> str:
    """The database password is generated on the host and written straight to a 0640 root:mlflow file."""
    return f"""umask 077
python3 - <<'PY'
import os, secrets
password = secrets.token_urlsafe(32)
fd = os.open("{ENV_FILE}.new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
os.write(fd, (
    f"MLFLOW_DB_PASSWORD={{password}}\\n"
    f"MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://mlflow:{{password}}@127.0.0.1:5432/{DATABASE}\\n"
).encode())
os.close(fd)
PY
chown root:{SERVICE_USER} {ENV_FILE}.new
chmod 640 {ENV_FILE}.new
mv {ENV_FILE}.new {ENV_FILE}"""


def set_role_password_script() -> str:
    """printf is a shell builtin and psql reads stdin: the password never reaches a process's arguments."""
    return f"""cd /
password=$(sed -n 's/^MLFLOW_DB_PASSWORD=//p' {ENV_FILE})
printf "DO \\$\\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mlflow') THEN CREATE ROLE mlflow LOGIN; END IF; END \\$\\$;\\nALTER ROLE mlflow WITH LOGIN PASSWORD '%s';\\n" "$password" \\
  | runuser -u postgres -- psql -q -X -v ON_ERROR_STOP=1"""


def plan(target: TrackingTarget, facts: dict[str, str]) -> list[Step]:
    """Every step setup-tracking takes, decided from the facts alone."""
    s = target.settings
    installed = f.parse_installed(facts.get("packages", ""))
    database = facts.get("database", "").split()
    node_name = facts.get("node_name", "")
    service = f.parse_properties(facts.get(f"service:{UNIT}", ""))

    steps = [ensure_packages(PACKAGES, installed)]
    if facts.get("postgresql") == "active":
        steps.append(Step.ok("postgresql running", "active"))
    else:
        steps.append(Step.change("postgresql running", "enable and start", "systemctl enable --now --quiet postgresql"))
    steps.append(ensure_system_user(SERVICE_USER, HOME, bool(facts.get(f"user:{SERVICE_USER}"))))
    steps += [ensure_directory(path, owner, group, mode, facts.get(f"stat:{path}", "")) for path, owner, group, mode in target.directories()]

    secrets_step = ensure_secret_file(ENV_FILE, SERVICE_USER, facts.get(f"stat:{ENV_FILE}", ""), generate_env_file_script())
    steps.append(secrets_step)
    new_secret = not facts.get(f"stat:{ENV_FILE}")
    if "role" in database and not new_secret:
        steps.append(Step.ok("database role mlflow", "exists, password unchanged"))
    else:
        steps.append(Step.change("database role mlflow", "create and set its password from the secrets file", set_role_password_script()))
    if "database" in database:
        steps.append(Step.ok(f"database {DATABASE}", "exists"))
    else:
        steps.append(Step.change(f"database {DATABASE}", "create, owned by mlflow", f"cd / && runuser -u postgres -- createdb -O mlflow {DATABASE}"))

    env_step = ensure_env(target.env_spec, target.env_path, facts.get("env_marker", ""))
    steps.append(env_step)
    unit_step = ensure_file(UNIT_PATH, target.unit(node_name), f.parse_file(facts.get(f"file:{UNIT_PATH}", "")))
    steps.append(unit_step)
    profile = render("profile-mlflow.sh.j2", port=s.port)
    steps.append(ensure_file(PROFILE, profile, f.parse_file(facts.get(f"file:{PROFILE}", ""))))
    steps += backup_steps(target, facts)

    steps.append(daemon_reload(unit_step.changed))
    steps.append(ensure_enabled(UNIT, service))
    inputs = {"unit": unit_step, "secrets": secrets_step, "python env": env_step}
    changed_inputs = [name for name, step in inputs.items() if step.changed]
    restart = ensure_running(UNIT, service, changed_inputs)
    steps.append(restart)

    if restart.changed or not probe_healthy(facts.get("probe", ""), target.health_checks):
        gate = gate_script(UNIT, s.port, target.health_checks, s.health_timeout, after_restart=restart.changed)
        steps.append(Step.change("health gate", f"wait up to {s.health_timeout} s for /health and the API to answer 200", gate))
    else:
        steps.append(Step.ok("health gate", "/health and the API answer 200"))

    old_envs = [name for name in facts.get("envs", "").split() if name.startswith("tracking-") and f"{ENVS_ROOT}/{name}" != target.env_path]
    if old_envs:
        paths = " ".join(shlex.quote(f"{ENVS_ROOT}/{name}") for name in old_envs)
        steps.append(Step.change("old python envs", "remove " + ", ".join(old_envs), f"rm -rf {paths}"))
    return steps


def backup_steps(target: TrackingTarget, facts: dict[str, str]) -> list[Step]:
    """The backup and restore scripts; the timer and its service only when backup_schedule is set."""
    files = target.backup_files()
    steps = [ensure_file(path, content, f.parse_file(facts.get(f"file:{path}", "")), mode=mode) for path, (content, mode) in files.items()]
    timer = f.parse_properties(facts.get("service:mlflow-backup.timer", ""))
    timer_files_changed = any(step.changed for step in steps if step.name.endswith((".service", ".timer")))
    if target.settings.backup_schedule:
        enabled = timer.get("UnitFileState") == "enabled" and timer.get("ActiveState") == "active"
        if timer_files_changed or not enabled:
            steps.append(Step.change("backup timer", f"backups on schedule {target.settings.backup_schedule!r}",
                                     "systemctl daemon-reload\nsystemctl enable --now --quiet mlflow-backup.timer\nsystemctl restart mlflow-backup.timer"))
        else:
            steps.append(Step.ok("backup timer", f"scheduled {target.settings.backup_schedule!r}"))
    elif f.parse_file(facts.get(f"file:{BACKUP_TIMER}", "")).exists:
        steps.append(Step.change("backup timer", "no backup_schedule: remove the timer",
                                 f"systemctl disable --now --quiet mlflow-backup.timer || true\nrm -f {BACKUP_TIMER} {BACKUP_UNIT}\nsystemctl daemon-reload"))
    return steps


def running_env_path(unit: str) -> str:
    """The env the installed unit starts, which is not the inventory's when an upgrade is under way."""
    match = re.search(rf"{ENVS_ROOT}/tracking-[0-9a-f]+", unit)
    return match.group(0) if match else ""


def installed_mlflow_version(marker: str) -> str:
    match = re.search(r"mlflow==(\S+)", marker)
    return match.group(1) if match else ""


def version_guard(target: TrackingTarget, running_marker: str) -> Step:
    """A running server changes MLflow version only through upgrade-tracking (backup, migration, rollback)."""
    running = installed_mlflow_version(running_marker)
    wanted = target.settings.mlflow_version
    if running and running != wanted:
        return Step.failure(
            "mlflow version",
            f"the server runs mlflow {running} and hosts.toml says {wanted}: nothing was changed. "
            f"Upgrade with `fab upgrade-tracking --mlflow-version {wanted}` (backup, database migration, rollback), "
            f'or set mlflow_version = "{running}"',
        )
    return Step.ok("mlflow version", running or wanted)


def converge(remote: Remote, report: HostReport) -> None:
    target = TrackingTarget(remote.host, remote.connection.host)
    facts = f.gather(remote, target.facts())
    platform = check_platform(facts.get("os", ""))
    report.steps.append(platform)
    show_step(report, platform)
    if platform.failed:
        return
    guard = version_guard(target, facts.get("running_marker", ""))
    if guard.failed:
        report.steps.append(guard)
        show_step(report, guard)
        return
    steps = [guard] + plan(target, facts)
    report.steps += steps
    if report.check:
        for step in steps:
            show_step(report, step)
        return
    if apply(remote, steps, lambda step: show_step(report, step)):
        show_note(report, f"tracking server: {target.url}  (export MLFLOW_TRACKING_URI={target.url})")


@task(help={"check": "show what would change, with diffs, and change nothing"})
def setup_tracking(c, check=False):
    """Install or converge the MLflow tracking server: PostgreSQL, artifact root, systemd unit, health gate."""
    hosts = cli.hosts_for(c, role="tracking")
    finish(run_on_hosts(c.config, hosts, converge, check=check))
