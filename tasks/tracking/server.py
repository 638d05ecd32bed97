"""The MLflow tracking server: PostgreSQL for metadata, an artifact root, a systemd unit.

Runbook this replaces: apt-get install postgresql; CREATE ROLE/DATABASE; python3 -m venv;
pip install mlflow psycopg2; write a unit file; systemctl enable --now; curl /health.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shlex
from dataclasses import dataclass
from typing import Callable

from invoke.exceptions import Exit

from tasks.converge import converge_host
from tasks.inventory import Host, TrackingSettings
from tasks.ops import facts as f
from tasks.ops import firewall, postgres, wheelsync
from tasks.ops.files import ensure_directory, ensure_file, ensure_secret_file
from tasks.ops.health import HttpCheck, gate_script, probe_command, probe_healthy
from tasks.ops.metrics import textfile_script
from tasks.ops.pyenv import ENVS_ROOT, EnvSpec, ensure_env
from tasks.ops.remote import Remote
from tasks.ops.steps import Step
from tasks.ops.system import ensure_packages, ensure_system_user
from tasks.ops.systemd import daemon_reload, ensure_enabled, ensure_running
from tasks.report import HostReport, record, show_note, show_warning
from tasks.templates import render, render_script
from tasks.tracking import certificates, frontdoor, schema, signin_guard
from tasks.tracking.schema import DATABASE
from tasks.tracking.service import DATABASE_CA, ENV_FILE, SharedStores
from tasks.values import address_port

UNIT = "mlflow-tracking"
UNIT_PATH = f"/etc/systemd/system/{UNIT}.service"
SERVICE_USER = "mlflow"
HOME = "/var/lib/mlflow"
TRACKING_CONFIG_DIR = "/etc/mlflow"
PROFILE = "/etc/profile.d/mlflow.sh"
BACKUP_DIR = "/var/backups/mlflow"
# The server's request metrics, one file per worker (prometheus_client's multiprocess mode): systemd empties it at each start.
METRICS_DIR = f"/run/{UNIT}"
BACKUP_SCRIPT = "/usr/local/sbin/mlflow-backup"
RESTORE_SCRIPT = "/usr/local/sbin/mlflow-restore"
BACKUP_UNIT = "/etc/systemd/system/mlflow-backup.service"
BACKUP_TIMER_UNIT = "mlflow-backup.timer"
BACKUP_TIMER = f"/etc/systemd/system/{BACKUP_TIMER_UNIT}"
# logrotate: PostgreSQL's and nginx's logs (Debian ships their rotation, not the tool)
TRACKING_PACKAGES = ["postgresql", "python3-venv", "curl", "ca-certificates", "iproute2", "logrotate"]
# A replica reaches the shared database over the network: the client alone, for the checks and backups.
REPLICA_PACKAGES = ["postgresql-client", "python3-venv", "curl", "ca-certificates", "iproute2"]
TLS_PACKAGES = ["nginx", "openssl", "logrotate"]


@dataclass(frozen=True)
class TrackingTarget:
    """One host's tracking server as it should be."""

    host: Host
    address: str  # what clients use to reach the host
    # the host's wheelhouse and the versions resolved into it, when the env is built from one (tasks/ops/wheelsync.py)
    find_links: str = ""
    pins: tuple[str, ...] = ()
    # a replica's way to the shared database and artifact store, with the shared secrets (setup-tracking carries them)
    stores: SharedStores | None = None
    # a replica's port answering only the balancers (None: not ours to manage, as on a one-host server)
    wall: firewall.FirewallPolicy | None = None

    @property
    def replica(self) -> bool:
        """One of the replicas of a service with a shared database, rather than a server with its own PostgreSQL."""
        return self.settings.database != "local"

    @property
    def artifacts_in_s3(self) -> bool:
        return self.settings.artifacts.startswith("s3://")

    @property
    def settings(self) -> TrackingSettings:
        return self.host.tracking

    @property
    def url(self) -> str:
        return f"{'https' if self.settings.tls else 'http'}://{self.address_port}"

    @property
    def address_port(self) -> str:
        """ADDRESS:PORT as clients name the server in URLs and Host headers."""
        return address_port(self.address, self.settings.port)

    @property
    def server_port(self) -> int:
        """Where MLflow itself listens: behind nginx on loopback with tls, else on the public port."""
        return self.settings.backend_port if self.settings.tls else self.settings.port

    @property
    def packages(self) -> list[str]:
        base = REPLICA_PACKAGES if self.replica else TRACKING_PACKAGES
        walls = self.wall.packages if self.wall else []
        return list(dict.fromkeys(base + (TLS_PACKAGES if self.settings.tls else []) + signin_guard.packages(self.settings) + walls))

    @property
    def admin_curl_args(self) -> str:
        return f"-K {frontdoor.ADMIN_CURL}" if self.settings.auth else ""

    def local_curl(self, path: str) -> str:
        """A request to the server itself from the host, as admin when auth is on."""
        return f"curl -s --max-time 3 {self.admin_curl_args} http://127.0.0.1:{self.server_port}{path}".replace("  ", " ")

    @property
    def env_spec(self) -> EnvSpec:
        s = self.settings
        packages = (f"mlflow{'[auth]' if s.auth else ''}=={s.mlflow_version}", f"psycopg2-binary=={s.psycopg2_version}",
                    f"prometheus-flask-exporter=={s.prometheus_flask_exporter_version}",
                    *([f"boto3=={s.boto3_version}"] if self.artifacts_in_s3 else []), *s.extra_packages)
        return EnvSpec(s.env_manager, packages, python="3.11" if s.env_manager == "conda" else "", allow_source_builds=s.allow_source_builds,
                       find_links=self.find_links, pins=self.pins)

    @property
    def env_path(self) -> str:
        return self.env_spec.path(ENVS_ROOT, "tracking")

    def allowed_hosts(self, node_name: str) -> list[str]:
        names = [self.host.name, self.address, node_name, "localhost", "127.0.0.1"]
        unique = [name for index, name in enumerate(names) if name and name not in names[:index] and "@" not in name]
        loopback = [f"127.0.0.1:{self.server_port}"] if self.settings.tls else []
        return [address_port(name, self.settings.port) for name in unique] + loopback + list(self.settings.allowed_hosts)

    @property
    def health_checks(self) -> list[HttpCheck]:
        api = "/api/2.0/mlflow/experiments/search?max_results=1"
        host_header = self.address_port
        if not self.settings.tls:
            return [HttpCheck("/health"), HttpCheck(api, host_header=host_header, curl_args=self.admin_curl_args)]
        # the server itself, then the whole way in through nginx as a client comes
        front = f"https://127.0.0.1:{self.settings.port}"
        return [
            HttpCheck("/health", base=f"http://127.0.0.1:{self.server_port}"),
            HttpCheck(api, host_header=host_header, base=front, curl_args=f"-k {self.admin_curl_args}".strip()),
        ]

    @property
    def packages_fact(self) -> f.Fact[set[str]]:
        return f.installed_packages(self.packages)

    @property
    def env_marker_fact(self) -> f.Fact[str]:
        return f.Fact("env_marker", f"cat {self.env_path}/.complete")

    @property
    def probe_fact(self) -> f.Fact[str]:
        return f.Fact("probe", probe_command(self.server_port, self.health_checks))

    def facts(self) -> list[f.Fact]:
        local_database = [] if self.replica else [POSTGRESQL_STATE, DATABASE_OBJECTS, ROLE_SIGNS_IN]
        return [
            f.os_release(),
            f.node_name(),
            self.packages_fact,
            SERVICE_USER_EXISTS,
            *[f.path_stat(path) for path, *_ in self.directories()],
            ENV_FILE_STAT,
            ENV_KEYS,
            ENV_DIGEST,
            DATABASE_CA_FILE,
            SECRETS_NEWER_THAN_SERVER,
            *local_database,
            *frontdoor.facts(local_database=not self.replica),
            *signin_guard.facts(),
            *(firewall.facts(self.wall) if self.wall else []),
            self.env_marker_fact,
            RUNNING_MARKER,
            ENVS,
            UNIT_FILE,
            PROFILE_FILE,
            *[f.file_content(path) for path in (BACKUP_SCRIPT, RESTORE_SCRIPT, BACKUP_UNIT, BACKUP_TIMER)],
            BACKUP_TIMER_STATE,
            SERVICE_STATE,
            self.probe_fact,
        ]

    def directories(self) -> list[tuple[str, str, str, str]]:
        artifacts = [] if self.artifacts_in_s3 else [(self.settings.artifacts, SERVICE_USER, SERVICE_USER, "750")]
        return [
            (HOME, SERVICE_USER, SERVICE_USER, "750"),
            *artifacts,
            (TRACKING_CONFIG_DIR, "root", SERVICE_USER, "750"),
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
        values = dict(backup_dir=BACKUP_DIR, keep=s.backup_keep, database=DATABASE, artifacts=s.artifacts, version=self.local_curl("/version"), unit=UNIT,
                      user=SERVICE_USER, replica=self.replica, env_file=ENV_FILE, env_path=self.env_path, backup_metric=BACKUP_METRIC_SCRIPT)
        if self.replica:  # the service restores from the first replica (tasks/tracking/restore_replicas.py)
            files = {BACKUP_SCRIPT: (render("mlflow-backup.sh.j2", **values), "755")}
            return files | self.backup_timer_files()
        restore = dict(
            unit_path=UNIT_PATH, backup_script=BACKUP_SCRIPT, installed_env=INSTALLED_ENV,
            env_version=schema.ENV_VERSION,
            database_functions=postgres.functions(),
            gate=gate_script(UNIT, self.server_port, self.health_checks, s.health_timeout, after_restart=True),
            # a backup from another host holds that host's admin password hash: the gate signs in with this host's
            admin_reset=reset_admin_password_script('"$env"') if s.auth else "",
        )
        files = {
            BACKUP_SCRIPT: (render("mlflow-backup.sh.j2", **values), "755"),
            RESTORE_SCRIPT: (render("mlflow-restore.sh.j2", **values, **restore), "755"),
        }
        return files | self.backup_timer_files()

    def backup_timer_files(self) -> dict[str, tuple[str, str]]:
        s = self.settings
        if not s.backup_schedule:
            return {}
        return {BACKUP_UNIT: (render("mlflow-backup.service.j2", keep=s.backup_keep), "644"),
                BACKUP_TIMER: (render("mlflow-backup.timer.j2", schedule=s.backup_schedule), "644")}

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
            metrics_dir=METRICS_DIR,
            artifacts=s.artifacts,
            job_runner=s.job_runner,
            allowed_hosts=self.allowed_hosts(node_name),
            writable=sorted({HOME} | (set() if self.artifacts_in_s3 else {s.artifacts})),
            after="network-online.target" if self.replica else "network-online.target postgresql.service",
        )

    def auth_config(self) -> str:
        return frontdoor.FrontDoor(self.host, self.address).auth_config(self.auth_database_uri if self.replica else frontdoor.LOCAL_AUTH_DATABASE)

    @property
    def auth_database_uri(self) -> str:
        """Where the auth app keeps users: the shared database for a replica, else the local one over its socket."""
        return self.stores.backend_store_uri() if self.replica else frontdoor.LOCAL_AUTH_DATABASE

    def preflight_script(self, env_file: str, auth_config: str) -> str:
        return render_script("tracking-preflight.sh.j2", user=SERVICE_USER, env_path=self.env_path, env_file=env_file,
                             auth_config=auth_config if self.settings.auth else "", artifacts=self.settings.artifacts,
                             probe_key=f"preflight-{self.host.name}")

    def artifact_round_trip_script(self) -> str:
        """Through the server's artifact proxy, as a client logs: write, read back and delete a small object."""
        return render_script("tracking-artifact-round-trip.sh.j2", base=f"http://127.0.0.1:{self.server_port}",
                             curl_args=self.admin_curl_args, host_header=self.address_port,
                             path=f".mlflow-fab/health-{self.host.name}")


# the backup's time, for the monitor hosts' alert on backups that stopped (setup-monitoring seeds it from the newest backup)
BACKUP_METRIC = "mlflow_backup_last_success_timestamp_seconds"
BACKUP_METRIC_SCRIPT = textfile_script("mlflow_backup", BACKUP_METRIC, "When mlflow-backup last made a backup.", "$(date +%s)")
SECRET_KEYS = ["MLFLOW_DB_PASSWORD", "MLFLOW_BACKEND_STORE_URI"]
# Prints 1 when role mlflow signs in with the secrets file's password, as the server does (the password stays in the environment).
ROLE_LOGIN = (f"password=$(sed -n 's/^MLFLOW_DB_PASSWORD=//p' {ENV_FILE}) && [ -n \"$password\" ] && "
              "PGPASSWORD=\"$password\" psql -h 127.0.0.1 -U mlflow -d postgres -w -tAX -c 'select 1' 2>/dev/null")
# Prints yes when the running server was started before the secrets file was last written: it still has the old secrets.
SECRETS_AFTER_START = (f"started=$(systemctl show -p ExecMainStartTimestamp --value {UNIT}) && [ -n \"$started\" ] && "
                       f"[ \"$(stat -c %Y {ENV_FILE})\" -gt \"$(date -d \"$started\" +%s)\" ] && echo yes")
AUTH_SECRET_KEYS = ["MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"]
# The kind of the step that (re)starts the server: a replica serving clients is drained from the balancers around it.
RESTART_STEP = "restart"
# The env the installed unit starts, as a shell expression for a script on the host.
INSTALLED_ENV = f"$(grep -o '{ENVS_ROOT}/tracking-[0-9a-f]*' {UNIT_PATH} | head -1)"

# What setup-tracking reads on the host, besides the front door's and the sign-in guard's facts and the target's own.
POSTGRESQL_STATE = f.Fact("postgresql", "systemctl is-active postgresql")
DATABASE_OBJECTS = f.Fact(
    "database",
    "cd / && runuser -u postgres -- psql -tAX -c \"select 'role' from pg_roles where rolname='mlflow' "
    f"union all select 'database' from pg_database where datname='{DATABASE}'\"",
    f.words,
)
SERVICE_USER_EXISTS = f.user_exists(SERVICE_USER)
ENV_FILE_STAT = f.path_stat(ENV_FILE)
ENV_DIGEST = f.Fact("env_digest", f"sha256sum {ENV_FILE} | cut -c1-64")
DATABASE_CA_FILE = f.file_content(DATABASE_CA)
ENV_KEYS = f.Fact("env_keys", f"sed -n 's/=.*//p' {ENV_FILE}", f.words)
ROLE_SIGNS_IN = f.Fact("role_login", ROLE_LOGIN)
SECRETS_NEWER_THAN_SERVER = f.Fact("secrets_after_start", SECRETS_AFTER_START)
# The installed env's marker names the MLflow version the server runs.
RUNNING_MARKER = f.Fact("running_marker", f"cat \"{INSTALLED_ENV}/.complete\"")
ENVS = f.Fact("envs", f"ls -1 {ENVS_ROOT}", f.words)
UNIT_FILE = f.file_content(UNIT_PATH)
PROFILE_FILE = f.file_content(PROFILE)
BACKUP_TIMER_STATE = f.service_state(BACKUP_TIMER_UNIT)
SERVICE_STATE = f.service_state(UNIT)


def generate_env_file_script(auth: bool) -> str:
    """Secrets are generated on the host and written straight to 0640 root:mlflow (and 0600 root) files.

    Values already in the file are kept; only missing ones are generated.
    """
    return render_script("tracking-secrets.sh.j2", env_file=ENV_FILE, database=DATABASE, user=SERVICE_USER, auth=auth,
                         admin_curl=frontdoor.ADMIN_CURL, admin=frontdoor.ADMIN)


def shared_secrets_differ(target: TrackingTarget, facts: f.Facts) -> bool:
    """Whether a replica's secrets file (or the admin's curl config made from it) is not exactly the service's."""
    digest = hashlib.sha256(target.stores.env_file().encode()).hexdigest()
    admin_ok = not target.settings.auth or facts[frontdoor.ADMIN_CURL_STAT].strip() == "root root 600"
    return not (facts[ENV_DIGEST] == digest and facts[ENV_FILE_STAT].strip() == f"root {SERVICE_USER} 640" and admin_ok)


def shared_stores_step(target: TrackingTarget, differ: bool, needed: bool, auth_config: Step | None) -> Step:
    """Before a replica's server (re)starts, or when its secrets or auth config change: the shared database and artifact
    store must answer with the service's secrets (sent from this process's memory through stdin) and the auth config
    (which names the database), which are installed only then."""
    name = f"secrets {ENV_FILE}"
    differ = differ or bool(auth_config and auth_config.changed)
    if not (differ or needed):
        return Step.ok(name, "the service's shared secrets (never shown)")
    auth = target.settings.auth
    script = render_script("tracking-shared-secrets.sh.j2", env_file=ENV_FILE, user=SERVICE_USER,
                           preflight=target.preflight_script(f"{ENV_FILE}.next", f"{frontdoor.AUTH_CONFIG}.next"),
                           auth_config=frontdoor.AUTH_CONFIG if auth else "", auth_config_content=target.auth_config() if auth else "",
                           admin_curl=frontdoor.ADMIN_CURL if auth else "", admin=frontdoor.ADMIN)
    action = "check the shared database and artifact store with the service's secrets, then install them" if differ else \
        "check the shared database and artifact store answer with the service's secrets"
    return Step.secret(name, f"{action} (sent through stdin, never shown)", script, target.stores.env_file())


def secrets_step(target: TrackingTarget, facts: f.Facts) -> Step:
    auth = target.settings.auth
    script = generate_env_file_script(auth)
    step = ensure_secret_file(ENV_FILE, SERVICE_USER, facts[ENV_FILE_STAT], script)
    if not facts[ENV_FILE_STAT]:
        return step
    missing = [key for key in SECRET_KEYS + (AUTH_SECRET_KEYS if auth else []) if key not in facts[ENV_KEYS]]
    if auth and facts[frontdoor.ADMIN_CURL_STAT].strip() != "root root 600":
        missing.append(frontdoor.ADMIN_CURL)
    if missing:
        return Step.change(step.name, f"add {', '.join(missing)} (generated on the host, never shown)", script)
    return step


def reset_admin_password_script(env_path: str, shared: bool = False) -> str:
    """The stored admin password follows the secrets file: after a new secrets file, a restore, or a refused admin.curl.

    env_path is a shell word: a path, or "$env" inside mlflow-restore. shared: the auth tables are in the shared database."""
    return render_script("tracking-admin-password.sh.j2", env=env_path, database=DATABASE, auth_schema=frontdoor.AUTH_SCHEMA,
                         user=SERVICE_USER, auth_config=frontdoor.AUTH_CONFIG, env_file=ENV_FILE, admin=frontdoor.ADMIN, shared=shared)


def admin_password_steps(target: TrackingTarget, probe: str, new_secret: bool) -> list[Step]:
    """The admin password in the auth tables must be the secrets file's (admin.curl, which the API probe uses).

    A new secrets file, a restore from another host, or an earlier run cut off before this step leave them different:
    whenever the API does not answer the admin credential with 200, the stored password is set again.
    """
    reset = reset_admin_password_script(target.env_path, target.replica)
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
    return render_script("tracking-role-password.sh.j2", env_file=ENV_FILE)


def plan(target: TrackingTarget, facts: f.Facts) -> list[Step]:
    """Every step setup-tracking takes, decided from the facts alone."""
    s = target.settings
    node_name = facts[f.node_name()]
    service = facts[SERVICE_STATE]
    door = frontdoor.FrontDoor(target.host, target.address, node_name)
    door_steps = frontdoor.steps(door, facts, target.auth_database_uri if target.replica else "")
    env = ensure_env(target.env_spec, target.env_path, facts[target.env_marker_fact])
    unit = ensure_file(UNIT_PATH, target.unit(node_name), facts[UNIT_FILE])
    inputs = {"unit": unit, "python env": env, "auth config": door_steps.auth_config}
    if target.replica:
        before = replica_steps(target, facts, door_steps, env, inputs)
    else:
        before = local_steps(target, facts, door_steps, env, inputs)
    restart = inputs["restart"]
    steps = [*system_steps(target, facts), *before, unit, ensure_file(PROFILE, target.profile(), facts[PROFILE_FILE]),
             *backup_steps(target, facts), daemon_reload(unit.changed), ensure_enabled(UNIT, service)]
    if not s.tls:
        steps.append(frontdoor.remove_nginx_step(facts))
    steps.append(restart)
    if s.tls:
        steps.append(frontdoor.nginx_step(door, facts, any(step.changed for step in door_steps.certificate)))
    gate = health_gate_step(target, facts, restart.changed)
    round_trip = [Step.change("artifact round trip", "write, read and delete an object through the server's proxy",
                              target.artifact_round_trip_script())] if target.artifacts_in_s3 and gate.changed else []
    return steps + signin_guard.steps(s, facts) + [gate, *round_trip] + old_env_steps(target, facts)


def restart_step(facts: f.Facts, target: TrackingTarget, inputs: dict[str, Step | None], secrets_changed: bool) -> Step:
    """A (re)start when an input changed or the server is down; adds itself to inputs as "restart"."""
    reasons = [name for name, step in inputs.items() if step and step.changed]
    if facts[SECRETS_NEWER_THAN_SERVER] == "yes" and not secrets_changed:
        reasons.append("secrets (since the server started)")
    inputs["restart"] = ensure_running(UNIT, target.server_port, facts[SERVICE_STATE], reasons)
    inputs["restart"].kind = RESTART_STEP
    return inputs["restart"]


def local_steps(target: TrackingTarget, facts: f.Facts, door_steps: frontdoor.DoorSteps, env: Step, inputs: dict) -> list[Step]:
    """A one-host server: its secrets generated on the host, its own database role and database, then the env."""
    s = target.settings
    secrets = secrets_step(target, facts)
    role, database = database_steps(facts)
    admin = admin_password_steps(target, facts[target.probe_fact], not facts[ENV_FILE_STAT]) if s.auth and facts[frontdoor.AUTH_SCHEMA_PRESENT] else []
    inputs.update({"secrets": secrets, "database role": role})
    restart_step(facts, target, inputs, secrets.changed)
    return [secrets, role, database, *door_steps.steps, env, *admin]


def replica_steps(target: TrackingTarget, facts: f.Facts, door_steps: frontdoor.DoorSteps, env: Step, inputs: dict) -> list[Step]:
    """A replica: the db host's certificate to trust, then the env, then the shared secrets, checked against the stores."""
    stores = target.stores
    trust = [ensure_file(DATABASE_CA, stores.database_ca, facts[DATABASE_CA_FILE])] if stores.database_ca else []
    wall = firewall.steps(target.wall, [target.settings.port], facts) if target.wall else []
    differ = shared_secrets_differ(target, facts)
    inputs.update({"database certificate": trust[0] if trust else None, "secrets": Step("secrets", "", changed=differ)})
    restart = restart_step(facts, target, inputs, differ)
    admin = admin_password_steps(target, facts[target.probe_fact], differ) if target.settings.auth else []
    # the auth config names the database: it is installed with the secrets, once both passed the check
    before = [step for step in door_steps.steps if step is not door_steps.auth_config]
    return [*trust, *wall, *before, env, shared_stores_step(target, differ, restart.changed or bool(admin), door_steps.auth_config), *admin]


def system_steps(target: TrackingTarget, facts: f.Facts) -> list[Step]:
    """Debian packages, PostgreSQL running (not on a replica: it has none), the service user and our directories."""
    if target.replica:
        postgresql = Step.ok("postgresql", f"shared: {target.stores.database.host}:{target.stores.database.port}")
    elif facts[POSTGRESQL_STATE] == "active":
        postgresql = Step.ok("postgresql running", "active")
    else:
        postgresql = Step.change("postgresql running", "enable and start", "systemctl enable --now --quiet postgresql")
    return [ensure_packages(target.packages, facts[target.packages_fact]), postgresql,
            ensure_system_user(SERVICE_USER, HOME, facts[SERVICE_USER_EXISTS]),
            *(ensure_directory(path, owner, group, mode, facts[f.path_stat(path)]) for path, owner, group, mode in target.directories())]


def database_steps(facts: f.Facts) -> tuple[Step, Step]:
    """The role, signing in with the secrets file's password, and the database it owns."""
    objects = facts[DATABASE_OBJECTS]
    if "role" in objects and facts[ROLE_SIGNS_IN] == "1":
        role = Step.ok("database role mlflow", "exists, signs in with the secrets file's password")
    else:
        role = Step.change("database role mlflow", "create and set its password from the secrets file", set_role_password_script())
    if "database" in objects:
        database = Step.ok(f"database {DATABASE}", "exists")
    else:
        database = Step.change(f"database {DATABASE}", "create, owned by mlflow", f"cd / && runuser -u postgres -- createdb -O mlflow {DATABASE}")
    return role, database


def health_gate_step(target: TrackingTarget, facts: f.Facts, restarted: bool) -> Step:
    """Wait for /health and the API after a restart or when they don't answer now."""
    s = target.settings
    if restarted or not probe_healthy(facts[target.probe_fact], target.health_checks):
        gate = gate_script(UNIT, target.server_port, target.health_checks, s.health_timeout, after_restart=restarted)
        return Step.change("health gate", f"wait up to {s.health_timeout} s for /health and the API to answer 200", gate)
    return Step.ok("health gate", "/health and the API answer 200")


def old_env_steps(target: TrackingTarget, facts: f.Facts) -> list[Step]:
    """The tracking envs of earlier versions, once the server runs from another."""
    old_envs = [name for name in facts[ENVS] if name.startswith("tracking-") and f"{ENVS_ROOT}/{name}" != target.env_path]
    if not old_envs:
        return []
    paths = " ".join(shlex.quote(f"{ENVS_ROOT}/{name}") for name in old_envs)
    return [Step.change("old python envs", "remove " + ", ".join(old_envs), f"rm -rf {paths}")]


def backup_steps(target: TrackingTarget, facts: f.Facts) -> list[Step]:
    """The backup and restore scripts; the timer and its service only when backup_schedule is set."""
    files = {path: ensure_file(path, content, facts[f.file_content(path)], mode=mode) for path, (content, mode) in target.backup_files().items()}
    steps = list(files.values())
    timer = facts[BACKUP_TIMER_STATE]
    timer_files_changed = any(files[path].changed for path in (BACKUP_UNIT, BACKUP_TIMER) if path in files)
    if target.settings.backup_schedule:
        enabled = timer.get("UnitFileState") == "enabled" and timer.get("ActiveState") == "active"
        if timer_files_changed or not enabled:
            steps.append(Step.change("backup timer", f"backups on schedule {target.settings.backup_schedule!r}",
                                     f"systemctl daemon-reload\nsystemctl enable --now --quiet {BACKUP_TIMER_UNIT}\nsystemctl restart {BACKUP_TIMER_UNIT}"))
        else:
            steps.append(Step.ok("backup timer", f"scheduled {target.settings.backup_schedule!r}"))
    elif facts[f.file_content(BACKUP_TIMER)].exists:
        steps.append(Step.change("backup timer", "no backup_schedule: remove the timer",
                                 f"systemctl disable --now --quiet {BACKUP_TIMER_UNIT} || true\nrm -f {BACKUP_TIMER} {BACKUP_UNIT}\nsystemctl daemon-reload"))
    return steps



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


def restarts_while_serving(facts: f.Facts, steps: list[Step]) -> bool:
    return facts[SERVICE_STATE].get("ActiveState") == "active" and any(step.kind == RESTART_STEP and step.changed for step in steps)


def converge(remote: Remote, report: HostReport, stores: SharedStores | None = None, take_turn: Callable | None = None,
             wall: firewall.FirewallPolicy | None = None) -> None:
    """stores: the shared stores of a replica. take_turn(host, report, apply) -> bool runs a plan that restarts a server
    while it serves clients: the replicas take turns, each drained from the balancers while it restarts. wall: who may
    reach a replica's port."""
    target = TrackingTarget(remote.host, remote.connection.host, stores=stores, wall=wall)
    apply_plan = frontdoor.apply_with_key(remote, report, target.settings.tls_key)

    def apply_in_turn(facts: f.Facts, steps: list[Step]) -> bool:
        if take_turn and restarts_while_serving(facts, steps):
            return take_turn(remote.host, report, lambda: apply_plan(facts, steps))
        return apply_plan(facts, steps)

    def guarded_plan(facts: f.Facts) -> list[Step]:
        nonlocal target
        guard = version_guard(target, facts[RUNNING_MARKER])
        if guard.failed:
            return [guard]
        target, wheels = from_wheelhouse(remote, target, facts[target.env_marker_fact], report.check)
        record(report, wheels)
        return [guard] + plan(target, facts)

    converged = converge_host(remote, report, lambda: f.gather(remote, target.facts()), guarded_plan, apply_in_turn)
    facts, steps = converged.facts, converged.steps
    if converged.done:
        exports = f"MLFLOW_TRACKING_URI={target.url}"
        if target.settings.tls and not target.settings.tls_certificate:
            path, fingerprint = frontdoor.learn_certificate(remote, target.address, target.settings.port, steps, facts[frontdoor.TLS_STATE])
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
