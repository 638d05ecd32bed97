"""setup-tracking on fresh testbed hosts: converge, idempotence, check mode, recovery, secrets, bad paths.

The tests share one converged tracking host (mlt24) and use mlt25 as "another host on the network";
they run in file order, each leaving mlt24 serving as the inventory describes.
"""

from __future__ import annotations

import pytest

from tests.integration.fabrun import PLAIN_HTTP, fab, host_entry, recap, transcript, wait_for, write_inventory

pytestmark = pytest.mark.integration

API = "/api/2.0/mlflow/experiments/search?max_results=1"
UNIT = "mlflow-tracking"


@pytest.fixture(scope="module")
def hosts(module_hosts):
    return tuple(module_hosts("mlt24", "mlt25"))


@pytest.fixture(scope="module")
def inventory(hosts, tmp_path_factory, testbed):
    tracking, other = hosts
    path = tmp_path_factory.mktemp("inventory") / "hosts.toml"

    def write(**tracking_settings):
        return write_inventory(
            path,
            {
                "mlt24": host_entry(tracking, ["tracking"]),
                "mlt25": host_entry(other, ["models"]),
                "wrongkey": host_entry(other, identity=str(testbed.wrong_identity)),
                "needpw": host_entry(other, user="needpw"),
                "refused": {"address": "127.0.0.1", "port": 1, "user": "deploy"},
            },
            tracking={"workers": 2, **PLAIN_HTTP, **tracking_settings},
        )

    write()
    return write


@pytest.fixture(scope="module")
def first_run(inventory, hosts):
    return fab(inventory(), "setup-tracking")


def main_pid(host) -> str:
    return host.run(f"systemctl show -p MainPID --value {UNIT}").stdout.strip()


def http_status(host, path, host_header, target="127.0.0.1:5000") -> str:
    """GET over bash's /dev/tcp (no curl needed on the asking host); returns the status code."""
    address, port = target.split(":")
    request = f"GET {path} HTTP/1.0\\r\\nHost: {host_header}\\r\\n\\r\\n"
    command = f"exec 3<>/dev/tcp/{address}/{port}; printf '{request}' >&3; head -1 <&3"
    result = host.run(f"bash -c {command!r}", check=False)
    return result.stdout.split()[1] if result.stdout.startswith("HTTP/") else result.stdout + result.stderr


def test_first_run_converges_and_prints_the_url(first_run, hosts):
    assert first_run.returncode == 0, first_run.stdout[-3000:]
    counts = recap(first_run, "mlt24")
    assert counts["changed"] > 5 and counts["failed"] == 0
    assert f"http://{hosts[0].address}:5000" in first_run.stdout


def test_host_state(first_run, hosts, infra):
    host = infra(hosts[0])
    service = host.service(UNIT)
    assert service.is_running and service.is_enabled
    assert host.user("mlflow").exists
    secrets = host.file("/etc/mlflow/tracking.env")
    assert (secrets.user, secrets.group, secrets.mode) == ("root", "mlflow", 0o640)
    unit = host.file(f"/etc/systemd/system/{UNIT}.service").content_string
    assert "Restart=on-failure" in unit and "MLFLOW_DISABLE_TELEMETRY=true" in unit
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in unit
    postgres = {socket for socket in host.socket.get_listening_sockets() if socket.endswith(":5432")}
    assert postgres and postgres <= {"tcp://127.0.0.1:5432", "tcp://::1:5432"}, postgres
    hba = host.run("grep -E '^host' /etc/postgresql/15/main/pg_hba.conf").stdout
    assert "scram-sha-256" in hba and "md5" not in hba and "trust" not in hba
    assert "MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in host.file("/etc/profile.d/mlflow.sh").content_string
    assert host.run("bash -lc 'echo $MLFLOW_TRACKING_URI'").stdout.strip() == "http://127.0.0.1:5000"


def test_api_answers_another_host_through_the_host_name(first_run, hosts):
    tracking, other = hosts
    assert http_status(other, API, "mlt24:5000", target="mlt24:5000") == "200"
    assert http_status(other, API, "evil.example:5000", target="mlt24:5000") == "403"


def test_laptop_logs_a_run_with_metrics(first_run, hosts):
    from mlflow import MlflowClient

    client = MlflowClient(f"http://{hosts[0].address}:5000")
    experiment = client.create_experiment("setup-tracking-test")
    run = client.create_run(experiment)
    client.log_param(run.info.run_id, "alpha", "0.5")
    for step, value in enumerate([0.9, 0.7, 0.6]):
        client.log_metric(run.info.run_id, "rmse", value, step=step)
    client.log_text(run.info.run_id, "hello", "notes/hello.txt")
    client.set_terminated(run.info.run_id)
    stored = client.get_run(run.info.run_id)
    assert stored.data.metrics["rmse"] == 0.6 and stored.data.params["alpha"] == "0.5"
    assert [f.path for f in client.list_artifacts(run.info.run_id, "notes")] == ["notes/hello.txt"]
    artifacts = hosts[0].run("find /var/lib/mlflow/artifacts -name hello.txt").stdout
    assert "hello.txt" in artifacts


def test_second_run_changes_nothing_and_keeps_the_process(first_run, inventory, hosts):
    before = main_pid(hosts[0])
    result = fab(inventory(), "setup-tracking")
    assert result.returncode == 0
    assert recap(result, "mlt24")["changed"] == 0
    assert main_pid(hosts[0]) == before


def test_check_shows_the_unit_diff_and_changes_nothing(first_run, inventory, hosts):
    unit_path = f"/etc/systemd/system/{UNIT}.service"
    unit_before = hosts[0].run(f"sha256sum {unit_path}").stdout
    pid_before = main_pid(hosts[0])
    result = fab(inventory(workers=3), "setup-tracking", "--check")
    assert result.returncode == 0
    assert "would change" in result.stdout
    assert "-ExecStart=" in result.stdout and "--workers 3" in result.stdout
    assert f"restart {UNIT}: because unit changed" in result.stdout
    assert hosts[0].run(f"sha256sum {unit_path}").stdout == unit_before
    assert main_pid(hosts[0]) == pid_before

    applied = fab(inventory(workers=3), "setup-tracking")
    assert applied.returncode == 0 and recap(applied, "mlt24")["changed"] == 4  # unit, reload, restart, gate
    restarted_pid = main_pid(hosts[0])
    assert restarted_pid != pid_before
    assert "--workers 3" in hosts[0].run(f"cat {unit_path}").stdout
    again = fab(inventory(workers=3), "setup-tracking")
    assert recap(again, "mlt24")["changed"] == 0 and main_pid(hosts[0]) == restarted_pid
    inventory()  # back to the module's settings for the tests that follow


def test_kill_9_is_recovered_by_systemd(first_run, hosts):
    host = hosts[0]
    victim = main_pid(host)
    host.run(f"kill -9 {victim}")

    def serving_again():
        pid = main_pid(host)
        return pid not in ("0", victim) and http_status(host, "/health", "localhost:5000") == "200"

    wait_for(serving_again, 120, "systemd to restart the killed tracking server")
    assert int(host.run(f"systemctl show -p NRestarts --value {UNIT}").stdout) >= 1


def test_the_password_stays_secret(first_run, hosts):
    host = hosts[0]
    password = host.run("sed -n 's/^MLFLOW_DB_PASSWORD=//p' /etc/mlflow/tracking.env").stdout.strip()
    assert len(password) >= 32
    assert password not in host.run("ps -eo args").stdout
    assert password not in host.run(f"systemctl show {UNIT} -p ExecStart").stdout
    assert not any(password in output for output in transcript)
    # of every file we write, only the secrets file holds it, and no world-readable file anywhere does
    ours = "/etc/systemd/system /etc/profile.d /etc/mlflow /usr/local/sbin /var/lib/mlflow /var/log /tmp"
    holders = host.run(f"grep -rlF -e '{password}' {ours} /opt/mlflow --exclude-dir=envs", check=False).stdout.split()
    assert holders == ["/etc/mlflow/tracking.env"]
    readable = host.run(f"find / -xdev -type f -perm -o=r -size -2M -print0 | xargs -0 -r grep -lF -e '{password}'", check=False)
    assert readable.stdout.strip() == ""
    # the generated password is really the one PostgreSQL checks, over TCP with scram
    login = host.run(
        "PGPASSWORD=$(sed -n 's/^MLFLOW_DB_PASSWORD=//p' /etc/mlflow/tracking.env) "
        "psql -h 127.0.0.1 -U mlflow -d mlflow -tAc 'select 1'",
        check=False,
    )
    assert login.stdout.strip() == "1", login.stderr


def test_bad_hosts_are_reported_and_the_others_go_on(first_run, inventory):
    result = fab(inventory(), "-H", "mlt24,wrongkey,needpw,refused", "setup-tracking")
    assert result.returncode == 1
    assert recap(result, "mlt24")["failed"] == 0
    out = result.stdout
    assert "wrongkey connect: SSH login as deploy was refused" in out and "check the key" in out
    assert "needpw" in out and "wants a password: rerun with --prompt-for-sudo-password" in out
    assert "refused connect: cannot connect to deploy@127.0.0.1:1" in out
    for name in ("wrongkey", "needpw", "refused"):
        assert recap(result, name)["failed"] == 1


def test_sudo_password_from_fabric_config_works(first_run, inventory):
    result = fab(inventory(), "-H", "needpw", "status", env={"FABRIC_SUDO_PASSWORD": "needpw-secret"})
    assert result.returncode == 0, result.stdout
    assert "Debian GNU/Linux 12" in result.stdout


def test_a_host_that_is_not_debian_is_refused_untouched(first_run, inventory, hosts):
    other = hosts[1]
    other.run("cp /etc/os-release /root/os-release && rm /etc/os-release && printf 'ID=fedora\\nPRETTY_NAME=\"Fedora Linux 41\"\\n' > /etc/os-release")
    try:
        result = fab(inventory(), "-H", "mlt25", "setup-tracking")
    finally:
        other.run("cp /root/os-release /etc/os-release")
    assert result.returncode == 1
    assert "Fedora Linux 41 is not Debian/Ubuntu: nothing was changed" in result.stdout
    assert other.run("dpkg -s postgresql", check=False).returncode != 0
    assert other.run("id mlflow", check=False).returncode != 0


def test_failing_health_gate_exits_with_the_journal(first_run, inventory, hosts):
    host = hosts[0]
    host.run("systemd-run --unit=squatter python3 -m http.server 5055")
    wait_for(lambda: http_status(host, "/", "x", target="127.0.0.1:5055") == "200", 30, "the squatter on port 5055")
    try:
        result = fab(inventory(port=5055), "setup-tracking")
        assert result.returncode == 1
        assert recap(result, "mlt24")["failed"] == 1
        assert "health gate failed: mlflow-tracking is inactive" in result.stdout
        assert "last 50 lines of journalctl -u mlflow-tracking" in result.stdout
        assert "Address already in use" in result.stdout
    finally:
        host.run("systemctl stop squatter")
    restored = fab(inventory(), "setup-tracking")
    assert restored.returncode == 0
    assert http_status(host, API, f"{host.address}:5000") == "200"


def test_an_unknown_host_key_is_refused_unless_the_inventory_opts_in(first_run, hosts, tmp_path):
    strict = write_inventory(tmp_path / "hosts.toml", {"mlt24": host_entry(hosts[0], ["tracking"])}, accept_new_host_keys=False)
    result = fab(strict, "status")
    assert result.returncode == 1
    assert f"{hosts[0].address}:22 is not in" in result.stdout and "accept_new_host_keys = true" in result.stdout
    assert not (tmp_path / "known_hosts").exists()


def test_a_changed_host_key_is_always_refused(first_run, hosts, tmp_path):
    inventory = write_inventory(tmp_path / "hosts.toml", {"mlt24": host_entry(hosts[0], ["tracking"])}, accept_new_host_keys=True)
    other_key = hosts[1].run("cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[:2]
    (tmp_path / "known_hosts").write_text(f"{hosts[0].address} {' '.join(other_key)}\n")
    result = fab(inventory, "status")
    assert result.returncode == 1
    assert "CHANGED" in result.stdout and f"ssh-keygen -f {tmp_path / 'known_hosts'} -R {hosts[0].address}" in result.stdout
