"""The MLflow tracking server: PostgreSQL for metadata, an artifact root, a systemd unit.

Runbook this replaces: apt-get install postgresql; CREATE ROLE/DATABASE; python3 -m venv;
pip install mlflow psycopg2; write a unit file; systemctl enable --now; curl /health.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from invoke.exceptions import Exit

from tasks.inventory import Host, TrackingSettings
from tasks.ops import facts as f
from tasks.ops import postgres, wheelsync
from tasks.ops.files import ensure_directory, ensure_file, ensure_secret_file
from tasks.ops.health import HttpCheck, gate_script, probe_command, probe_healthy
from tasks.ops.platform import check_platform
from tasks.ops.pyenv import EnvSpec, ensure_env
from tasks.ops.remote import Remote
from tasks.ops.steps import Step, apply
from tasks.ops.system import ensure_packages, ensure_system_user
from tasks.ops.systemd import daemon_reload, ensure_enabled, ensure_running
from tasks.report import HostReport, show_note, show_step, show_warning
from tasks.templates import render
from tasks.tracking import certificates, frontdoor, schema, signin_guard

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
TLS_PACKAGES = ["nginx", "openssl"]
DATABASE = "mlflow"


@dataclass(frozen=True)
class TrackingTarget:
    """One host's tracking server as it should be."""

    host: Host
    address: str  # what clients use to reach the host
    # the host's wheelhouse and the versions resolved into it, when the env is built from one (tasks/ops/wheelsync.py)
    find_links: str = ""
    pins: tuple[str, ...] = ()

    @property
    def settings(self) -> TrackingSettings:
        return self.host.tracking

    @property
    def url(self) -> str:
        return f"{'https' if self.settings.tls else 'http'}://{self.address}:{self.settings.port}"

    @property
    def server_port(self) -> int:
        """Where MLflow itself listens: behind nginx on loopback with tls, else on the public port."""
        return self.settings.backend_port if self.settings.tls else self.settings.port

    @property
    def packages(self) -> list[str]:
        return PACKAGES + (TLS_PACKAGES if self.settings.tls else []) + signin_guard.packages(self.settings)

    @property
    def admin_curl_args(self) -> str:
        return f"-K {frontdoor.ADMIN_CURL}" if self.settings.auth else ""

    def local_curl(self, path: str) -> str:
        """A request to the server itself from the host, as admin when auth is on."""
        return f"curl -s --max-time 3 {self.admin_curl_args} http://127.0.0.1:{self.server_port}{path}".replace("  ", " ")

    @property
    def env_spec(self) -> EnvSpec:
        s = self.settings
        packages = (f"mlflow{'[auth]' if s.auth else ''}=={s.mlflow_version}", f"psycopg2-binary=={s.psycopg2_version}", *s.extra_packages)
        return EnvSpec(s.env_manager, packages, python="3.11" if s.env_manager == "conda" else "", allow_source_builds=s.allow_source_builds,
                       find_links=self.find_links, pins=self.pins)

    @property
    def env_path(self) -> str:
        return self.env_spec.path(ENVS_ROOT, "tracking")

    def allowed_hosts(self, node_name: str) -> list[str]:
        names = [self.host.name, self.address, node_name, "localhost", "127.0.0.1"]
        unique = [name for index, name in enumerate(names) if name and name not in names[:index] and "@" not in name]
        loopback = [f"127.0.0.1:{self.server_port}"] if self.settings.tls else []
        return [f"{name}:{self.settings.port}" for name in unique] + loopback + list(self.settings.allowed_hosts)

    @property
    def health_checks(self) -> list[HttpCheck]:
        api = "/api/2.0/mlflow/experiments/search?max_results=1"
        host_header = f"{self.address}:{self.settings.port}"
        if not self.settings.tls:
            return [HttpCheck("/health"), HttpCheck(api, host_header=host_header, curl_args=self.admin_curl_args)]
        # the server itself, then the whole way in through nginx as a client comes
        front = f"https://127.0.0.1:{self.settings.port}"
        return [
            HttpCheck("/health", base=f"http://127.0.0.1:{self.server_port}"),
            HttpCheck(api, host_header=host_header, base=front, curl_args=f"-k {self.admin_curl_args}".strip()),
        ]

    def facts(self) -> list[f.Fact]:
        return [
            f.os_release(),
            f.node_name(),
            f.installed_packages(self.packages),
            f.Fact("postgresql", "systemctl is-active postgresql"),
            f.Fact(
                "database",
                "cd / && runuser -u postgres -- psql -tAX -c \"select 'role' from pg_roles where rolname='mlflow' "
                "union all select 'database' from pg_database where datname='mlflow'\"",
            ),
            f.user_exists(SERVICE_USER),
            *[f.path_stat(path) for path, *_ in self.directories()],
            f.path_stat(ENV_FILE),
            f.Fact("env_keys", f"sed -n 's/=.*//p' {ENV_FILE}"),
            f.Fact("role_login", ROLE_LOGIN),
            f.Fact("secrets_after_start", SECRETS_AFTER_START),
            *frontdoor.facts(),
            *signin_guard.facts(),
            f.Fact("env_marker", f"cat {self.env_path}/.complete"),
            f.Fact("running_marker", f"cat \"$(grep -o '{ENVS_ROOT}/tracking-[0-9a-f]*' {UNIT_PATH} | head -1)/.complete\""),
            f.Fact("envs", f"ls -1 {ENVS_ROOT}"),
            f.file_content(UNIT_PATH),
            f.file_content(PROFILE),
            *[f.file_content(path) for path in (BACKUP_SCRIPT, RESTORE_SCRIPT, BACKUP_UNIT, BACKUP_TIMER)],
            f.service_state("mlflow-backup.timer"),
            f.service_state(UNIT),
            f.Fact("probe", probe_command(self.server_port, self.health_checks)),
        ]

    def directories(self) -> list[tuple[str, str, str, str]]:
        return [
            (HOME, SERVICE_USER, SERVICE_USER, "750"),
            (self.settings.artifacts, SERVICE_USER, SERVICE_USER, "750"),
            (CONFIG_DIR, "root", SERVICE_USER, "750"),
            (ENVS_ROOT, "root", "root", "755"),
        ]

    def profile(self) -> str:
        """MLFLOW_TRACKING_URI for users on the host (and the certificate to trust when it is self-signed)."""
        s = self.settings
        url = self.url if s.tls else f"http://127.0.0.1:{s.port}"
        certificate = frontdoor.CERTIFICATE if s.tls and not s.tls_certificate else ""
        return render("profile-mlflow.sh.j2", url=url, certificate=certificate)

    def backup_files(self) -> dict[str, tuple[str, str]]:
        """path -> (content, mode) of the backup and restore scripts, and of the timer when a schedule is set."""
        s = self.settings
        values = dict(backup_dir=BACKUP_DIR, keep=s.backup_keep, database=DATABASE, artifacts=s.artifacts, version=self.local_curl("/version"), unit=UNIT, user=SERVICE_USER)
        restore = dict(
            unit_path=UNIT_PATH, env_file=ENV_FILE, backup_script=BACKUP_SCRIPT, installed_env=INSTALLED_ENV,
            env_version=schema.ENV_VERSION, version_check=schema.VERSION_CHECK.strip(), migrate=schema.MIGRATE,
            database_functions=postgres.FUNCTIONS,
            gate=gate_script(UNIT, self.server_port, self.health_checks, s.health_timeout, after_restart=True),
            # a backup from another host holds that host's admin password hash: the gate signs in with this host's
            admin_reset=reset_admin_password_script('"$env"') if s.auth else "",
        )
        files = {
            BACKUP_SCRIPT: (render("mlflow-backup.sh.j2", **values), "755"),
            RESTORE_SCRIPT: (render("mlflow-restore.sh.j2", **values, **restore), "755"),
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
            bind="127.0.0.1" if s.tls else "0.0.0.0",
            port=self.server_port,
            auth_config=frontdoor.AUTH_CONFIG if s.auth else "",
            workers=s.workers,
            artifacts=s.artifacts,
            job_runner=s.job_runner,
            allowed_hosts=self.allowed_hosts(node_name),
            writable=sorted({HOME, s.artifacts}),
        )


SECRET_KEYS = ["MLFLOW_DB_PASSWORD", "MLFLOW_BACKEND_STORE_URI"]
# Prints 1 when role mlflow signs in with the secrets file's password, as the server does (the password stays in the environment).
ROLE_LOGIN = (f"password=$(sed -n 's/^MLFLOW_DB_PASSWORD=//p' {ENV_FILE}) && [ -n \"$password\" ] && "
              "PGPASSWORD=\"$password\" psql -h 127.0.0.1 -U mlflow -d postgres -w -tAX -c 'select 1' 2>/dev/null")
# Prints yes when the running server was started before the secrets file was last written: it still has the old secrets.
SECRETS_AFTER_START = (f"started=$(systemctl show -p ExecMainStartTimestamp --value {UNIT}) && [ -n \"$started\" ] && "
                       f"[ \"$(stat -c %Y {ENV_FILE})\" -gt \"$(date -d \"$started\" +%s)\" ] && echo yes")
AUTH_SECRET_KEYS = ["MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"]


def generate_env_file_script(auth: bool) -> str:
    """Secrets are generated on the host and written straight to 0640 root:mlflow (and 0600 root) files.

    Values already in the file are kept; only missing ones are generated.
    """
    return f"""umask 077
python3 - <<'PY'
import os, secrets
values = {{}}
if os.path.exists("{ENV_FILE}"):
    for line in open("{ENV_FILE}"):
        key, sep, value = line.rstrip("\\n").partition("=")
        if sep:
            values[key] = value
password = values.setdefault("MLFLOW_DB_PASSWORD", secrets.token_urlsafe(32))
values["MLFLOW_BACKEND_STORE_URI"] = f"postgresql+psycopg2://mlflow:{{password}}@127.0.0.1:5432/{DATABASE}"
if {auth}:
    values.setdefault("MLFLOW_AUTH_ADMIN_PASSWORD", secrets.token_urlsafe(32))
    values.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))

def write(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, text.encode())
    os.close(fd)

write("{ENV_FILE}.new", "".join(f"{{key}}={{value}}\\n" for key, value in values.items()))
if {auth}:
    write("{frontdoor.ADMIN_CURL}.new", f'user = "{frontdoor.ADMIN}:{{values["MLFLOW_AUTH_ADMIN_PASSWORD"]}}"\\n')
PY
chown root:{SERVICE_USER} {ENV_FILE}.new && chmod 640 {ENV_FILE}.new && mv {ENV_FILE}.new {ENV_FILE}
if [ -f {frontdoor.ADMIN_CURL}.new ]; then mv {frontdoor.ADMIN_CURL}.new {frontdoor.ADMIN_CURL}; fi"""


def secrets_step(target: TrackingTarget, facts: dict[str, str]) -> Step:
    auth = target.settings.auth
    script = generate_env_file_script(auth)
    step = ensure_secret_file(ENV_FILE, SERVICE_USER, facts.get(f"stat:{ENV_FILE}", ""), script)
    if not facts.get(f"stat:{ENV_FILE}"):
        return step
    missing = [key for key in SECRET_KEYS + (AUTH_SECRET_KEYS if auth else []) if key not in facts.get("env_keys", "").split()]
    if auth and facts.get(f"stat:{frontdoor.ADMIN_CURL}", "").strip() != "root root 600":
        missing.append(frontdoor.ADMIN_CURL)
    if missing:
        return Step.change(step.name, f"add {', '.join(missing)} (generated on the host, never shown)", script)
    return step


def reset_admin_password_script(env_path: str) -> str:
    """The stored admin password follows the secrets file: after a new secrets file, a restore, or a refused admin.curl."""
    return f"""cd /
if [ -n "$(runuser -u postgres -- psql -tAX -d mlflow -c "select to_regclass('{frontdoor.AUTH_SCHEMA}.users')")" ]; then
runuser -u {SERVICE_USER} -- env MLFLOW_AUTH_CONFIG_PATH={frontdoor.AUTH_CONFIG} {env_path}/bin/python - <<'PY'
from mlflow.server.auth.config import read_auth_config
from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore
values = dict(line.rstrip("\\n").split("=", 1) for line in open("{ENV_FILE}") if "=" in line)
store = SqlAlchemyStore()
store.init_db(read_auth_config().database_uri)
if store.has_user("{frontdoor.ADMIN}"):
    store.update_user("{frontdoor.ADMIN}", password=values["MLFLOW_AUTH_ADMIN_PASSWORD"])
    print("admin password set from the secrets file")
PY
fi"""


def admin_password_steps(target: TrackingTarget, probe: str, new_secret: bool) -> list[Step]:
    """The admin password in the auth tables must be the secrets file's (admin.curl, which the API probe uses).

    A new secrets file, a restore from another host, or an earlier run cut off before this step leave them different:
    whenever the API does not answer the admin credential with 200, the stored password is set again.
    """
    reset = reset_admin_password_script(target.env_path)
    if new_secret:
        return [Step.change("auth admin password", "follow the new secrets file", reset)]
    api = target.health_checks[-1].label
    code = dict(line.rsplit(" ", 1) for line in probe.splitlines() if " " in line).get(api, "")
    if code == "401":
        return [Step.change("auth admin password", "the server refuses the admin credential (401): set it from the secrets file", reset)]
    if code != "200":
        return [Step.change("auth admin password", f"the API did not answer the admin credential ({code or 'no answer'}): "
                                                   "set it from the secrets file", reset)]
    return []


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

    steps = [ensure_packages(target.packages, installed)]
    if facts.get("postgresql") == "active":
        steps.append(Step.ok("postgresql running", "active"))
    else:
        steps.append(Step.change("postgresql running", "enable and start", "systemctl enable --now --quiet postgresql"))
    steps.append(ensure_system_user(SERVICE_USER, HOME, bool(facts.get(f"user:{SERVICE_USER}"))))
    steps += [ensure_directory(path, owner, group, mode, facts.get(f"stat:{path}", "")) for path, owner, group, mode in target.directories()]

    secrets = secrets_step(target, facts)
    steps.append(secrets)
    new_secret = not facts.get(f"stat:{ENV_FILE}")
    if "role" in database and facts.get("role_login") == "1":
        role = Step.ok("database role mlflow", "exists, signs in with the secrets file's password")
    else:
        role = Step.change("database role mlflow", "create and set its password from the secrets file", set_role_password_script())
    steps.append(role)
    if "database" in database:
        steps.append(Step.ok(f"database {DATABASE}", "exists"))
    else:
        steps.append(Step.change(f"database {DATABASE}", "create, owned by mlflow", f"cd / && runuser -u postgres -- createdb -O mlflow {DATABASE}"))

    door = frontdoor.FrontDoor(target.host, target.address, node_name)
    door_steps = frontdoor.steps(door, facts)
    steps += door_steps

    env_step = ensure_env(target.env_spec, target.env_path, facts.get("env_marker", ""))
    steps.append(env_step)
    if s.auth and facts.get("auth_schema"):
        steps += admin_password_steps(target, facts.get("probe", ""), new_secret)
    unit_step = ensure_file(UNIT_PATH, target.unit(node_name), f.parse_file(facts.get(f"file:{UNIT_PATH}", "")))
    steps.append(unit_step)
    steps.append(ensure_file(PROFILE, target.profile(), f.parse_file(facts.get(f"file:{PROFILE}", ""))))
    steps += backup_steps(target, facts)

    steps.append(daemon_reload(unit_step.changed))
    steps.append(ensure_enabled(UNIT, service))
    if not s.tls:
        steps.append(frontdoor.remove_nginx_step(facts))
    inputs = {"unit": unit_step, "secrets": secrets, "database role": role, "python env": env_step}
    inputs.update({"auth config": step for step in door_steps if step.name == f"file {frontdoor.AUTH_CONFIG}"})
    changed_inputs = [name for name, step in inputs.items() if step.changed]
    if facts.get("secrets_after_start") == "yes" and "secrets" not in changed_inputs:
        changed_inputs.append("secrets (since the server started)")
    restart = ensure_running(UNIT, service, changed_inputs)
    steps.append(restart)
    if s.tls:
        certificate_changed = any(step.changed for step in door_steps if step.name.startswith("tls "))
        steps.append(frontdoor.nginx_step(door, facts, certificate_changed))
    steps += signin_guard.steps(s, facts)

    if restart.changed or not probe_healthy(facts.get("probe", ""), target.health_checks):
        gate = gate_script(UNIT, target.server_port, target.health_checks, s.health_timeout, after_restart=restart.changed)
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


# The env the installed unit starts, as a shell expression for a script on the host.
INSTALLED_ENV = f"$(grep -o '{ENVS_ROOT}/tracking-[0-9a-f]*' {UNIT_PATH} | head -1)"


def running_env_path(unit: str) -> str:
    """The env the installed unit starts, which is not the inventory's when an upgrade is under way."""
    match = re.search(rf"{ENVS_ROOT}/tracking-[0-9a-f]+", unit)
    return match.group(0) if match else ""


def installed_mlflow_version(marker: str) -> str:
    match = re.search(r"mlflow(?:\[\w+\])?==(\S+)", marker)
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


def from_wheelhouse(remote: Remote, target: TrackingTarget, marker: str, check: bool) -> tuple[TrackingTarget, list[Step]]:
    """The target with its env built from the host's wheelhouse when it must be built (and what was sent there)."""
    spec, steps = wheelsync.supply(remote, target.env_spec, marker, check)
    return dataclasses.replace(target, find_links=spec.find_links, pins=spec.pins), steps


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
    target, wheels = from_wheelhouse(remote, target, facts.get("env_marker", ""), report.check)
    for step in wheels:
        report.steps.append(step)
        show_step(report, step)
    steps = [guard] + plan(target, facts)
    report.steps += steps
    if report.check:
        for step in steps:
            show_step(report, step)
        return
    key = next((step for step in steps if step.name == "tls key" and step.changed), None)
    with remote.private_upload(Path(target.settings.tls_key), frontdoor.key_upload_path()) if key else nullcontext():
        applied = apply(remote, steps, lambda step: show_step(report, step))
    if applied:
        exports = f"MLFLOW_TRACKING_URI={target.url}"
        if target.settings.tls and not target.settings.tls_certificate:
            path, fingerprint = frontdoor.learn_certificate(remote, target.address, target.settings.port, steps, facts.get("tls", ""))
            show_note(report, f"self-signed tls certificate, sha256 fingerprint {fingerprint}, saved to {path}")
            exports += f" MLFLOW_TRACKING_SERVER_CERT_PATH={path}"
        show_note(report, f"tracking server: {target.url}  (export {exports})")
        if target.settings.auth:
            show_note(report, "sign-in required: `fab tracking-user --add NAME` makes a user and writes its credentials on this machine")


def check_user_certificates(hosts: list[Host]) -> None:
    """Before any connection: an expired certificate from hosts.toml stops the run, one that expires soon gets a warning."""
    for path in sorted({host.tracking.tls_certificate for host in hosts if host.tracking.tls and host.tracking.tls_certificate}):
        try:
            warning = certificates.user_certificate_warning(path)
        except certificates.CertificateError as error:
            raise Exit(f"error: {error}", code=2) from None
        if warning:
            show_warning(warning)
