"""hosts.toml -> typed inventory, and host selection from -H and roles.

Every error names the file and the key, and is raised before any connection is opened.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from tasks.oncalendar import check_calendar
from tasks.requirements import RequirementError, check_packages
from tasks.values import (
    check_address,
    check_allowed_host,
    check_artifacts,
    check_duration,
    check_endpoint_url,
    check_host_name,
    check_mlflow_version,
    check_model_name,
    check_port,
    check_printable,
    check_user_name,
    check_version,
)

KNOWN_ROLES = ("tracking", "models", "lb", "train", "db", "monitor")
DATABASES = ("local", "host", "external")
# One service's settings, the same on every replica: a host's own [hosts.NAME.tracking] may not change them.
SHARED_TRACKING_KEYS = ("database", "database_url_file", "s3_endpoint_url", "s3_credentials_file")
REPLICA_TRACKING_KEYS = ("artifacts", "mlflow_version", "auth", "boto3_version", "port", "tls", "tls_certificate", "tls_key")
EXPORTER_PORT_KEYS = ("node_exporter_port", "mtail_port", "nginx_exporter_port", "nginx_status_port", "postgres_exporter_port",
                      "tracking_metrics_port")


class InventoryError(Exception):
    """A problem with hosts.toml or with the hosts asked for; the message says what to do."""


@dataclass(frozen=True)
class ConnectionSettings:
    user: str | None = None
    port: int = 22
    identity: str | None = None
    sudo: bool | None = None
    known_hosts: str = "~/.ssh/known_hosts"
    accept_new_host_keys: bool = False
    # Python envs install from wheels this machine fetched and sent (the host needs no route to PyPI); false: from PyPI.
    wheelhouse: bool = True


@dataclass(frozen=True)
class TrackingSettings:
    port: int = 5000
    workers: int = 2
    mlflow_version: str = "3.17.2"
    psycopg2_version: str = "2.9.13"
    extra_packages: list[str] = field(default_factory=list)  # plain PEP 508 requirements only
    # pip installs binary wheels only; true lets it build sdists, running their build code (as the build user).
    allow_source_builds: bool = False
    env_manager: str = "venv"
    artifacts: str = "/var/lib/mlflow/artifacts"  # or s3://BUCKET[/PREFIX]: the servers proxy it, clients need no S3 keys
    # The metadata: "local" (PostgreSQL on each tracking host), "host" (on the host with role "db") or "external" (a server
    # we create nothing on, its URL in database_url_file). With "host" or "external" every tracking host is a replica of
    # one service, fronted by the lb hosts.
    database: str = "local"
    database_url_file: str = ""  # on this machine, 0600: postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE[?sslmode=...]
    s3_endpoint_url: str = ""  # an S3-compatible store's http(s)://HOST[:PORT]; empty for AWS
    s3_credentials_file: str = ""  # on this machine, 0600: AWS_ACCESS_KEY_ID=... and AWS_SECRET_ACCESS_KEY=... lines
    boto3_version: str = "1.44.8"  # in the server's env when artifacts are in S3
    # in the server's env: `mlflow server --expose-prometheus` records each request with it (setup-monitoring serves them)
    prometheus_flask_exporter_version: str = "0.23.2"
    job_runner: bool = False
    allowed_hosts: list[str] = field(default_factory=list)
    health_timeout: int = 180
    backup_keep: int = 7
    backup_schedule: str = ""  # systemd OnCalendar, e.g. "daily" or "*-*-* 03:00"; empty: no timer
    # The front door: nginx terminates TLS on `port` and MLflow listens on 127.0.0.1:backend_port.
    # tls = false serves plain HTTP from MLflow itself on `port`, for networks you trust.
    tls: bool = True
    tls_certificate: str = ""  # PEM files on the laptop; empty: a self-signed certificate made on the host
    tls_key: str = ""
    backend_port: int = 5050
    # MLflow's basic-auth app: every request needs a user; false lets anyone who reaches the port read and delete.
    auth: bool = True
    # Each server worker remembers a verified user this long instead of hashing the password (~0.4 s) on every request; 0: never.
    auth_cache_seconds: int = 60
    # With tls and auth: fail2ban bans an address from `port` for signin_ban_seconds after signin_max_failures
    # wrong passwords within signin_window_seconds, and nginx lets one address run at most
    # parallel_requests_per_address requests at once (the rest get 429), so a flood can't queue up ahead of the ban.
    signin_guard: bool = True
    signin_max_failures: int = 10
    signin_window_seconds: int = 600
    signin_ban_seconds: int = 600
    parallel_requests_per_address: int = 16


@dataclass(frozen=True)
class ModelSettings:
    port: int = 5001
    workers: int = 1
    keep_releases: int = 5
    env_manager: str = "venv"
    health_timeout: int = 120
    # the model's requirements come as binary wheels only; true lets pip build sdists (their code runs as the build user)
    allow_source_builds: bool = False


@dataclass(frozen=True)
class LbSettings:
    """The balancer in front of the model hosts, for inventories with lb hosts."""

    # nginx terminates TLS on every model port; false serves plain HTTP, for networks you trust.
    tls: bool = True
    tls_certificate: str = ""  # PEM files on the laptop; empty: a self-signed certificate made on each lb host
    tls_key: str = ""
    # Every request needs a user made by `fab model-user`; false lets anyone who reaches the port get predictions.
    auth: bool = True
    # Model hosts accept the model ports only from the lb hosts (and themselves); false removes that firewall.
    firewall: bool = True


@dataclass(frozen=True)
class MonitoringSettings:
    """Prometheus on the monitor hosts, and the exporters it scrapes on every host."""

    retention: str = "15d"
    scrape_interval: str = "15s"
    evaluation_interval: str = "15s"
    # Prometheus listens on 127.0.0.1 of the monitor hosts only: `fab monitor` tunnels to it over SSH.
    prometheus_port: int = 9090
    # on each host's inventory address, answering the monitor hosts only (and loopback)
    node_exporter_port: int = 9100
    # mtail on the lb hosts: the models' request metrics, from the balancer's log
    mtail_port: int = 3903
    # the nginx exporter where nginx runs (lb hosts, TLS front doors), reading nginx's stub_status on 127.0.0.1
    nginx_exporter_port: int = 9113
    nginx_status_port: int = 9180
    # the PostgreSQL exporter where PostgreSQL runs (db hosts, one-host tracking servers)
    postgres_exporter_port: int = 9187
    # on tracking hosts: the server's own request metrics (it records them with --expose-prometheus), outside its sign-in
    tracking_metrics_port: int = 9718
    # a model alerts when more of its answers than this are 5xx, or its p99 latency is above this, for 5 minutes
    model_error_ratio: float = 0.05
    model_p99_seconds: float = 1.0
    # a tracking server alerts when more of its answers than this are 5xx for 5 minutes
    tracking_error_ratio: float = 0.05


@dataclass(frozen=True)
class TrainSettings:
    """How `fab run-project` builds a project's env on the train hosts."""

    env_manager: str = "venv"
    # the project's requirements come as binary wheels only; true lets pip build sdists (as the build user)
    allow_source_builds: bool = False


@dataclass(frozen=True, kw_only=True)
class Host(ConnectionSettings):
    name: str
    address: str
    roles: tuple[str, ...] = ()
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    models: dict[str, ModelSettings] = field(default_factory=dict)
    # True for hosts given on the command line as user@address[:port] or an ssh-config alias.
    ad_hoc: bool = False

    @property
    def needs_sudo(self) -> bool:
        return self.sudo if self.sudo is not None else self.user != "root"

    def model(self, name: str) -> ModelSettings:
        return self.models.get(name, self.models.get("", ModelSettings()))


@dataclass(frozen=True)
class Inventory:
    path: Path
    defaults: ConnectionSettings
    tracking: TrackingSettings
    hosts: dict[str, Host]
    models: dict[str, ModelSettings] = field(default_factory=dict)
    lb: LbSettings = field(default_factory=LbSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)

    def with_role(self, role: str) -> list[Host]:
        return [host for host in self.hosts.values() if role in host.roles]

    def ad_hoc_host(self, target: str) -> Host:
        """A host given as user@address[:port] (or an ssh-config alias), with inventory defaults."""
        user, _, rest = target.rpartition("@")
        address, port = rest, self.defaults.port
        if rest.count(":") == 1:
            address, port_text = rest.split(":")
            if not port_text.isdigit():
                raise InventoryError(f"-H {target}: port {port_text!r} is not a number")
            port = int(port_text)
        checks = [("address", address, check_address), ("port", port, check_port)] + ([("user", user, check_user_name)] if user else [])
        for what, value, check in checks:
            try:
                check(value)
            except ValueError as error:
                raise InventoryError(f"-H {target!r}: the {what} {error}") from None
        return Host(
            name=target,
            address=address,
            user=user or self.defaults.user,
            port=port,
            identity=self.defaults.identity,
            sudo=self.defaults.sudo,
            known_hosts=self.defaults.known_hosts,
            accept_new_host_keys=self.defaults.accept_new_host_keys,
            wheelhouse=self.defaults.wheelhouse,
            tracking=self.tracking,
            models=self.models,
            ad_hoc=True,
        )


def _type_name(annotation) -> str:
    return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "none")


def _matches(value, annotation) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (list, tuple):
        (item_type, *_) = typing.get_args(annotation)
        return isinstance(value, list) and all(_matches(item, item_type) for item in value)
    if dataclasses.is_dataclass(annotation) or origin is dict:
        return isinstance(value, dict)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:  # `1` is as good as `1.0`
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _check_schedule(schedule: str) -> None:
    if schedule:  # empty: no backup timer
        check_calendar(schedule)


# What each string or port of a table must look like (ports of every kind share the key "port").
VALUE_CHECKS = {
    "user": check_user_name,
    "address": check_address,
    "port": check_port,
    "backend_port": check_port,
    "artifacts": check_artifacts,
    "s3_endpoint_url": check_endpoint_url,
    "boto3_version": check_version,
    "allowed_hosts": check_allowed_host,
    "mlflow_version": check_mlflow_version,
    "psycopg2_version": check_version,
    "prometheus_flask_exporter_version": check_version,
    "backup_schedule": _check_schedule,
    "retention": check_duration,
    "scrape_interval": check_duration,
    "evaluation_interval": check_duration,
    "prometheus_port": check_port,
    "node_exporter_port": check_port,
    "mtail_port": check_port,
    "nginx_exporter_port": check_port,
    "nginx_status_port": check_port,
    "postgres_exporter_port": check_port,
    "tracking_metrics_port": check_port,
}


def _check_value(key: str, value, where: str, path: Path) -> None:
    check = VALUE_CHECKS.get(key)
    for item in (value if isinstance(value, list) else [value]) if check else ():
        try:
            check(item)
        except ValueError as error:
            raise InventoryError(f"{path}: [{where}] {key} {error} (got {item!r})") from None


def _check_printable(table: dict, where: str, path: Path) -> None:
    """No control character or line break in any key or string of the file: one could add a line to a unit file."""
    for key, value in table.items():
        label = f"[{where}] {key}" if where else f"[{key}]"
        try:
            check_printable(key)
        except ValueError as error:
            raise InventoryError(f"{path}: {f'[{where}] ' if where else ''}name {key!r} {error}") from None
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                _check_printable(item, f"{where}.{key}" if where else key, path)
            elif isinstance(item, str):
                try:
                    check_printable(item)
                except ValueError as error:
                    raise InventoryError(f"{path}: {label} {error} (got {item!r})") from None


def _check_table(table: dict, schema: type, where: str, path: Path) -> dict:
    """Validate keys, types and values of a TOML table against a dataclass; return the known values."""
    hints = typing.get_type_hints(schema)
    known = [f.name for f in dataclasses.fields(schema) if f.name not in ("name", "ad_hoc")]
    values = {}
    for key, value in table.items():
        if key not in known:
            raise InventoryError(
                f"{path}: unknown key {key!r} in [{where}] (known keys: {', '.join(known)})"
            )
        if not _matches(value, hints[key]):
            raise InventoryError(
                f"{path}: [{where}] {key} = {value!r} should be of type {_type_name(hints[key])}"
            )
        _check_value(key, value, where, path)
        values[key] = tuple(value) if isinstance(value, list) and key == "roles" else value
    return values


def _tracking_settings(base: TrackingSettings, table: dict, where: str, path: Path) -> TrackingSettings:
    values = _check_table(table, TrackingSettings, where, path)
    settings = dataclasses.replace(base, **values)
    if settings.env_manager not in ("venv", "conda"):
        raise InventoryError(f'{path}: [{where}] env_manager must be "venv" or "conda", not {settings.env_manager!r}')
    for key in ("workers", "health_timeout", "backup_keep",
                "signin_max_failures", "signin_window_seconds", "signin_ban_seconds", "parallel_requests_per_address"):
        if getattr(settings, key) < 1:
            raise InventoryError(f"{path}: [{where}] {key} must be a positive number")
    if settings.auth_cache_seconds < 0:
        raise InventoryError(f"{path}: [{where}] auth_cache_seconds must be 0 (no cache) or more")
    try:
        check_packages(settings.extra_packages, f"{path}: [{where}] extra_packages")
    except RequirementError as error:
        raise InventoryError(str(error)) from None
    if settings.tls and settings.port == settings.backend_port:
        raise InventoryError(f"{path}: [{where}] port and backend_port must differ: nginx listens on one, MLflow on the other")
    settings = _with_local_files(settings, ("database_url_file", "s3_credentials_file"), where, path)
    return _with_local_pem_files(settings, where, path)


def _with_local_files(settings, keys: tuple[str, ...], where: str, path: Path):
    """Files on this machine named in hosts.toml: they must exist, and are made absolute (relative to hosts.toml)."""
    for key in keys:
        value = getattr(settings, key)
        if value:
            local = path.parent / Path(value).expanduser()
            if not local.is_file():
                raise InventoryError(f"{path}: [{where}] {key} = {value!r}: no such file on this machine")
            settings = dataclasses.replace(settings, **{key: str(local.resolve())})
    return settings


def _check_host_tracking_keys(table: dict, service: TrackingSettings, where: str, path: Path) -> None:
    """A host may tune its own server, but not what every replica of the service must share."""
    shared = SHARED_TRACKING_KEYS + (REPLICA_TRACKING_KEYS if service.database != "local" else ())
    for key in table:
        if key in shared:
            raise InventoryError(f"{path}: [{where}.tracking] {key} is a setting of the whole tracking service"
                                 f"{' (its replicas share it)' if key in REPLICA_TRACKING_KEYS else ''}: set it in [tracking]")


def _check_tracking_service(s: TrackingSettings, hosts: list[Host], path: Path) -> None:
    """Where the service keeps its metadata and artifacts, and which hosts it needs for that."""
    db_hosts = [host.name for host in hosts if "db" in host.roles]
    tracking_hosts = [host.name for host in hosts if "tracking" in host.roles]
    if s.database not in DATABASES:
        raise InventoryError(f"{path}: [tracking] database must be one of {', '.join(map(repr, DATABASES))}, not {s.database!r}")
    if s.database == "host" and len(db_hosts) != 1:
        found = f"found {', '.join(db_hosts)}" if db_hosts else "none has it"
        raise InventoryError(f'{path}: database = "host" needs exactly one host with roles = ["db"] ({found})')
    if s.database != "host" and db_hosts:
        raise InventoryError(f'{path}: hosts {", ".join(db_hosts)} have role "db" but [tracking] database = {s.database!r}: '
                             'set database = "host" to keep the metadata there')
    if (s.database == "external") != bool(s.database_url_file):
        raise InventoryError(f'{path}: [tracking] database_url_file goes with database = "external" (and only with it): '
                             "a file on this machine (chmod 600) holding postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE")
    in_s3 = s.artifacts.startswith("s3://")
    if in_s3 != bool(s.s3_credentials_file):
        raise InventoryError(f"{path}: [tracking] s3_credentials_file goes with artifacts = \"s3://...\" (and only with it): "
                             "a file on this machine (chmod 600) with AWS_ACCESS_KEY_ID=... and AWS_SECRET_ACCESS_KEY=... lines")
    if s.s3_endpoint_url and not in_s3:
        raise InventoryError(f"{path}: [tracking] s3_endpoint_url is set but artifacts = {s.artifacts!r} is not in S3")
    if s.database != "local" and len(tracking_hosts) > 1 and not in_s3:
        raise InventoryError(f"{path}: tracking hosts {', '.join(tracking_hosts)} are replicas of one service: they need one "
                             f"artifact store, artifacts = \"s3://BUCKET/PREFIX\" (now {s.artifacts!r}, a path on each host)")
    if s.database == "local" and in_s3 and len(tracking_hosts) > 1:
        raise InventoryError(f'{path}: with database = "local" each tracking host is a service of its own: they must not share '
                             f'{s.artifacts}: set database = "host" or "external" to make them replicas')


def _with_local_pem_files(settings, where: str, path: Path):
    """tls_certificate and tls_key: both or neither, files on this machine, made absolute."""
    if bool(settings.tls_certificate) != bool(settings.tls_key):
        raise InventoryError(f"{path}: [{where}] tls_certificate and tls_key go together: give both, or neither for a self-signed certificate")
    return _with_local_files(settings, ("tls_certificate", "tls_key"), where, path)


def _model_settings(base: dict[str, ModelSettings], table: dict, where: str, path: Path) -> dict[str, ModelSettings]:
    """[models] holds defaults for every model name; [models.NAME] one model's own settings.

    The defaults are kept under the name "" so a name the inventory never mentions still gets them.
    """
    defaults_table = {key: value for key, value in table.items() if not isinstance(value, dict)}
    values = _check_table(defaults_table, ModelSettings, where, path)
    models = {name: dataclasses.replace(settings, **values) for name, settings in base.items()}
    for name, model_table in table.items():
        if isinstance(model_table, dict):
            try:
                check_model_name(name)
            except ValueError as error:
                raise InventoryError(f"{path}: [{where}.{name}] the model name {error}") from None
            start = models.get(name, models[""])
            model_values = _check_table(model_table, ModelSettings, f"{where}.{name}", path)
            models[name] = dataclasses.replace(start, **model_values)
    for name, settings in models.items():
        label = f"{where}.{name}" if name else where
        if settings.env_manager not in ("venv", "conda"):
            raise InventoryError(f'{path}: [{label}] env_manager must be "venv" or "conda", not {settings.env_manager!r}')
        for key in ("workers", "keep_releases", "health_timeout"):
            if getattr(settings, key) < 1:
                raise InventoryError(f"{path}: [{label}] {key} must be a positive number")
    return models


def _ports_in_use(host: Host) -> list[tuple[str, int]]:
    """(who, port) for everything listening on the host, by its roles (all of them when it has none)."""
    roles = host.roles or KNOWN_ROLES
    ports = []
    if "tracking" in roles:
        ports.append(("the tracking port", host.tracking.port))
        if host.tracking.tls:
            ports.append(("the tracking backend_port", host.tracking.backend_port))
    elif "lb" in roles and host.tracking.database != "local":
        ports.append(("the tracking service's port", host.tracking.port))
    if "models" in roles or "lb" in roles:
        names = sorted(name for name in host.models if name) or [""]
        ports += [(f"model {name or 'model'}", host.model(name).port) for name in names]
    return ports


def _check_distinct_ports(host: Host, path: Path) -> None:
    seen: dict[int, str] = {}
    for who, port in _ports_in_use(host):
        if port in seen:
            raise InventoryError(f"{path}: [hosts.{host.name}] {seen[port]} and {who} both use port {port}: give each its own port")
        seen[port] = who


def _check_monitoring(monitoring: MonitoringSettings, hosts: list[Host], path: Path) -> None:
    """The exporters' ports may not be ones a host already listens on; the model thresholds are positive."""
    for host in hosts:
        for who, port in _ports_in_use(host):
            for key in EXPORTER_PORT_KEYS:
                if port == getattr(monitoring, key):
                    raise InventoryError(f"{path}: [monitoring] {key} {port} is {who} of [hosts.{host.name}]: give it another port")
    for key in ("model_error_ratio", "tracking_error_ratio"):
        if not 0 < getattr(monitoring, key) < 1:
            raise InventoryError(f"{path}: [monitoring] {key} must be between 0 and 1 (0.05 is 5 %), not {getattr(monitoring, key)}")
    if monitoring.model_p99_seconds <= 0:
        raise InventoryError(f"{path}: [monitoring] model_p99_seconds must be a positive number of seconds")


def load_inventory(path: str | Path) -> Inventory:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InventoryError(
            f"{path}: inventory file not found (copy hosts.toml and point FABRIC_INVENTORY at it)"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise InventoryError(f"{path}: not valid TOML: {error}") from None

    sections = ("defaults", "tracking", "models", "lb", "train", "monitoring", "hosts")
    for key, value in data.items():
        if key not in sections:
            raise InventoryError(f"{path}: unknown section [{key}] (known: {', '.join(sections)})")
        if not isinstance(value, dict):
            raise InventoryError(f"{path}: {key} must be a table ([{key}])")
    _check_printable(data, "", path)

    defaults = ConnectionSettings(**_check_table(data.get("defaults", {}), ConnectionSettings, "defaults", path))
    tracking = _tracking_settings(TrackingSettings(), data.get("tracking", {}), "tracking", path)
    models = _model_settings({"": ModelSettings()}, data.get("models", {}), "models", path)
    lb = _with_local_pem_files(LbSettings(**_check_table(data.get("lb", {}), LbSettings, "lb", path)), "lb", path)
    train = TrainSettings(**_check_table(data.get("train", {}), TrainSettings, "train", path))
    monitoring = MonitoringSettings(**_check_table(data.get("monitoring", {}), MonitoringSettings, "monitoring", path))
    if train.env_manager not in ("venv", "conda"):
        raise InventoryError(f'{path}: [train] env_manager must be "venv" or "conda", not {train.env_manager!r}')

    hosts = {}
    for name, table in data.get("hosts", {}).items():
        where = f"hosts.{name}"
        if not isinstance(table, dict):
            raise InventoryError(f"{path}: [{where}] must be a table")
        try:
            check_host_name(name)
        except ValueError as error:
            raise InventoryError(f"{path}: [{where}] the host name {error}") from None
        values = _check_table(table, Host, where, path)
        if "address" not in values:
            raise InventoryError(f"{path}: [{where}] needs an address")
        for role in values.get("roles", ()):
            if role not in KNOWN_ROLES:
                raise InventoryError(f"{path}: [{where}] unknown role {role!r} (known roles: {', '.join(KNOWN_ROLES)})")
        connection = {field.name: values.get(field.name, getattr(defaults, field.name)) for field in dataclasses.fields(ConnectionSettings)}
        host_tracking = values.pop("tracking", {})
        _check_host_tracking_keys(host_tracking, tracking, where, path)
        host_models = values.pop("models", {})
        values["models"] = _model_settings(models, host_models, f"{where}.models", path)
        values.update(connection)
        values["tracking"] = _tracking_settings(tracking, host_tracking, f"{where}.tracking", path)
        hosts[name] = Host(name=name, **values)
        _check_distinct_ports(hosts[name], path)
    _check_tracking_service(tracking, list(hosts.values()), path)
    _check_monitoring(monitoring, list(hosts.values()), path)
    return Inventory(path=path, defaults=defaults, tracking=tracking, hosts=hosts, models=models, lb=lb, train=train, monitoring=monitoring)


def select_hosts(inventory: Inventory, targets: list[str], role: str | None, ssh_aliases=()) -> list[Host]:
    """-H targets if given (inventory names, user@address[:port] or ssh-config aliases), else the role's hosts.

    role None means every inventory host.
    """
    if not targets and role is None:
        if not inventory.hosts:
            raise InventoryError(f"{inventory.path}: no hosts; add a [hosts.NAME] table or pass -H")
        return list(inventory.hosts.values())
    if not targets:
        hosts = inventory.with_role(role)
        if not hosts:
            raise InventoryError(
                f'{inventory.path}: no host has role "{role}"; add roles = ["{role}"] to a [hosts.NAME] table or pass -H'
            )
        return hosts
    selected = []
    for target in targets:
        if target in inventory.hosts:
            selected.append(inventory.hosts[target])
        elif "@" in target or ":" in target or "." in target or target in ssh_aliases:
            selected.append(inventory.ad_hoc_host(target))
        else:
            known = ", ".join(inventory.hosts) or "none"
            raise InventoryError(
                f"{inventory.path}: unknown host {target!r} (hosts: {known}); add [hosts.{target}] or give user@address[:port]"
            )
    return selected
