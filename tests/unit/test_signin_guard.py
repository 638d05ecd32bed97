import base64

import pytest

from tasks.inventory import Host, InventoryError, TrackingSettings, load_inventory
from tasks.ops.facts import Facts
from tasks.tracking import frontdoor, signin_guard
from tasks.tracking.signin_guard import FILTER_PATH, JAIL, JAIL_PATH, SIGNIN_LOG


def settings(**values) -> TrackingSettings:
    return TrackingSettings(**values)


def file_fact(content: str) -> str:
    return f"root root 644\n{base64.b64encode(content.encode()).decode()}"


def installed(s: TrackingSettings, state: str = "jail running") -> Facts:
    return Facts({
        signin_guard.JAIL_FILE: file_fact(signin_guard.jail_config(s, ssh_log=False)),
        signin_guard.FILTER_FILE: file_fact(signin_guard.filter_config()),
        signin_guard.GUARD_STATE: state,
    })


def changed(steps):
    return [step.name for step in steps if step.changed]


def test_a_fresh_host_gets_the_jail_its_filter_and_fail2ban_running_it():
    steps = signin_guard.steps(settings(), Facts({}))
    assert changed(steps) == [f"file {JAIL_PATH}", f"file {FILTER_PATH}", f"fail2ban jail {JAIL}"]
    start = steps[-1].script
    assert f"install -m 640 -o www-data -g adm /dev/null {SIGNIN_LOG}" in start
    assert f"fail2ban-client status {JAIL}" in start and "deadline" in start
    assert signin_guard.packages(settings()) == ["fail2ban", "nftables"]


def test_a_converged_host_is_a_no_op():
    s = settings()
    assert changed(signin_guard.steps(s, installed(s))) == []


def test_new_thresholds_reload_the_jail():
    before, after = settings(), settings(signin_ban_seconds=30, signin_max_failures=3)
    steps = signin_guard.steps(after, installed(before))
    assert changed(steps) == [f"file {JAIL_PATH}", f"fail2ban jail {JAIL}"]
    assert "+bantime = 30" in steps[0].diff and "+maxretry = 3" in steps[0].diff
    assert "fail2ban-client reload" in steps[-1].script


def test_a_stopped_jail_is_started_even_when_its_files_are_right():
    s = settings()
    assert changed(signin_guard.steps(s, installed(s, state=""))) == [f"fail2ban jail {JAIL}"]


def test_the_jail_bans_only_the_tracking_port_and_never_loopback():
    jail = signin_guard.jail_config(settings(port=5443, signin_max_failures=7, signin_window_seconds=90, signin_ban_seconds=120), ssh_log=True)
    lines = set(jail.splitlines())
    assert {"port = 5443", "maxretry = 7", "findtime = 90", "bantime = 120", f"logpath = {SIGNIN_LOG}",
            "banaction = nftables-multiport", "ignoreip = 127.0.0.1/8 ::1"} <= lines
    assert "[sshd]" not in jail


def test_debians_sshd_jail_is_turned_off_only_where_it_cannot_run():
    without_log = signin_guard.jail_config(settings(), ssh_log=False)
    assert "[sshd]\nenabled = false" in without_log
    s = settings()
    steps = signin_guard.steps(s, installed(s, state="jail running\nssh log"))
    assert changed(steps) == [f"file {JAIL_PATH}", f"fail2ban jail {JAIL}"]
    assert "-[sshd]" in steps[0].diff


def test_turned_off_the_jail_is_stopped_and_removed_then_nothing_more():
    for off in (settings(signin_guard=False), settings(tls=False), settings(auth=False)):
        steps = signin_guard.steps(off, installed(settings()))
        assert changed(steps) == ["signin guard"]
        assert f"fail2ban-client stop {JAIL}" in steps[0].script and f"rm -f {JAIL_PATH} {FILTER_PATH}" in steps[0].script
        assert changed(signin_guard.steps(off, Facts({}))) == []
        assert signin_guard.packages(off) == []


def door_config(**values) -> str:
    host = Host(name="prod1", address="10.0.0.5", roles=("tracking",), tracking=settings(**values))
    return frontdoor.FrontDoor(host, "10.0.0.5").nginx_config()


def test_the_front_door_logs_wrong_passwords_and_caps_requests_per_address():
    config = door_config(parallel_requests_per_address=12)
    assert f"access_log {SIGNIN_LOG} mlflow_tracking_signin if=$mlflow_tracking_failed_signin;" in config
    assert '"~^401:." 1;' in config  # a 401 to a request without credentials (a browser's first visit) is not a failure
    assert "log_format mlflow_tracking_signin '$time_iso8601 failed sign-in from $remote_addr';" in config
    assert "limit_conn mlflow_tracking_per_address 12;" in config and "limit_conn_status 429;" in config
    assert "access_log /var/log/nginx/access.log;" in config  # our access_log would otherwise replace the usual one


def test_without_the_guard_the_front_door_has_no_log_or_cap():
    config = door_config(signin_guard=False)
    assert "access_log" not in config and "limit_conn" not in config and "map " not in config


def test_thresholds_must_be_positive(tmp_path):
    inventory = tmp_path / "hosts.toml"
    inventory.write_text('[tracking]\nsignin_max_failures = 0\n')
    with pytest.raises(InventoryError, match=r"hosts.toml: \[tracking\] signin_max_failures must be a positive number"):
        load_inventory(inventory)
