import base64

import pytest

from tasks.inventory import Host, TrackingSettings
from tasks.ops import facts as f
from tasks.ops.facts import Facts
from tasks.ops.platform import check_platform
from tasks.ops.remote import PRIVATE_DIRECTORY
from tasks.ops.steps import apply_script
from tasks.tracking import certificates, frontdoor, signin_guard
from tasks.tracking import server as tracking
from tasks.tracking.server import ENV_FILE, UNIT, UNIT_PATH, TrackingTarget

DEBIAN = "debian||Debian GNU/Linux 12 (bookworm)\nsystemd"


def target(**settings):
    host = Host(name="prod1", address="10.0.0.5", roles=("tracking",), user="deploy", tracking=TrackingSettings(**settings))
    return TrackingTarget(host, "10.0.0.5")


def file_fact(content, owner="root", group="root", mode="644"):
    return f"{owner} {group} {mode}\n{base64.b64encode(content.encode()).decode()}"


def converged_facts(t: TrackingTarget) -> dict:
    """What a host set up for t answers, by fact."""
    facts = {
        f.os_release(): DEBIAN,
        f.node_name(): "prod1",
        t.packages_fact: "\n".join(f"{name} ii " for name in t.packages),
        tracking.POSTGRESQL_STATE: "active",
        tracking.DATABASE_OBJECTS: "role\ndatabase",
        tracking.ROLE_SIGNS_IN: "1",
        tracking.SERVICE_USER_EXISTS: "998",
        tracking.ENV_FILE_STAT: "root mlflow 640",
        tracking.ENV_KEYS: "\n".join(tracking.SECRET_KEYS + tracking.AUTH_SECRET_KEYS),
        frontdoor.ADMIN_CURL_STAT: "root root 600",
        frontdoor.TLS_STATE: f"abc {frontdoor.CERTIFICATE}\ndef {frontdoor.KEY}\nsha256 Fingerprint=AB:CD\nnotAfter=Mar  4 10:00:00 2029 GMT\n{certificates.NOT_DUE}",
        frontdoor.NGINX_FILE: file_fact(frontdoor.FrontDoor(t.host, t.address).nginx_config()),
        frontdoor.AUTH_CONFIG_FILE: file_fact(frontdoor.FrontDoor(t.host, t.address).auth_config(), group="mlflow", mode="640"),
        frontdoor.AUTH_SCHEMA_PRESENT: "auth",
        t.env_marker_fact: t.env_spec.text,
        tracking.ENVS: t.env_path.rsplit("/", 1)[1],
        tracking.UNIT_FILE: file_fact(t.unit("prod1")),
        tracking.PROFILE_FILE: file_fact(t.profile()),
        tracking.SERVICE_STATE: "ActiveState=active\nSubState=running\nUnitFileState=enabled\nMainPID=4242\nNRestarts=0",
        t.probe_fact: "\n".join(f"{check.label} 200" for check in t.health_checks),
        signin_guard.JAIL_FILE: file_fact(signin_guard.jail_config(t.settings, ssh_log=False)),
        signin_guard.FILTER_FILE: file_fact(signin_guard.filter_config()),
        signin_guard.GUARD_STATE: "jail running",
    }
    for path, owner, group, mode in t.directories():
        facts[f.path_stat(path)] = f"{owner} {group} {mode}"
    for path, (content, mode) in t.backup_files().items():
        facts[f.file_content(path)] = file_fact(content, mode=mode)
    if t.settings.backup_schedule:
        facts[tracking.BACKUP_TIMER_STATE] = "ActiveState=active\nUnitFileState=enabled"
    return facts


def plan(t: TrackingTarget, facts: dict):
    return tracking.plan(t, Facts(facts))


def changed(steps):
    return [step.name for step in steps if step.changed]


def test_converged_host_is_a_no_op():
    t = target()
    steps = plan(t, converged_facts(t))
    assert changed(steps) == []
    assert apply_script(steps).strip() == ""


def test_fresh_host_gets_everything_in_order():
    t = target()
    steps = plan(t, {f.os_release(): DEBIAN, f.node_name(): "prod1"})
    names = changed(steps)
    assert names[0] == "packages" and names[-1] == "health gate"
    assert names.index("secrets /etc/mlflow/tracking.env") < names.index("database role mlflow") < names.index("database mlflow")
    assert names.index("python env") < names.index(f"restart {UNIT}")
    assert "install postgresql python3-venv curl ca-certificates iproute2 logrotate nginx openssl" in steps[0].summary
    assert names.index("tls certificate") < names.index(f"restart {UNIT}") < names.index(f"file {frontdoor.NGINX_CONFIG}") < names.index("health gate")


def test_workers_change_shows_unit_diff_and_restarts_once():
    before = target()
    after = target(workers=4)
    steps = plan(after, converged_facts(before))
    assert changed(steps) == [f"file {UNIT_PATH}", "daemon-reload", f"restart {UNIT}", "health gate"]
    unit = next(step for step in steps if step.name == f"file {UNIT_PATH}")
    assert "-ExecStart=" in unit.diff and "--workers 4" in unit.diff
    restart = next(step for step in steps if step.name == f"restart {UNIT}")
    assert restart.summary == "because unit changed"


def test_new_mlflow_version_builds_a_new_env_beside_the_old_and_prunes_it_after_the_gate():
    before = target()
    after = target(mlflow_version="3.16.0")
    steps = plan(after, converged_facts(before))
    names = changed(steps)
    assert names[-2:] == ["health gate", "old python envs"]
    assert before.env_path != after.env_path
    restart = next(step for step in steps if step.name == f"restart {UNIT}")
    assert restart.summary == "because unit, python env changed"


def test_stopped_service_is_started_and_gated():
    t = target()
    facts = converged_facts(t) | {tracking.SERVICE_STATE: "ActiveState=inactive\nUnitFileState=enabled\nMainPID=0"}
    facts[t.probe_fact] = "/health 000\n/api 000"
    assert changed(plan(t, facts)) == ["auth admin password", f"restart {UNIT}", "health gate"]


def test_unhealthy_but_running_server_is_gated_without_restart():
    t = target()
    facts = converged_facts(t) | {t.probe_fact: "/health 200\n/api 403"}
    steps = plan(t, facts)
    assert changed(steps) == ["auth admin password", "health gate"]
    assert "NRestarts" in steps[-1].script and '"${restarts:-0}" -gt 0' not in steps[-1].script


def test_lost_secret_file_is_regenerated_and_the_role_password_reset():
    t = target()
    facts = converged_facts(t) | {tracking.ROLE_SIGNS_IN: ""}  # no secrets file: no password to sign in with
    del facts[tracking.ENV_FILE_STAT]
    names = changed(plan(t, facts))
    assert names == [f"secrets {ENV_FILE}", "database role mlflow", "auth admin password", f"restart {UNIT}", "health gate"]


def test_a_role_whose_password_is_not_the_secrets_files_gets_it_and_the_server_restarts():
    """An earlier run cut off after writing tracking.env left the role on the old password."""
    t = target()
    steps = plan(t, converged_facts(t) | {tracking.ROLE_SIGNS_IN: ""})
    assert changed(steps) == ["database role mlflow", f"restart {UNIT}", "health gate"]
    assert next(step for step in steps if step.name == f"restart {UNIT}").summary == "because database role changed"


def test_a_server_started_before_the_secrets_file_was_written_restarts():
    t = target()
    steps = plan(t, converged_facts(t) | {tracking.SECRETS_NEWER_THAN_SERVER: "yes"})
    assert changed(steps) == [f"restart {UNIT}", "health gate"]
    assert next(step for step in steps if step.name == f"restart {UNIT}").summary == "because secrets (since the server started) changed"


def test_a_server_that_does_not_answer_gets_the_admin_password_set_again():
    """Whether the stored admin password is right can't be seen while the API doesn't answer: set it (it is idempotent)."""
    t = target()
    facts = converged_facts(t) | {tracking.SERVICE_STATE: "ActiveState=activating\nUnitFileState=enabled\nMainPID=0"}
    facts[t.probe_fact] = "\n".join(f"{check.label} {'000' if check.path == '/health' else '502'}" for check in t.health_checks)
    reset = next(step for step in plan(t, facts) if step.name == "auth admin password")
    assert reset.changed and "(502)" in reset.summary


def test_a_refused_admin_credential_is_set_from_the_secrets_file_without_a_restart():
    """A backup of another host restored here holds that host's admin password hash: the API answers admin.curl 401."""
    t = target()
    facts = converged_facts(t)
    facts[t.probe_fact] = "\n".join(f"{check.label} {'200' if check.path == '/health' else '401'}" for check in t.health_checks)
    steps = plan(t, facts)
    assert changed(steps) == ["auth admin password", "health gate"]
    reset = next(step for step in steps if step.name == "auth admin password")
    assert "refuses the admin credential (401)" in reset.summary and "MLFLOW_AUTH_ADMIN_PASSWORD" in reset.script


def test_secret_never_on_a_command_line():
    script = tracking.set_role_password_script()
    assert "printf" in script and "| runuser -u postgres -- psql" in script
    assert "secrets.token_urlsafe" in tracking.generate_env_file_script(auth=True)
    unit = target().unit("prod1")
    assert f"EnvironmentFile={ENV_FILE}" in unit
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert "postgresql" not in exec_start and "PASSWORD" not in exec_start


def test_unit_settings():
    unit = target(port=8443, job_runner=False).unit("node7")
    assert "Restart=on-failure" in unit
    assert "Environment=MLFLOW_DISABLE_TELEMETRY=true" in unit and "Environment=DO_NOT_TRACK=true" in unit
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in unit
    assert "StandardOutput=journal" in unit
    allowed = next(line for line in unit.splitlines() if "ALLOWED_HOSTS" in line).split("=", 2)[2].split(",")
    assert allowed == ["prod1:8443", "10.0.0.5:8443", "node7:8443", "localhost:8443", "127.0.0.1:8443", "127.0.0.1:5050"]
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true" in target(job_runner=True).unit("n")
    assert "mlflow.example.com:443" in target(allowed_hosts=["mlflow.example.com:443"]).unit("n")


@pytest.mark.parametrize(
    "os_fact, message",
    [
        ("centos|rhel fedora|CentOS Stream 9\nsystemd", "CentOS Stream 9 is not Debian/Ubuntu"),
        ("debian||Debian GNU/Linux 12 (bookworm)", "does not run systemd"),
        ("ubuntu|debian|Ubuntu 24.04 LTS\nsystemd", None),
    ],
)
def test_platform_check(os_fact, message):
    step = check_platform(os_fact)
    assert step.failed == (message is not None)
    if message:
        assert message in step.summary


def test_backup_timer_only_when_scheduled():
    plain = target()
    scheduled = target(backup_schedule="*-*-* 03:00")
    steps = plan(scheduled, converged_facts(plain))
    assert changed(steps) == ["file /etc/systemd/system/mlflow-backup.service", "file /etc/systemd/system/mlflow-backup.timer", "backup timer"]
    assert "OnCalendar=*-*-* 03:00" in steps[[s.name for s in steps].index("file /etc/systemd/system/mlflow-backup.timer")].diff
    assert changed(plan(scheduled, converged_facts(scheduled))) == []
    removal = plan(plain, converged_facts(scheduled))
    assert changed(removal) == ["backup timer"] and any("disable --now" in step.script for step in removal)


def test_the_running_env_comes_from_the_installed_unit_not_the_inventory():
    old, new = target(mlflow_version="3.16.1"), target(mlflow_version="3.17.2")
    assert tracking.running_env_path(old.unit("node")) == old.env_path != new.env_path
    assert tracking.running_env_path("") == ""


def exec_start(unit: str) -> str:
    return next(line for line in unit.splitlines() if line.startswith("ExecStart="))


def test_secure_by_default_mlflow_behind_nginx_with_basic_auth():
    t = target()
    assert t.url == "https://10.0.0.5:5000"
    unit = t.unit("prod1")
    assert "--host 127.0.0.1 --port 5050" in exec_start(unit) and exec_start(unit).endswith("--app-name basic-auth --expose-prometheus /run/mlflow-tracking")
    assert f"Environment=MLFLOW_AUTH_CONFIG_PATH={frontdoor.AUTH_CONFIG}" in unit
    nginx = frontdoor.FrontDoor(t.host, t.address).nginx_config()
    assert "listen 5000 ssl;" in nginx and "proxy_pass http://127.0.0.1:5050;" in nginx
    ini = frontdoor.FrontDoor(t.host, t.address).auth_config()
    assert "password" not in ini.split("[mlflow]")[1]
    assert "\nauth_cache_ttl_seconds = 60" in ini
    health, api = t.health_checks
    assert health.curl(t.server_port).endswith("http://127.0.0.1:5050/health")
    assert f"-k -K {frontdoor.ADMIN_CURL}" in api.curl(t.server_port) and "https://127.0.0.1:5000/api/" in api.curl(t.server_port)


def test_plain_http_only_when_asked_and_our_nginx_server_block_goes_first():
    plain = target(tls=False, auth=False)
    unit = plain.unit("prod1")
    assert "--host 0.0.0.0 --port 5000" in exec_start(unit) and "basic-auth" not in unit
    steps = plan(plain, converged_facts(target()))
    names = changed(steps)
    assert names.index("tls") < names.index(f"restart {UNIT}")
    assert "nginx" not in " ".join(plain.packages)


def test_secrets_added_to_an_existing_file_restart_the_server():
    t = target()
    facts = converged_facts(t) | {tracking.ENV_KEYS: "\n".join(tracking.SECRET_KEYS)}
    steps = plan(t, facts)
    secrets = next(step for step in steps if step.name == f"secrets {ENV_FILE}")
    assert secrets.changed and "MLFLOW_AUTH_ADMIN_PASSWORD" in secrets.summary and "setdefault" in secrets.script
    assert "database role mlflow" not in changed(steps)
    assert next(step for step in steps if step.name == f"restart {UNIT}").summary == "because secrets changed"


def test_self_signed_certificate_names_every_address_clients_use():
    door = frontdoor.FrontDoor(target().host, "10.0.0.5", "node7")
    assert door.names() == ["DNS:prod1", "IP:10.0.0.5", "DNS:node7", "DNS:localhost", "IP:127.0.0.1"]
    step, = frontdoor.certificate_steps(door, "")
    assert step.changed and "subjectAltName=DNS:prod1,IP:10.0.0.5" in step.script


def test_the_users_key_travels_by_sftp_never_in_a_script(tmp_path):
    import hashlib

    certificate, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\nSECRETKEY\n-----END PRIVATE KEY-----\n")
    t = target(tls_certificate=str(certificate), tls_key=str(key))
    door = frontdoor.FrontDoor(t.host, t.address)
    steps = frontdoor.certificate_steps(door, "")
    assert [step.name for step in steps if step.changed] == ["tls certificate", "tls key"]
    assert all("SECRETKEY" not in step.script and base64.b64encode(key.read_bytes()).decode() not in step.script for step in steps)
    assert frontdoor.key_upload_path() in steps[1].script and frontdoor.key_upload_path().startswith(PRIVATE_DIRECTORY + "/")
    same = f"{hashlib.sha256(certificate.read_bytes()).hexdigest()} {frontdoor.CERTIFICATE}\n{hashlib.sha256(key.read_bytes()).hexdigest()} {frontdoor.KEY}"
    assert not any(step.changed for step in frontdoor.certificate_steps(door, same))
