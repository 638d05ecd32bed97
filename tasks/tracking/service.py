"""The tracking service as hosts.toml draws it: one server per tracking host with its own PostgreSQL (database = "local"),
or replicas sharing one database (the db host's, or an external one), one S3 artifact store and one set of secrets.

The shared secrets are generated once (or taken from the first tracking host that has them) and carried host to host in
this process's memory: read from a host's secrets file over SSH, written to the others through stdin, never to a file here.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from tasks.inventory import Host, Inventory, TrackingSettings
from tasks.ops.remote import Remote
from tasks.report import HostReport, show_error
from tasks.secret_files import DatabaseUrl, read_database_url, read_s3_credentials
from tasks.tracking import database
from tasks.tracking.schema import DATABASE

# The secrets file on every tracking host (root:mlflow 0640), the server's EnvironmentFile.
ENV_FILE = "/etc/mlflow/tracking.env"
# The db host's certificate on the tracking hosts: libpq checks the server against it (sslmode=verify-full).
DATABASE_CA = "/etc/mlflow/database-ca.pem"
SECRET_NAMES = ("MLFLOW_DB_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")
GENERATED_SECRET = re.compile(r"[A-Za-z0-9_-]{20,}")


@dataclass(frozen=True)
class TrackingService:
    settings: TrackingSettings
    replicas: tuple[Host, ...]
    db_host: Host | None = None
    balancers: tuple[Host, ...] = ()
    firewall: bool = True  # [lb] firewall: the replicas answer only the balancers

    @classmethod
    def of(cls, inventory: Inventory) -> "TrackingService":
        db_hosts = inventory.with_role("db")
        return cls(inventory.tracking, tuple(inventory.with_role("tracking")), db_hosts[0] if db_hosts else None,
                   tuple(inventory.with_role("lb")), inventory.lb.firewall)

    @property
    def shared(self) -> bool:
        """Replicas of one service (a shared database), rather than a server per host."""
        return self.settings.database != "local"

    @property
    def fronted(self) -> bool:
        """The lb hosts front the replicas; clients reach the service only through them."""
        return self.shared and bool(self.balancers)


@dataclass(frozen=True)
class SharedSecrets:
    """The database password, the admin's password and the session key: the same on every replica."""

    values: dict[str, str] = field(repr=False)

    @classmethod
    def generate(cls) -> "SharedSecrets":
        return cls({"MLFLOW_DB_PASSWORD": secrets.token_urlsafe(32), "MLFLOW_AUTH_ADMIN_PASSWORD": secrets.token_urlsafe(32),
                    "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)})

    @classmethod
    def first_of(cls, found: list[dict[str, str]]) -> "SharedSecrets":
        """The first host's secrets (inventory order), each missing one generated; no host: all generated."""
        generated = cls.generate().values
        for values in found:
            if any(name in values for name in SECRET_NAMES):
                return cls({name: values.get(name) or generated[name] for name in SECRET_NAMES})
        return cls(generated)

    @property
    def db_password(self) -> str:
        return self.values["MLFLOW_DB_PASSWORD"]


def parse_env_file(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def read_secrets(remote: Remote, report: HostReport) -> dict[str, str]:
    """The shared secrets in a tracking host's secrets file (empty when it has none), into this process's memory only."""
    result = remote.run_script(f"[ ! -f {ENV_FILE} ] || cat {ENV_FILE}", step="read shared secrets")
    if result.exited != 0:
        report.error = f"cannot read {ENV_FILE}: {result.stdout.strip()[-300:]}"
        show_error(report)
        return {}
    values = parse_env_file(result.stdout)
    found = {name: values[name] for name in SECRET_NAMES if values.get(name)}
    # they go on into other hosts' secrets files, a curl config and SQL: only the forms we generate are taken
    odd = [name for name, value in found.items() if not GENERATED_SECRET.fullmatch(value)]
    if odd:
        report.error = (f"{ENV_FILE} holds {', '.join(odd)} in a form setup-tracking never writes (20 or more letters, digits, "
                        "'_' or '-'): remove the line to have a new one generated, or fix it; nothing was changed")
        show_error(report)
        return {}
    return found


@dataclass(frozen=True)
class SharedStores:
    """What a replica needs to reach the shared stores: the database (URL, password, certificate to trust) and the S3
    store (its keys and endpoint), with the secrets every replica shares. Held in memory, written only to ENV_FILE."""

    database: DatabaseUrl
    secrets: SharedSecrets
    database_ca: str = ""  # PEM of the db host's certificate; "" for an external database
    s3_credentials: dict[str, str] = field(default_factory=dict, repr=False)
    s3_endpoint_url: str = ""

    def backend_store_uri(self) -> str:
        url = self.database.url()
        return f"{url}&sslrootcert={DATABASE_CA}" if self.database_ca else url

    def env_file(self) -> str:
        """ENV_FILE's content: nothing here may reach a command line or the screen."""
        values = {
            **{name: value for name, value in self.secrets.values.items() if name != "MLFLOW_DB_PASSWORD"},
            "MLFLOW_DB_PASSWORD": self.database.password,
            "MLFLOW_BACKEND_STORE_URI": self.backend_store_uri(),
            "PGPASSWORD": self.database.password,  # libpq's: the URIs carry no password
            **self.s3_credentials,
        }
        if self.s3_credentials:
            values.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        if self.s3_endpoint_url:
            values["MLFLOW_S3_ENDPOINT_URL"] = self.s3_endpoint_url
        return "".join(f"{key}={value}\n" for key, value in values.items())


@dataclass(frozen=True)
class StoreFiles:
    """What the user's secrets files on this machine hold: read and checked before any host is touched."""

    external_database: DatabaseUrl | None = None
    s3_credentials: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def read(cls, settings: TrackingSettings) -> "StoreFiles":
        """Raises SecretFileError, whose message names the file and what to do."""
        return cls(read_database_url(Path(settings.database_url_file)) if settings.database == "external" else None,
                   read_s3_credentials(Path(settings.s3_credentials_file)) if settings.s3_credentials_file else {})


def stores_for(service: TrackingService, files: StoreFiles, found: SharedSecrets, database_ca: str) -> SharedStores:
    """The shared stores of hosts.toml, with the secrets the replicas share and the db host's certificate."""
    url = files.external_database or DatabaseUrl(database.ROLE, service.db_host.address, database.PORT, DATABASE, "verify-full",
                                                 found.db_password)
    return SharedStores(url, found, database_ca, files.s3_credentials, service.settings.s3_endpoint_url)
