"""The tracking service's own PostgreSQL on the host with role "db": TLS with a certificate made on the host, listening on
its private address, admitting only the tracking hosts (scram-sha-256 over TLS), the role and database created as on a
one-host server, the password arriving through stdin.

Runbook this replaces: apt-get install postgresql; edit listen_addresses, ssl_cert_file and pg_hba.conf by hand;
CREATE ROLE ... PASSWORD typed into psql; copy the server certificate to every client.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

from tasks.converge import converge_host
from tasks.inventory import Host
from tasks.ops import facts as f
from tasks.ops.files import ensure_file
from tasks.ops.remote import Remote
from tasks.ops.steps import Step
from tasks.ops.system import ensure_packages
from tasks.ops.systemd import ensure_enabled
from tasks.report import HostReport, show_note
from tasks.templates import render, render_script
from tasks.tracking import frontdoor
from tasks.tracking.frontdoor import FrontDoor, TlsFiles, certificate_steps, tls_fact
from tasks.tracking.schema import DATABASE
from tasks.values import address_port

PORT = 5432
ROLE = "mlflow"
DATABASE_PACKAGES = ["postgresql", "openssl", "ssl-cert", "logrotate"]  # logrotate: PostgreSQL's logs
OUR_DIR = "/etc/postgresql/mlflow-fab"
CERTIFICATE = f"{OUR_DIR}/server.crt"
KEY = f"{OUR_DIR}/server.key"
HBA = f"{OUR_DIR}/pg_hba.conf"
# Debian's postgresql.conf includes conf.d: our settings sit there, in the one cluster the package made.
SETTINGS_NAME = "mlflow-fab.conf"
SETTINGS_GLOB = f"/etc/postgresql/*/main/conf.d/{SETTINGS_NAME}"
PASSWORD_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


@dataclass(frozen=True)
class DatabaseDoor(FrontDoor):
    """The front door's certificate handling, for PostgreSQL's own certificate (names: the db host's)."""

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(CERTIFICATE, KEY)


@dataclass(frozen=True)
class DatabaseTarget:
    """The db host as it should be: who may connect, and the role's password (from the laptop's memory)."""

    host: Host
    clients: tuple[str, ...]  # the tracking hosts' addresses
    password: str

    def settings_file(self) -> str:
        return render("postgresql-mlflow.conf.j2", addresses=["localhost", self.host.address], certificate=CERTIFICATE, key=KEY, hba=HBA)

    def hba_file(self) -> str:
        return render("pg_hba-mlflow.conf.j2", database=DATABASE, role=ROLE, clients=[client_network(address) for address in self.clients])


def client_network(address: str) -> str:
    """pg_hba's ADDRESS column: one host (a name is matched by PostgreSQL's forward and reverse lookup)."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    return f"{ip}/{32 if ip.version == 4 else 128}"


def scram_matches(verifier: str, password: str) -> bool:
    """Whether PostgreSQL's stored SCRAM-SHA-256 verifier is this password's (RFC 5802: StoredKey = H(HMAC(salted, "Client Key")))."""
    try:
        method, rest = verifier.strip().split("$", 1)
        iterations_salt, keys = rest.split("$")
        iterations, salt = iterations_salt.split(":")
        stored_key = keys.split(":")[0]
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        return method == "SCRAM-SHA-256" and hmac.compare_digest(hashlib.sha256(client_key).digest(), base64.b64decode(stored_key))
    except (ValueError, TypeError):
        return False


INSTALLED = f.installed_packages(DATABASE_PACKAGES)
POSTGRESQL = f.service_state("postgresql")
SETTINGS = f.Fact("postgresql_settings", f"cat {SETTINGS_GLOB}")
HBA_FILE = f.file_content(HBA)
KEY_STAT = f.path_stat(KEY)
TLS = tls_fact(TlsFiles(CERTIFICATE, KEY))
OBJECTS = f.Fact(
    "database",
    f"cd / && runuser -u postgres -- psql -tAX -c \"select 'role' from pg_roles where rolname='{ROLE}' "
    f"union all select 'database' from pg_database where datname='{DATABASE}'\"",
    f.words,
)
# The role's SCRAM verifier: compared on the laptop with the shared password, which never reaches a command line.
VERIFIER = f.Fact("role_verifier", f"cd / && runuser -u postgres -- psql -tAX -c \"select rolpassword from pg_authid where rolname='{ROLE}'\"")
# What the server runs with now (pg_settings), to tell a reload from a restart.
RUNNING = f.Fact("postgresql_running", "cd / && runuser -u postgres -- psql -tAX -c \"select setting from pg_settings "
                                       "where name in ('listen_addresses', 'hba_file', 'ssl') order by name\"", f.words)


def facts() -> list[f.Fact]:
    return [f.os_release(), f.node_name(), INSTALLED, POSTGRESQL, SETTINGS, HBA_FILE, KEY_STAT, TLS, OBJECTS, VERIFIER, RUNNING,
            frontdoor.AUTH_SCHEMA_PRESENT]


def role_step(target: DatabaseTarget, facts: f.Facts) -> Step:
    name = f"database role {ROLE}"
    if "role" in facts[OBJECTS] and scram_matches(facts[VERIFIER], target.password):
        return Step.ok(name, "exists, signs in with the service's password")
    script = render_script("tracking-role-password.sh.j2", env_file="")
    return Step.secret(name, "create, and set the service's password (sent through stdin, never shown)", script, target.password)


def database_step(facts: f.Facts) -> Step:
    if "database" in facts[OBJECTS]:
        return Step.ok(f"database {DATABASE}", "exists")
    return Step.change(f"database {DATABASE}", f"create, owned by {ROLE}", f"cd / && runuser -u postgres -- createdb -O {ROLE} {DATABASE}")


def key_owner_step(facts: f.Facts, certificate_made: bool) -> Step:
    """PostgreSQL reads its key as user postgres, and only from a file no one else may read."""
    if not certificate_made and facts[KEY_STAT].strip() == "postgres postgres 600":
        return Step.ok(f"file {KEY}", "postgres postgres 600")
    return Step.change(f"file {KEY}", "owned by postgres, 600", f"chown postgres:postgres {KEY}\nchmod 600 {KEY}")


def server_step(target: DatabaseTarget, facts: f.Facts, settings: Step, hba: Step, certificate_made: bool) -> Step:
    """A restart for what only a restart applies (the listen addresses, the hba file's path), else a reload."""
    wanted = sorted(["on", HBA, f"localhost,{target.host.address}"])
    if facts[POSTGRESQL].get("ActiveState") != "active" or settings.changed or sorted(facts[RUNNING]) != wanted:
        return Step.change("postgresql", f"restart: listen on localhost and {address_port(target.host.address, PORT)}, TLS on",
                           "systemctl enable --quiet postgresql\nsystemctl restart postgresql")
    if hba.changed or certificate_made:
        return Step.change("postgresql", "reload: " + " and ".join(why for why, changed in (
            ("the clients admitted changed", hba.changed), ("a new certificate", certificate_made)) if changed), "systemctl reload postgresql")
    return Step.ok("postgresql", f"listening on {address_port(target.host.address, PORT)} with TLS")


def plan(target: DatabaseTarget, facts: f.Facts) -> list[Step]:
    door = DatabaseDoor(target.host, target.host.address, facts[f.node_name()])
    directory = Step.ok(f"directory {OUR_DIR}", "exists") if facts[HBA_FILE].exists else \
        Step.change(f"directory {OUR_DIR}", "create", f"install -d -o root -g postgres -m 750 {OUR_DIR}")
    certificate = certificate_steps(door, facts[TLS])
    certificate_made = any(step.changed for step in certificate)
    current_settings = facts[SETTINGS].strip()
    settings_text = target.settings_file()
    if current_settings == settings_text.strip():
        settings = Step.ok(f"file {SETTINGS_GLOB}", "up to date")
    else:
        settings = Step.change(f"file {SETTINGS_GLOB}", "listen on the private address, TLS with our certificate, our pg_hba.conf",
                               render_script("postgresql-settings.sh.j2", name=SETTINGS_NAME, content=settings_text))
    hba = ensure_file(HBA, target.hba_file(), facts[HBA_FILE], group="postgres", mode="640")
    steps = [ensure_packages(DATABASE_PACKAGES, facts[INSTALLED]), directory, *certificate, key_owner_step(facts, certificate_made),
             settings, hba, server_step(target, facts, settings, hba, certificate_made), ensure_enabled("postgresql", facts[POSTGRESQL]),
             role_step(target, facts), database_step(facts), frontdoor.auth_schema_step(facts[frontdoor.AUTH_SCHEMA_PRESENT])]
    return steps


def converge(remote: Remote, report: HostReport, clients: tuple[str, ...], password: str) -> str:
    """Bring the db host to its plan; return its certificate (PEM), which the tracking hosts trust ('' when not done)."""
    if not set(password) <= PASSWORD_CHARACTERS or len(password) < 20:
        raise ValueError("the database password must be at least 20 letters, digits, '_' or '-'")
    target = DatabaseTarget(remote.host, clients, password)
    converged = converge_host(remote, report, lambda: f.gather(remote, facts()), lambda gathered: plan(target, gathered))
    if not converged.done and not report.check:
        return ""
    read = remote.run_script(f"cat {CERTIFICATE}", step="database certificate")
    pem = read.stdout if read.exited == 0 else ""
    if converged.done:
        show_note(report, f"database: postgresql://{ROLE}@{address_port(target.host.address, PORT)}/{DATABASE} (TLS, sha256 fingerprint "
                          f"{frontdoor.pem_fingerprint(pem)}), admitting {', '.join(clients)}")
    return pem
