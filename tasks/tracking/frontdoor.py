"""The tracking server's front door: TLS by nginx on the public port, MLflow's basic-auth app behind it.

Runbook this replaces: openssl req -x509 ...; an nginx server block pasted from a blog post;
basic_auth.ini with the admin password in it; and a server that listened on 0.0.0.0 in the meantime.
"""

from __future__ import annotations

import hashlib
import ipaddress
import shlex
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tasks.converge import apply_shown
from tasks.inventory import Host, TrackingSettings
from tasks.ops import facts as f
from tasks.ops.files import ensure_file
from tasks.ops.nginx import config_step, reload_script
from tasks.ops.remote import Remote, private_path
from tasks.ops.steps import Step
from tasks.report import HostReport
from tasks.templates import render, render_script
from tasks.tracking import certificates, signin_guard
from tasks.tracking.schema import DATABASE

CERTIFICATE = "/etc/ssl/certs/mlflow-tracking.pem"
KEY = "/etc/ssl/private/mlflow-tracking.key"
NGINX_CONFIG = "/etc/nginx/conf.d/mlflow-tracking.conf"
AUTH_CONFIG = "/etc/mlflow/basic_auth.ini"
# curl's config format (`user = "admin:..."`), root only: the health gate and tracking-user read it.
ADMIN_CURL = "/etc/mlflow/admin.curl"
ADMIN = "admin"
# The auth app's tables live in the tracking database, in their own schema: one backup holds both.
AUTH_SCHEMA = "auth"
# A one-host server's auth tables: over PostgreSQL's Unix socket as the mlflow system user (peer authentication).
LOCAL_AUTH_DATABASE = f"postgresql+psycopg2://mlflow@/{DATABASE}?host=/var/run/postgresql"
# The kinds of the certificate steps: converge uploads the key first, and learns a self-signed certificate it made.
CERTIFICATE_STEP = "tls-certificate"
KEY_STEP = "tls-key"


@dataclass(frozen=True)
class TlsFiles:
    """A front door's certificate and key on the host, and the user's PEM files on the laptop (empty: self-signed)."""

    certificate: str
    key: str
    user_certificate: str = ""
    user_key: str = ""


@dataclass(frozen=True)
class FrontDoor:
    host: Host
    address: str
    node_name: str = ""

    @property
    def settings(self) -> TrackingSettings:
        return self.host.tracking

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(CERTIFICATE, KEY, self.settings.tls_certificate, self.settings.tls_key)

    def names(self) -> list[str]:
        """subjectAltName entries of a self-signed certificate: every name clients may use."""
        names = [self.host.name, self.address, self.node_name, "localhost", "127.0.0.1"]
        entries = []
        for name in names:
            if not name or "@" in name:
                continue
            try:
                entry = f"IP:{ipaddress.ip_address(name)}"
            except ValueError:
                entry = f"DNS:{name.split(':')[0]}"
            if entry not in entries:
                entries.append(entry)
        return entries

    def nginx_config(self, replicas: tuple = (), replica_port: int = 0) -> str:
        """The front door to MLflow on loopback; with replicas (address, down), the balancer in front of their replica_port."""
        s = self.settings
        return render("nginx-mlflow-tracking.conf.j2", port=s.port, backend_port=s.backend_port, certificate=CERTIFICATE, key=KEY,
                      tls=s.tls or not replicas, replicas=replicas, replica_port=replica_port, replica_tls=s.tls,
                      **signin_guard.nginx_values(s))

    def auth_config(self, database_uri: str = LOCAL_AUTH_DATABASE) -> str:
        return render("basic_auth.ini.j2", admin=ADMIN, schema=AUTH_SCHEMA, cache_seconds=self.settings.auth_cache_seconds,
                      database_uri=database_uri, shared=database_uri != LOCAL_AUTH_DATABASE)


def tls_fact(files: TlsFiles) -> f.Fact:
    return f.Fact("tls", f"sha256sum {files.certificate} {files.key}; {certificates.inspect_command(files.certificate)}")


TLS_STATE = tls_fact(TlsFiles(CERTIFICATE, KEY))
NGINX_FILE = f.file_content(NGINX_CONFIG)
AUTH_CONFIG_FILE = f.file_content(AUTH_CONFIG)
ADMIN_CURL_STAT = f.path_stat(ADMIN_CURL)
AUTH_SCHEMA_PRESENT = f.Fact(
    "auth_schema", f"cd / && runuser -u postgres -- psql -tAX -d {DATABASE} -c \"select nspname from pg_namespace where nspname='{AUTH_SCHEMA}'\"")


def facts(local_database: bool = True) -> list[f.Fact]:
    """local_database: the auth schema is in this host's own PostgreSQL (not a replica's shared one), checked here."""
    return [TLS_STATE, NGINX_FILE, AUTH_CONFIG_FILE, ADMIN_CURL_STAT] + ([AUTH_SCHEMA_PRESENT] if local_database else [])


def fingerprint(tls_fact: str) -> str:
    line = next((line for line in tls_fact.splitlines() if "Fingerprint=" in line), "")
    return line.partition("=")[2]


def remote_digests(tls_fact: str) -> dict[str, str]:
    pairs = (line.split() for line in tls_fact.splitlines() if len(line.split()) == 2)
    return {path: digest for digest, path in pairs if path.startswith("/")}


def self_signed_script(door: FrontDoor) -> str:
    subject = f"/CN={door.host.name if '@' not in door.host.name else door.address}"
    names = "subjectAltName=" + ",".join(door.names())
    return render_script("tls-self-signed.sh.j2", subject=subject, names=names, certificate=door.tls.certificate, key=door.tls.key)


def key_upload_path() -> str:
    """Where the user's private key lands by SFTP (a private directory, never a command line) before it is installed."""
    return private_path("tls.key")


def certificate_steps(door: FrontDoor, tls_fact: str) -> list[Step]:
    """The user's certificate and key when hosts.toml names them, else a self-signed one made on the host (again when it
    expires within RENEW_WITHIN: the new fingerprint is printed and saved on the laptop)."""
    s = door.tls
    on_host = remote_digests(tls_fact)
    if not s.user_certificate:
        if s.certificate in on_host and s.key in on_host:
            expires = certificates.not_after(tls_fact)
            if certificates.renewal_due(tls_fact):
                return [Step.change("tls certificate", f"self-signed, expires {expires} (within {certificates.RENEW_WITHIN.days} days): "
                                                       f"renew for {', '.join(door.names())}", self_signed_script(door), kind=CERTIFICATE_STEP)]
            return [Step.ok("tls certificate", f"{s.certificate} (sha256 fingerprint {fingerprint(tls_fact)}, expires {expires})", kind=CERTIFICATE_STEP)]
        return [Step.change("tls certificate", f"self-signed for {', '.join(door.names())}, generated on the host", self_signed_script(door),
                            kind=CERTIFICATE_STEP)]
    certificate = Path(s.user_certificate).read_bytes()
    steps = []
    if on_host.get(s.certificate) == hashlib.sha256(certificate).hexdigest():
        steps.append(Step.ok("tls certificate", f"{s.certificate} from {s.user_certificate}", kind=CERTIFICATE_STEP))
    else:
        steps.append(Step.change("tls certificate", f"install {s.user_certificate} as {s.certificate}",
                                 ensure_file(s.certificate, certificate.decode(), f.FileState(False)).script, kind=CERTIFICATE_STEP))
    if on_host.get(s.key) == hashlib.sha256(Path(s.user_key).read_bytes()).hexdigest():
        steps.append(Step.ok("tls key", f"{s.key} (never shown)", kind=KEY_STEP))
    else:
        upload = key_upload_path()
        steps.append(Step.change("tls key", f"install {s.user_key} as {s.key} (uploaded by SFTP, never shown)",
                                 f"install -o root -g root -m 600 {upload} {s.key}", kind=KEY_STEP))
    return steps


def key_to_upload(steps: list[Step]) -> bool:
    """Whether the steps install the user's key, which must reach the host by SFTP before they run."""
    return any(step.kind == KEY_STEP and step.changed for step in steps)


def apply_with_key(remote: Remote, report: HostReport, key_file: str) -> Callable[[f.Facts, list[Step]], bool]:
    """converge_host's apply_plan for a plan that may install the user's TLS key (KEY_FILE on the laptop): the key is
    on the host only while the steps run."""
    def apply_plan(facts: f.Facts, steps: list[Step]) -> bool:
        return apply_shown(remote, report, steps, (Path(key_file), key_upload_path()) if key_to_upload(steps) else None)
    return apply_plan


def auth_schema_step(present: str) -> Step:
    name = f"database schema {AUTH_SCHEMA}"
    if present.strip() == AUTH_SCHEMA:
        return Step.ok(name, "exists (users and permissions)")
    sql = shlex.quote(f"CREATE SCHEMA IF NOT EXISTS {AUTH_SCHEMA} AUTHORIZATION mlflow")
    return Step.change(name, f"create in database {DATABASE}, owned by mlflow", f"cd / && runuser -u postgres -- psql -q -X -d {DATABASE} -c {sql}")


@dataclass
class DoorSteps:
    """The front door's steps before the server (re)starts: the auth config and schema for auth, the certificate for tls."""

    auth_config: Step | None = None
    auth_schema: Step | None = None
    certificate: list[Step] = field(default_factory=list)

    @property
    def steps(self) -> list[Step]:
        return [step for step in (self.auth_config, self.auth_schema) if step] + self.certificate


def steps(door: FrontDoor, facts: f.Facts, shared_database_uri: str = "") -> DoorSteps:
    """shared_database_uri: a replica's shared database, whose auth schema the db host (or the preflight) makes."""
    s = door.settings
    result = DoorSteps()
    if s.auth:
        config = door.auth_config(shared_database_uri) if shared_database_uri else door.auth_config()
        result.auth_config = ensure_file(AUTH_CONFIG, config, facts[AUTH_CONFIG_FILE], group="mlflow", mode="640")
        result.auth_schema = None if shared_database_uri else auth_schema_step(facts[AUTH_SCHEMA_PRESENT])
    if s.tls:
        result.certificate = certificate_steps(door, facts[TLS_STATE])
    return result


def nginx_step(door: FrontDoor, facts: f.Facts, certificate_changed: bool) -> Step:
    """After the server is up: nginx validated and reloaded when its config or the certificate changed."""
    return config_step(NGINX_CONFIG, door.nginx_config(), facts[NGINX_FILE], "certificate changed" if certificate_changed else "")


def remove_nginx_step(facts: f.Facts) -> Step:
    """tls = false: the server answers on the public port itself, so our nginx server block must go."""
    if not facts[NGINX_FILE].exists:
        return Step.ok("tls", "off (tls = false in hosts.toml): plain HTTP")
    return Step.change("tls", "off (tls = false in hosts.toml): remove the nginx front door",
                       f"rm -f {NGINX_CONFIG}\nif systemctl is-active --quiet nginx; then\n{reload_script()}\nfi")


def laptop_certificate_path(address: str, port: int) -> Path:
    """Where the laptop keeps a self-signed certificate it learned, for MLFLOW_TRACKING_SERVER_CERT_PATH."""
    return Path("~/.mlflow/certs").expanduser() / f"{address}_{port}.pem"


def pem_fingerprint(pem: str) -> str:
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest().upper()
    return ":".join(digest[index:index + 2] for index in range(0, len(digest), 2))


def learn_certificate(remote, address: str, port: int, steps_done: list[Step], tls_fact: str, certificate: str = CERTIFICATE) -> tuple[Path, str]:
    """Save the host's self-signed certificate on the laptop (fetched only when new); return its path and fingerprint."""
    made = next((step for step in steps_done if step.kind == CERTIFICATE_STEP and step.changed), None)
    remote_fingerprint = fingerprint(made.output if made else tls_fact)
    path = laptop_certificate_path(address, port)
    if path.exists() and pem_fingerprint(path.read_text()) == remote_fingerprint:
        return path, remote_fingerprint
    pem = remote.run_script(f"cat {certificate}", step="tls certificate").stdout
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(pem)
    return path, pem_fingerprint(pem)
