from pathlib import Path

import pytest

from tasks.inventory import InventoryError, load_inventory, select_hosts

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
[defaults]
user = "deploy"
identity = "~/.ssh/id_ed25519"

[tracking]
port = 5000
workers = 2

[hosts.prod1]
address = "203.0.113.10"
roles = ["tracking"]

[hosts.prod2]
address = "203.0.113.11"
user = "admin"
port = 2222
roles = ["models"]
[hosts.prod2.tracking]
workers = 4
"""


def write(tmp_path, text):
    path = tmp_path / "hosts.toml"
    path.write_text(text)
    return path


def test_defaults_and_overrides(tmp_path):
    inventory = load_inventory(write(tmp_path, GOOD))
    prod1, prod2 = inventory.hosts["prod1"], inventory.hosts["prod2"]
    assert (prod1.user, prod1.port, prod1.identity) == ("deploy", 22, "~/.ssh/id_ed25519")
    assert (prod2.user, prod2.port) == ("admin", 2222)
    assert prod1.tracking.workers == 2 and prod2.tracking.workers == 4
    assert prod2.tracking.port == 5000
    assert prod1.needs_sudo
    assert [h.name for h in inventory.with_role("tracking")] == ["prod1"]


def test_shipped_example_parses():
    inventory = load_inventory(ROOT / "hosts.toml")
    assert inventory.tracking.mlflow_version == "3.17.2"
    assert inventory.defaults.user == "deploy"


# Values of the wrong kind for where they land on a host (a unit file, a script), and ports that clash.
KIND_ERRORS = [
    ('[tracking]\nartifacts = "/srv/a\\nExecStartPre=+/bin/sh -c id"', "[tracking] artifacts must not contain control characters or line breaks"),
    ('[tracking]\nartifacts = "/srv/a\\u202e"', "[tracking] artifacts must not contain control characters"),
    ('[hosts.a]\naddress = "10.0.0.1"\n[hosts.a.tracking]\nartifacts = "/srv/mlflow/"', "[hosts.a.tracking] artifacts must be normalized"),
    ('[tracking]\nartifacts = "/srv/../etc"', "[tracking] artifacts must be normalized"),
    ('[tracking]\nartifacts = "/srv//mlflow"', "[tracking] artifacts must be normalized"),
    ('[tracking]\nartifacts = "srv/mlflow"', "[tracking] artifacts must be an absolute path"),
    ('[tracking]\nartifacts = "/"', "[tracking] artifacts must be an absolute path below /"),
    ('[tracking]\nartifacts = "/srv/my artifacts"', "[tracking] artifacts may only use letters, digits"),
    ('[tracking]\nartifacts = "/srv/%h"', "[tracking] artifacts may only use letters, digits"),
    ('[hosts.a]\naddress = "10.0.0.1 -oProxyCommand=id"', "[hosts.a] address must be a host name"),
    ('[hosts.a]\naddress = "host..example"', "[hosts.a] address must be a host name"),
    ('[hosts.a]\naddress = "fe80::1%eth0"', "[hosts.a] address must be a host name"),
    ('[hosts."a;b"]\naddress = "10.0.0.1"', "[hosts.a;b] the host name must be"),
    ('[hosts."a\\nb"]\naddress = "10.0.0.1"', "[hosts] name 'a\\nb' must not contain control characters"),
    ('[defaults]\nuser = "deploy -oProxyCommand=id"', "[defaults] user must be a user name"),
    ('[hosts.a]\naddress = "10.0.0.1"\nuser = "-root"', "[hosts.a] user must be a user name"),
    ("[defaults]\nport = 0", "[defaults] port must be a positive number up to 65535 (got 0)"),
    ("[tracking]\nport = 65536", "[tracking] port must be a positive number up to 65535"),
    ("[tracking]\nbackend_port = 70000", "[tracking] backend_port must be a positive number up to 65535"),
    ("[models.wine]\nport = 65536", "[models.wine] port must be a positive number up to 65535"),
    ('[tracking]\nallowed_hosts = ["ok.example.com:443", "evil.example.com,other"]', "[tracking] allowed_hosts must be HOST or HOST:PORT"),
    ('[tracking]\nallowed_hosts = ["ok.example.com:99999"]', "[tracking] allowed_hosts must end in a port"),
    ('[tracking]\nallowed_hosts = ["$(id)"]', "[tracking] allowed_hosts must be HOST or HOST:PORT"),
    ('[tracking]\nmlflow_version = "3.17.2; rm -rf /"', '[tracking] mlflow_version must be a version'),
    ('[tracking]\nmlflow_version = "3.10.1"', '[tracking] mlflow_version must be 3.16.1 or newer: older MLflow reads the admin password only'),
    ('[hosts.a]\naddress = "10.0.0.1"\n[hosts.a.tracking]\nmlflow_version = "3.16.0"', '[hosts.a.tracking] mlflow_version must be 3.16.1 or newer'),
    ('[tracking]\npsycopg2_version = " 2.9.13"', "[tracking] psycopg2_version must be a version without spaces"),
    ('[tracking]\nbackup_schedule = "daily\\nExecStartPre=+/bin/sh"', "[tracking] backup_schedule must not contain control characters"),
    ('[tracking]\nbackup_schedule = "*-*-* 25:00"', "[tracking] backup_schedule must be an OnCalendar expression systemd accepts"),
    ('[tracking]\nbackup_schedule = "nightly"', "[tracking] backup_schedule must be an OnCalendar expression systemd accepts"),
    ('[models."wine\\n"]\nport = 5002', "[models] name 'wine\\n' must not contain control characters"),
    ('[models."wine.v2"]\nport = 5002', "[models.wine.v2] the model name must be 1 to 64 letters"),
    ('[hosts.a]\naddress = "10.0.0.1"\n[hosts.a.models."-wine"]\nport = 5002', "[hosts.a.models.-wine] the model name must be"),
    ('[hosts.a]\naddress = "10.0.0.1"\n[hosts.a.models.wine]\nprot = 5002', "unknown key 'prot' in [hosts.a.models.wine]"),
    ('[models.wine]\n[models.iris]\n[hosts.a]\naddress = "10.0.0.1"\nroles = ["models"]', "[hosts.a] model iris and model wine both use port 5001"),
    ('[hosts.a]\naddress = "10.0.0.1"\nroles = ["models"]\n[hosts.a.models.wine]\nport = 5002\n[hosts.a.models.iris]\nport = 5002',
     "[hosts.a] model iris and model wine both use port 5002"),
    ('[models.wine]\nport = 5000\n[hosts.a]\naddress = "10.0.0.1"\nroles = ["tracking", "models"]', "[hosts.a] the tracking port and model wine both use port 5000"),
    ('[models]\nport = 5050\n[hosts.a]\naddress = "10.0.0.1"', "[hosts.a] the tracking backend_port and model model both use port 5050"),
]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[defaults\nuser = 1", "not valid TOML"),
        ("[defaults]\nusr = 'x'", "unknown key 'usr' in [defaults]"),
        ("[tracking]\nworkers = 'two'", "[tracking] workers = 'two' should be of type int"),
        ("[tracking]\nworkers = true", "[tracking] workers = True should be of type int"),
        ("[tracking]\nenv_manager = 'pip'", 'env_manager must be "venv" or "conda"'),
        ("[hosts.a]\naddress = '10.0.0.1'\nroles = ['database']", "[hosts.a] unknown role 'database'"),
        ("[hosts.a]\nroles = ['tracking']", "[hosts.a] needs an address"),
        ("[hosts.a]\naddress = '10.0.0.1'\nadress = 'x'", "unknown key 'adress' in [hosts.a]"),
        ("[hosts.a]\naddress = '10.0.0.1'\n[hosts.a.tracking]\nport = '5000'", "[hosts.a.tracking] port = '5000'"),
        ("[servers.a]\naddress = 'x'", "unknown section [servers]"),
        ("[hosts.a]\naddress = 10", "[hosts.a] address = 10 should be of type str"),
        ("[tracking]\ntls_certificate = 'cert.pem'", "tls_certificate and tls_key go together"),
        ("[tracking]\ntls_certificate = 'no.pem'\ntls_key = 'no.key'", "tls_certificate = 'no.pem': no such file on this machine"),
        ("[tracking]\nport = 5050", "port and backend_port must differ"),
        ("[tracking]\ntls = 'yes'", "[tracking] tls = 'yes' should be of type bool"),
        ("[tracking]\nauth_cache_seconds = -1", "[tracking] auth_cache_seconds must be 0 (no cache) or more"),
        ("[tracking]\ndatabase = 'remote'", "[tracking] database must be one of 'local', 'host', 'external', not 'remote'"),
        ("[tracking]\ndatabase = 'host'", 'database = "host" needs exactly one host with roles = ["db"] (none has it)'),
        ("[tracking]\ndatabase = 'host'\n[hosts.a]\naddress = '10.0.0.1'\nroles = ['db']\n[hosts.b]\naddress = '10.0.0.2'\nroles = ['db']",
         'needs exactly one host with roles = ["db"] (found a, b)'),
        ("[hosts.a]\naddress = '10.0.0.1'\nroles = ['db']", 'hosts a have role "db" but [tracking] database = \'local\''),
        ("[tracking]\ndatabase = 'external'", "database_url_file goes with database = \"external\""),
        ("[tracking]\ndatabase = 'external'\ndatabase_url_file = 'no.url'", "database_url_file = 'no.url': no such file on this machine"),
        ("[tracking]\nartifacts = 's3://bucket/prefix'", "s3_credentials_file goes with artifacts = \"s3://...\""),
        ("[tracking]\nartifacts = 's3://Bucket'", "artifacts must be s3://BUCKET[/PREFIX]"),
        ("[tracking]\nartifacts = 's3://bucket/a/../b'", "artifacts must be s3://BUCKET[/PREFIX] without '.' or '..'"),
        ("[tracking]\ns3_endpoint_url = 'ftp://x'", "s3_endpoint_url must be http(s)://HOST[:PORT]"),
        ("[tracking]\ns3_endpoint_url = 'https://u:p@x'", "s3_endpoint_url must be http(s)://HOST[:PORT]: no user"),
        ("[tracking]\ns3_endpoint_url = 'https://s3.example.com'", "s3_endpoint_url is set but artifacts"),
        ("[hosts.a]\naddress = '10.0.0.1'\n[hosts.a.tracking]\ndatabase = 'host'", "[hosts.a.tracking] database is a setting of the whole"),
        ("[tracking]\ndatabase = 'host'\n[hosts.d]\naddress = '10.0.0.9'\nroles = ['db']\n[hosts.a]\naddress = '10.0.0.1'\n"
         "[hosts.a.tracking]\nworkers = 1\nmlflow_version = '3.16.1'", "[hosts.a.tracking] mlflow_version is a setting of the whole tracking "
         "service (its replicas share it)"),
        ("[tracking]\ndatabase = 'host'\n[hosts.d]\naddress = '10.0.0.9'\nroles = ['db']\n[hosts.a]\naddress = '10.0.0.1'\n"
         "roles = ['tracking']\n[hosts.b]\naddress = '10.0.0.2'\nroles = ['tracking']", "they need one artifact store"),
        ("[tracking]\ndatabase = 'host'\n[hosts.d]\naddress = '10.0.0.9'\nroles = ['db']\n[hosts.l]\naddress = '10.0.0.3'\nroles = ['lb']\n"
         "[models]\nport = 5000", "[hosts.l] the tracking service's port and model model both use port 5000"),
    ]
    + KIND_ERRORS,
)
def test_errors_name_the_file_and_the_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(InventoryError) as error:
        load_inventory(path)
    assert str(path) in str(error.value)
    assert expected in str(error.value)


def test_missing_file_says_how_to_point_at_one(tmp_path):
    with pytest.raises(InventoryError, match="FABRIC_INVENTORY"):
        load_inventory(tmp_path / "nope.toml")


def test_select_by_role_or_targets(tmp_path):
    inventory = load_inventory(write(tmp_path, GOOD))
    assert [h.name for h in select_hosts(inventory, [], "tracking")] == ["prod1"]
    assert [h.name for h in select_hosts(inventory, [], None)] == ["prod1", "prod2"]
    assert [h.name for h in select_hosts(inventory, ["prod2"], "tracking")] == ["prod2"]
    with pytest.raises(InventoryError, match="no host has role \"lb\""):
        select_hosts(inventory, [], "lb")
    with pytest.raises(InventoryError, match="unknown host 'prod9'.*prod1, prod2"):
        select_hosts(inventory, ["prod9"], "tracking")
    assert select_hosts(inventory, ["alias"], "tracking", ssh_aliases=["alias"])[0].ad_hoc


def test_ad_hoc_user_address_port(tmp_path):
    inventory = load_inventory(write(tmp_path, GOOD))
    (host,) = select_hosts(inventory, ["root@10.0.0.5:2200"], "tracking")
    assert (host.user, host.address, host.port, host.ad_hoc) == ("root", "10.0.0.5", 2200, True)
    assert not host.needs_sudo
    (host,) = select_hosts(inventory, ["10.0.0.6"], "tracking")
    assert (host.user, host.address, host.port) == ("deploy", "10.0.0.6", 22)
    with pytest.raises(InventoryError, match="port 'x' is not a number"):
        select_hosts(inventory, ["root@10.0.0.5:x"], "tracking")


def test_model_settings_defaults_per_name_and_per_host(tmp_path):
    text = GOOD + """
[models]
workers = 2
[models.wine]
port = 5002
[hosts.prod3]
address = "203.0.113.12"
roles = ["models"]
[hosts.prod3.models.wine]
keep_releases = 2
"""
    inventory = load_inventory(write(tmp_path, text))
    prod1, prod3 = inventory.hosts["prod1"], inventory.hosts["prod3"]
    assert prod1.model("wine").port == 5002 and prod1.model("wine").workers == 2
    assert prod1.model("other").port == 5001 and prod1.model("other").workers == 2
    assert (prod3.model("wine").port, prod3.model("wine").keep_releases) == (5002, 2)
    with pytest.raises(InventoryError, match=r"\[models.wine\] keep_releases = 'x'"):
        load_inventory(write(tmp_path, "[models.wine]\nkeep_releases = 'x'"))
    with pytest.raises(InventoryError, match=r"\[models.wine\] port must be a positive number"):
        load_inventory(write(tmp_path, "[models.wine]\nport = 0"))


def test_secure_by_default_and_certificate_paths_relative_to_the_inventory(tmp_path):
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "t.pem").write_text("cert")
    (tmp_path / "certs" / "t.key").write_text("key")
    inventory = load_inventory(write(tmp_path, "[tracking]\ntls_certificate = 'certs/t.pem'\ntls_key = 'certs/t.key'"))
    assert inventory.tracking.tls and inventory.tracking.auth
    assert inventory.tracking.tls_certificate == str(tmp_path / "certs" / "t.pem")
    plain = load_inventory(write(tmp_path, "[tracking]\ntls = false\nauth = false\nport = 5050"))
    assert not plain.tracking.tls and not plain.tracking.auth


# The most unusual values each kind accepts (tests/unit/test_hostile_values.py renders files from them too).
WIDEST_GOOD_VALUES = """
[defaults]
user = "deploy_1.x"
[tracking]
artifacts = "/srv/ml_flow/a.b@c+d-e"
allowed_hosts = ["mlflow.example.com", "*.example.com:443", "10.0.0.7:*", "[::1]:5000"]
mlflow_version = "3.17.2"
psycopg2_version = "2.9.13.post1"
backup_schedule = "Mon..Fri *-*-* 03:00:00 Europe/Berlin"
[models.wine-v2]
port = 5002
[models.iris_1]
port = 5003
[hosts."prod-1_a.example"]
address = "prod1.example.com"
roles = ["tracking", "models"]
[hosts.v6]
address = "2001:db8::10"
port = 2222
roles = ["models"]
"""


def test_good_values_of_every_kind_are_accepted(tmp_path):
    inventory = load_inventory(write(tmp_path, WIDEST_GOOD_VALUES))
    assert inventory.tracking.backup_schedule == "Mon..Fri *-*-* 03:00:00 Europe/Berlin"
    assert inventory.hosts["prod-1_a.example"].model("wine-v2").port == 5002
    assert load_inventory(write(tmp_path, '[tracking]\nbackup_schedule = "daily"')).tracking.backup_schedule == "daily"
    assert load_inventory(write(tmp_path, '[tracking]\nmlflow_version = "3.16.1"')).tracking.mlflow_version == "3.16.1"


def test_ports_only_clash_between_what_runs_on_the_same_host(tmp_path):
    tracker = '[hosts.tracker]\naddress = "10.0.0.1"\nroles = ["tracking"]\n'
    server = '[hosts.server]\naddress = "10.0.0.2"\nroles = ["models"]\n'
    inventory = load_inventory(write(tmp_path, "[models.wine]\nport = 5000\n" + tracker + server))
    assert inventory.hosts["server"].model("wine").port == 5000
    # without tls MLflow itself listens on port: backend_port is not used
    plain = load_inventory(write(tmp_path, tracker + "[hosts.tracker.tracking]\ntls = false\nport = 5001\nbackend_port = 5001"))
    assert plain.hosts["tracker"].tracking.port == 5001


def test_ad_hoc_hosts_are_checked_like_inventory_ones(tmp_path):
    inventory = load_inventory(write(tmp_path, GOOD))
    for target, expected in [("root@10.0.0.5;id", "the address must be"), ("ro ot@10.0.0.5", "the user must be"), ("root@10.0.0.5:0", "the port must be")]:
        with pytest.raises(InventoryError, match=expected):
            select_hosts(inventory, [target], "tracking")
    assert select_hosts(inventory, ["my_alias"], "tracking", ssh_aliases=["my_alias"])[0].address == "my_alias"
