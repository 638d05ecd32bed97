"""Replicas of one tracking service, decided from facts: the db host's plan, a replica's plan, the shared secrets and the
secrets files on the laptop."""

import base64
import hashlib
import hmac
import os

import pytest

from tasks.inventory import Host, TrackingSettings
from tasks.ops import facts as f
from tasks.ops import firewall
from tasks.ops.facts import Facts
from tasks.ops.steps import Step, apply, apply_script
from tasks.secret_files import DatabaseUrl, SecretFileError, read_database_url, read_s3_credentials
from tasks.tracking import certificates, database, frontdoor
from tasks.tracking import server as tracking
from tasks.tracking.server import ENV_FILE, TrackingTarget
from tasks.tracking.service import SharedSecrets, SharedStores
from tests.unit.fake_remote import FakeFleet
from tests.unit.test_tracking_plan import DEBIAN, changed, converged_facts, file_fact

S3 = {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s3cr3t/key+x"}
SECRETS = SharedSecrets({"MLFLOW_DB_PASSWORD": "p" * 32, "MLFLOW_AUTH_ADMIN_PASSWORD": "a" * 32, "MLFLOW_FLASK_SERVER_SECRET_KEY": "f" * 64})


def stores(**changes) -> SharedStores:
    values = dict(database=DatabaseUrl("mlflow", "10.0.0.9", 5432, "mlflow", "verify-full", "p" * 32), secrets=SECRETS,
                  database_ca="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", s3_credentials=S3,
                  s3_endpoint_url="http://10.0.0.8:9000")
    return SharedStores(**{**values, **changes})


def replica(**settings) -> TrackingTarget:
    tracking_settings = TrackingSettings(**{"database": "host", "artifacts": "s3://bucket/team", "s3_credentials_file": "/x", **settings})
    host = Host(name="t1", address="10.0.0.5", roles=("tracking",), tracking=tracking_settings)
    return TrackingTarget(host, "10.0.0.5", stores=stores())


def replica_facts(t: TrackingTarget) -> dict:
    facts = converged_facts(t)
    facts[tracking.ENV_DIGEST] = hashlib.sha256(t.stores.env_file().encode()).hexdigest()
    facts[tracking.DATABASE_CA_FILE] = file_fact(t.stores.database_ca)
    facts[frontdoor.AUTH_CONFIG_FILE] = file_fact(frontdoor.FrontDoor(t.host, t.address).auth_config(t.auth_database_uri), group="mlflow", mode="640")
    return facts


def test_a_converged_replica_is_a_no_op():
    t = replica()
    assert changed(tracking.plan(t, Facts(replica_facts(t)))) == []


def test_new_shared_secrets_are_checked_against_the_stores_before_they_are_installed_and_the_server_restarts():
    t = replica()
    facts = replica_facts(t)
    facts[tracking.ENV_DIGEST] = "0" * 64
    steps = tracking.plan(t, Facts(facts))
    names = changed(steps)
    assert names[:2] == [f"secrets {ENV_FILE}", "auth admin password"] and "restart mlflow-tracking" in names
    secrets = next(step for step in steps if step.name == f"secrets {ENV_FILE}")
    assert secrets.stdin == t.stores.env_file() and "tracking_preflight" not in secrets.summary
    assert names.index(f"secrets {ENV_FILE}") < names.index("restart mlflow-tracking")
    script = apply_script(steps)
    assert "s3cr3t" not in script and "p" * 32 not in script, "a secret reached a command line"
    assert script.count("</dev/null") == len(names) - 1, "only the secrets step reads standard input"


def test_a_restart_for_another_reason_checks_the_stores_first():
    t = replica()
    facts = replica_facts(t)
    facts[tracking.UNIT_FILE] = file_fact("old unit")
    steps = tracking.plan(t, Facts(facts))
    names = changed(steps)
    assert names.index(f"secrets {ENV_FILE}") < names.index("restart mlflow-tracking")
    assert "artifact round trip" in names and names.index("health gate") < names.index("artifact round trip")


def test_a_replica_has_no_local_database_and_builds_boto3_into_its_env():
    t = replica()
    assert "postgresql" not in t.packages and "postgresql-client" in t.packages
    assert any(package.startswith("boto3==") for package in t.env_spec.packages)
    assert tracking.POSTGRESQL_STATE not in t.facts() and frontdoor.AUTH_SCHEMA_PRESENT not in t.facts()
    assert "--artifacts-destination s3://bucket/team" in t.unit("t1") and "postgresql.service" not in t.unit("t1")
    assert all("s3://" not in path for path, *_ in t.directories())


def test_the_shared_env_file_carries_no_password_in_its_urls():
    content = stores().env_file()
    values = dict(line.split("=", 1) for line in content.splitlines())
    uri = values["MLFLOW_BACKEND_STORE_URI"]
    assert "p" * 32 not in uri and uri.endswith("sslmode=verify-full&sslrootcert=/etc/mlflow/database-ca.pem")
    assert values["PGPASSWORD"] == "p" * 32 and values["MLFLOW_S3_ENDPOINT_URL"] == "http://10.0.0.8:9000"
    assert values["AWS_DEFAULT_REGION"] == "us-east-1" and values["AWS_SECRET_ACCESS_KEY"] == "s3cr3t/key+x"
    assert "p" * 32 not in repr(stores()) and "s3cr3t" not in repr(stores())


def test_secrets_come_from_the_first_host_that_has_them_and_missing_ones_are_generated():
    assert SharedSecrets.first_of([{}, {"MLFLOW_DB_PASSWORD": "x" * 30}, {"MLFLOW_DB_PASSWORD": "y" * 30}]).db_password == "x" * 30
    taken = SharedSecrets.first_of([{"MLFLOW_DB_PASSWORD": "x" * 30}])
    assert len(taken.values["MLFLOW_AUTH_ADMIN_PASSWORD"]) >= 32
    fresh = SharedSecrets.first_of([{}, {}])
    assert fresh.db_password != SharedSecrets.first_of([{}]).db_password


def scram(password: str, salt: bytes = b"0123456789abcdef", iterations: int = 4096) -> str:
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(hashlib.sha256(client).digest())}:{b64(server)}"


def test_the_role_password_is_checked_against_postgresqls_verifier_without_sending_it():
    assert database.scram_matches(scram("right-password"), "right-password")
    assert not database.scram_matches(scram("right-password"), "wrong-password")
    assert not database.scram_matches("md5abc", "right-password") and not database.scram_matches("", "x")


def db_target() -> database.DatabaseTarget:
    return database.DatabaseTarget(Host(name="db1", address="10.0.0.9", roles=("db",)), ("10.0.0.5", "10.0.0.6"), "p" * 32)


def db_facts(t: database.DatabaseTarget) -> dict:
    return {
        f.os_release(): DEBIAN, f.node_name(): "db1",
        database.INSTALLED: "\n".join(f"{name} ii " for name in database.DATABASE_PACKAGES),
        database.POSTGRESQL: "ActiveState=active\nUnitFileState=enabled",
        database.SETTINGS: t.settings_file(),
        database.HBA_FILE: file_fact(t.hba_file(), group="postgres", mode="640"),
        database.KEY_STAT: "postgres postgres 600",
        database.TLS: f"abc {database.CERTIFICATE}\ndef {database.KEY}\nsha256 Fingerprint=AB\nnotAfter=Mar  4 10:00:00 2029 GMT\n"
                      f"{certificates.NOT_DUE}",
        database.OBJECTS: "role\ndatabase",
        database.VERIFIER: scram("p" * 32),
        database.RUNNING: f"localhost,10.0.0.9\n{database.HBA}\non",
        frontdoor.AUTH_SCHEMA_PRESENT: "auth",
    }


def test_a_converged_db_host_is_a_no_op_and_admits_only_the_tracking_hosts_over_tls():
    t = db_target()
    assert changed(database.plan(t, Facts(db_facts(t)))) == []
    assert "hostssl  mlflow  mlflow  10.0.0.5/32  scram-sha-256" in t.hba_file()
    assert "\nhost " not in t.hba_file().replace("127.0.0.1/32", "").replace("::1/128", "") or "10.0.0" not in t.hba_file().split("hostssl")[0]
    assert "listen_addresses = 'localhost,10.0.0.9'" in t.settings_file() and "ssl = on" in t.settings_file()


def test_a_new_replica_reloads_postgresql_and_a_new_address_restarts_it():
    t = db_target()
    facts = db_facts(t)
    grown = database.DatabaseTarget(t.host, t.clients + ("10.0.0.7",), t.password)
    steps = database.plan(grown, Facts(facts))
    assert changed(steps) == [f"file {database.HBA}", "postgresql"]
    assert next(step for step in steps if step.name == "postgresql").script == "systemctl reload postgresql"
    facts[database.RUNNING] = f"localhost\n{database.HBA}\non"
    assert "systemctl restart postgresql" in next(step for step in database.plan(t, Facts(facts)) if step.name == "postgresql").script


def test_a_role_whose_password_differs_gets_it_through_stdin():
    t = db_target()
    facts = db_facts(t)
    facts[database.VERIFIER] = scram("another password")
    (step,) = [step for step in database.plan(t, Facts(facts)) if step.changed]
    assert step.name == "database role mlflow" and step.stdin == "p" * 32 and "p" * 32 not in step.script


def test_only_one_step_of_a_plan_may_read_stdin():
    remote = FakeFleet({})(Host(name="h", address="10.0.0.1"))
    with pytest.raises(ValueError, match="one step per plan"):
        apply(remote, [Step.secret("a", "", "cat", "1"), Step.secret("b", "", "cat", "2")], lambda step: None)


def private(tmp_path, name, text, mode=0o600):
    path = tmp_path / name
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_the_external_database_url_is_parsed_and_checked(tmp_path):
    url = read_database_url(private(tmp_path, "db.url", "# ours\npostgresql://team:s%40cret@db.example.com:6432/mlflow?sslmode=verify-full\n"))
    assert (url.user, url.host, url.port, url.database, url.sslmode, url.password) == ("team", "db.example.com", 6432, "mlflow", "verify-full", "s@cret")
    assert url.url() == "postgresql+psycopg2://team@db.example.com:6432/mlflow?sslmode=verify-full" and "s@cret" not in repr(url)


@pytest.mark.parametrize("text, expected", [
    ("mysql://u:p@h/db", "it must hold one line postgresql://"),
    ("postgresql://u@h/db", "it must hold one line postgresql://"),
    ("postgresql://u:p@h/db?sslmode=disable", "the only option taken is sslmode"),
    ("postgresql://u:p@h/db?host=/tmp", "the only option taken is sslmode"),
    ("postgresql://u;x:p@h/db", "the user must be letters"),
    ("postgresql://u:p@h/db;drop", "the database must be letters"),
    ("postgresql://u:p@h:99999/db", "the port is not a number"),
    ("postgresql://u:p@h/db\npostgresql://u:p@h/db", "it must hold one line"),
])
def test_a_bad_database_url_file_is_refused_without_showing_it(tmp_path, text, expected):
    with pytest.raises(SecretFileError) as error:
        read_database_url(private(tmp_path, "db.url", text))
    assert expected in str(error.value) and ":p@" not in str(error.value)


def test_s3_credentials_are_read_and_a_readable_file_is_refused(tmp_path):
    assert read_s3_credentials(private(tmp_path, "s3.env", "AWS_ACCESS_KEY_ID=AKID\nAWS_SECRET_ACCESS_KEY=s3cr3t/key+x\n")) == S3
    with pytest.raises(SecretFileError, match="other users of this machine may read it: chmod 600"):
        read_s3_credentials(private(tmp_path, "open.env", "AWS_ACCESS_KEY_ID=A\nAWS_SECRET_ACCESS_KEY=B\n", mode=0o644))
    with pytest.raises(SecretFileError, match="AWS_SECRET_ACCESS_KEY missing"):
        read_s3_credentials(private(tmp_path, "half.env", "AWS_ACCESS_KEY_ID=A\n"))
    with pytest.raises(SecretFileError, match="no quotes or spaces") as error:
        read_s3_credentials(private(tmp_path, "quoted.env", "AWS_ACCESS_KEY_ID=A\nAWS_SECRET_ACCESS_KEY='$(id)'\n"))
    assert "$(id)" not in str(error.value)


def test_a_replicas_auth_config_names_the_database_and_is_installed_only_with_the_checked_secrets():
    t = replica(auth=True)
    facts = replica_facts(t)
    facts[frontdoor.AUTH_CONFIG_FILE] = file_fact("[mlflow]\ndatabase_uri = postgresql+psycopg2://mlflow@old-db:5432/mlflow\n",
                                                  group="mlflow", mode="640")
    steps = tracking.plan(t, Facts(facts))
    assert f"file {frontdoor.AUTH_CONFIG}" not in changed(steps), "written before the stores were checked"
    secrets = next(step for step in steps if step.name == f"secrets {ENV_FILE}")
    assert secrets.changed and "then install them" in secrets.summary
    assert "database_uri = postgresql+psycopg2://mlflow@10.0.0.9:5432/mlflow?sslmode=verify-full" in secrets.script
    assert secrets.script.index("MLFLOW_AUTH_CONFIG_PATH=/etc/mlflow/basic_auth.ini.next") < secrets.script.index(f"mv {frontdoor.AUTH_CONFIG}.next {frontdoor.AUTH_CONFIG}")


def test_tasks_reach_a_fronted_service_through_its_first_balancer(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from tasks.cli.arguments import tracking_uri

    private(tmp_path, "s3.env", "AWS_ACCESS_KEY_ID=A\nAWS_SECRET_ACCESS_KEY=B\n")
    hosts = tmp_path / "hosts.toml"
    hosts.write_text("[tracking]\ndatabase = 'host'\nartifacts = 's3://bucket/team'\ns3_credentials_file = 's3.env'\nport = 443\n"
                     "[hosts.db1]\naddress = '10.0.0.9'\nroles = ['db']\n[hosts.t1]\naddress = '10.0.0.5'\nroles = ['tracking']\n"
                     "[hosts.t2]\naddress = '10.0.0.6'\nroles = ['tracking']\n[hosts.lb1]\naddress = '10.0.0.20'\nroles = ['lb']\n")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(SimpleNamespace(config=SimpleNamespace(inventory=str(hosts)))) == "https://10.0.0.20:443"
    hosts.write_text(hosts.read_text().replace("roles = ['lb']", "roles = ['models']"))
    assert tracking_uri(SimpleNamespace(config=SimpleNamespace(inventory=str(hosts)))) == "https://10.0.0.5:443"


def test_a_drain_that_fails_on_one_balancer_puts_the_others_back_and_nothing_restarts():
    from types import SimpleNamespace

    from tasks.ops.nginx import install_config_script
    from tasks.report import HostReport
    from tasks.tracking import balancer
    from tasks.tracking.replicas import Turns
    from tasks.tracking.service import TrackingService
    from tests.unit.fake_remote import FakeHost

    settings = TrackingSettings(database="host", artifacts="s3://bucket/team", s3_credentials_file="/x")
    replicas = tuple(Host(name=name, address=address, roles=("tracking",), tracking=settings) for name, address in (("t1", "10.0.0.5"), ("t2", "10.0.0.6")))
    balancers = tuple(Host(name=name, address=address, roles=("lb",)) for name, address in (("lb1", "10.0.0.20"), ("lb2", "10.0.0.21")))
    fleet = FakeFleet({"lb2": FakeHost(fail="nginx")})
    restarted = []
    turns = Turns(SimpleNamespace(clone=lambda: None), TrackingService(settings, replicas, None, balancers), connect=lambda host, config: fleet(host))
    assert not turns(replicas[0], HostReport("t1"), lambda: restarted.append("t1") or True)
    assert restarted == []
    service = turns.service
    drained, back = (install_config_script(frontdoor.NGINX_CONFIG, balancer.config(balancers[0], service, names))
                     for names in (frozenset({"t1"}), frozenset()))
    lb1_scripts = [sent.script for sent in fleet.sent("lb1")]
    assert len(lb1_scripts) == 2 and drained in lb1_scripts[0]
    assert back in lb1_scripts[1], "lb1 was left with t1 drained"


def test_a_shared_secret_in_a_form_we_never_write_is_not_carried_to_other_hosts():
    from types import SimpleNamespace

    from tasks.report import HostReport
    from tasks.tracking.service import read_secrets

    class Answers:
        def __init__(self, text):
            self.text = text

        def run_script(self, script, step):
            return SimpleNamespace(exited=0, stdout=self.text)

    good = "MLFLOW_DB_PASSWORD=" + "p" * 32 + "\nMLFLOW_AUTH_ADMIN_PASSWORD=" + "a" * 32 + "\n"
    assert read_secrets(Answers(good), HostReport("t1")) == {"MLFLOW_DB_PASSWORD": "p" * 32, "MLFLOW_AUTH_ADMIN_PASSWORD": "a" * 32}
    report = HostReport("t2")
    assert read_secrets(Answers(good.replace("a" * 32, 'x"\\nurl = file:///etc/shadow"' + "a" * 20)), report) == {}
    assert "MLFLOW_AUTH_ADMIN_PASSWORD in a form setup-tracking never writes" in report.error and "shadow" not in report.error


def test_an_external_database_password_that_systemd_would_change_is_refused(tmp_path):
    with pytest.raises(SecretFileError, match="without spaces, quotes or backslashes") as error:
        read_database_url(private(tmp_path, "db.url", 'postgresql://u:a%22b@h/db'))
    assert 'a"b' not in str(error.value)


def test_a_fronted_replica_answers_its_port_only_to_the_balancers():
    from tasks.tracking import balancer
    from tasks.tracking.service import TrackingService

    settings = TrackingSettings(database="host", artifacts="s3://bucket/team", s3_credentials_file="/x")
    replicas = (Host(name="t1", address="10.0.0.5", roles=("tracking",), tracking=settings),)
    balancers = tuple(Host(name=name, address=address, roles=("lb",)) for name, address in (("lb1", "10.0.0.20"), ("lb2", "10.0.0.21")))
    wall = balancer.replica_firewall(TrackingService(settings, replicas, None, balancers))
    t = TrackingTarget(replica().host, "10.0.0.5", stores=stores(), wall=wall)
    assert "nftables" in t.packages and set(firewall.facts(wall)) <= set(t.facts())
    steps = tracking.plan(t, Facts(replica_facts(t)))
    rules = next(step for step in steps if step.name == f"file {balancer.REPLICA_WALL.rules}")
    assert "tcp dport { 5000 } ip saddr { 10.0.0.20, 10.0.0.21 } accept" in rules.diff
    assert "table inet mlflow_fab_tracking" in rules.diff and "inet mlflow_fab\n" not in rules.diff, "the model hosts' table is another"
    assert "firewall" in changed(steps) and "restart mlflow-tracking" not in changed(steps), "a new wall needs no restart"
    off = balancer.replica_firewall(TrackingService(settings, replicas, None, balancers, firewall=False))
    assert not off.enabled and "[lb] firewall = false" in firewall.steps(off, [5000], Facts({}))[0].summary
    assert not balancer.replica_firewall(TrackingService(settings, replicas, None, ())).enabled


def restore_on_fake_replicas(**hosts):
    from types import SimpleNamespace

    from tasks.tracking.restore_replicas import restore_service
    from tasks.tracking.service import TrackingService
    from tests.unit.fake_remote import FakeHost

    settings = TrackingSettings(database="host", artifacts="s3://bucket/team", s3_credentials_file="/x")
    replicas = tuple(Host(name=name, address=address, roles=("tracking",), tracking=settings) for name, address in (("t1", "10.0.0.5"), ("t2", "10.0.0.6")))
    fleet = FakeFleet({name: FakeHost(**values) for name, values in hosts.items()})
    service = TrackingService(settings, replicas, None, (Host(name="lb1", address="10.0.0.20", roles=("lb",)),))
    reports = restore_service(SimpleNamespace(clone=lambda: None), service, "/var/backups/mlflow/old.tar", False, connect=lambda host, config: fleet(host))
    return fleet, {report.host: report for report in reports}


SAFETY = {"safety backup of the current state": "safety backup of the current state: /var/backups/mlflow/mlflow-backup-safety.tar"}


def test_a_restore_of_replicas_that_fails_its_check_stops_nothing():
    fleet, reports = restore_on_fake_replicas(t1={"fail": "sha256sum --quiet -c SHA256SUMS"})
    assert fleet.steps("t1") == ["check backup", "staged backup"] and fleet.steps("t2") == []
    assert reports["t1"].failed


def test_a_restore_of_replicas_stops_all_restores_once_and_starts_all():
    fleet, reports = restore_on_fake_replicas(t1={"prints": SAFETY})
    assert fleet.steps("t1") == ["check backup", "stop mlflow-tracking", "restore", "start mlflow-tracking", "staged backup"]
    assert fleet.steps("t2") == ["stop mlflow-tracking", "start mlflow-tracking"]
    assert fleet.first("t2", "stop mlflow-tracking") < fleet.first("t1", "restore") < fleet.first("t2", "start mlflow-tracking")
    assert not any(report.failed for report in reports.values())


def test_a_replica_failing_its_gate_after_the_restore_brings_the_state_from_before_back():
    fleet, reports = restore_on_fake_replicas(t1={"prints": SAFETY}, t2={"fail": "systemctl start"})
    assert fleet.steps("t1") == ["check backup", "stop mlflow-tracking", "restore", "start mlflow-tracking", "stop mlflow-tracking",
                                 "put back", "start mlflow-tracking", "staged backup"]
    put_back = next(sent.script for sent in fleet.sent("t1") if sent.step == "put back")
    assert "safety=/var/backups/mlflow/mlflow-backup-safety.tar" in put_back and "mlflow-backup 1000" not in put_back
    assert reports["t2"].failed


def test_a_restore_that_fails_on_the_database_starts_the_replicas_on_what_they_served():
    fleet, reports = restore_on_fake_replicas(t1={"fail": "DROP TABLE IF EXISTS"})
    assert fleet.steps("t1") == ["check backup", "stop mlflow-tracking", "restore", "start mlflow-tracking", "staged backup"]
    assert fleet.steps("t2") == ["stop mlflow-tracking", "start mlflow-tracking"] and reports["t1"].failed


def test_a_replica_removed_from_hosts_toml_leaves_the_balancers_before_the_database_stops_admitting_it():
    from tasks.ops.nginx import install_config_script
    from tasks.report import HostReport
    from tasks.tracking import balancer
    from tasks.tracking.service import TrackingService
    from tests.unit.fake_remote import FakeHost

    settings = TrackingSettings(database="host", artifacts="s3://bucket/team", s3_credentials_file="/x")
    t1, t2, gone = (Host(name=name, address=address, roles=("tracking",), tracking=settings)
                    for name, address in (("t1", "10.0.0.5"), ("t2", "10.0.0.6"), ("t3", "10.0.0.7")))
    lb = Host(name="lb1", address="10.0.0.20", roles=("lb",))
    before = TrackingService(settings, (t1, gone), None, (lb,))
    after = TrackingService(settings, (t1, t2), None, (lb,))
    routed = base64.b64encode(balancer.config(lb, before).encode()).decode()
    fleet = FakeFleet({"lb1": FakeHost(facts={frontdoor.NGINX_FILE: f"root root 644\n{routed}"})})
    balancer.stop_routing_to_removed(fleet(lb), HostReport("lb1"), after)
    config = balancer.config(lb, after, frozenset({"t2"}))
    assert [sent.script for sent in fleet.sent("lb1") if install_config_script(frontdoor.NGINX_CONFIG, config) in sent.script]
    assert "10.0.0.7" not in config and "server 10.0.0.6:5000 max_fails=1 fail_timeout=5s down" in config, "t3 routed, or t2 before its setup"

    unchanged = FakeFleet({"lb1": FakeHost(facts={frontdoor.NGINX_FILE: f"root root 644\n{routed}"})})
    balancer.stop_routing_to_removed(unchanged(lb), HostReport("lb1"), before)
    assert len(unchanged.sent("lb1")) == 1, "only the fact was read"
