"""The test hosts behave like small Debian servers: systemd, sudo, SSH keys, names, packages, a firewall."""

import subprocess

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pair(module_hosts):
    """mlt1 and mlt2, booted in parallel threads (that both come up is itself under test)."""
    return tuple(module_hosts("mlt1", "mlt2"))


@pytest.fixture(scope="module")
def mlt1(pair):
    return pair[0]


@pytest.fixture(scope="module")
def mlt1_with_curl(mlt1):
    mlt1.run("apt-get install -y curl", timeout=300)
    return mlt1


def test_host_has_its_name_address_and_deploy_user(pair):
    assert [(host.name, host.address, host.user, host.port) for host in pair] == [
        ("mlt1", "10.88.0.11", "deploy", 22),
        ("mlt2", "10.88.0.12", "deploy", 22),
    ]
    assert pair[1].run("hostname").stdout.strip() == "mlt2"


def test_systemd_is_pid_1_and_the_system_is_up(mlt1):
    assert mlt1.run("cat /proc/1/comm").stdout.strip() == "systemd"
    state = mlt1.run("systemctl is-system-running --wait", check=False, timeout=60).stdout.strip()
    assert state in ("running", "degraded")


def test_testinfra_sees_sshd_running_under_systemd(infra, mlt1):
    assert infra(mlt1).service("ssh").is_running


def test_deploy_has_passwordless_sudo(mlt1):
    assert mlt1.run("sudo -n id -u", user="deploy").stdout.strip() == "0"


def test_sudo_asks_needpw_for_a_password(mlt1):
    without_password = mlt1.run("sudo -n true", user="needpw", check=False)
    assert without_password.returncode != 0
    assert "password is required" in without_password.stderr
    assert mlt1.run("sudo -S -p '' id -u", user="needpw", input="needpw-secret\n").stdout.strip() == "0"


def test_a_wrong_key_is_refused(testbed, mlt1):
    argv = mlt1.ssh_argv("deploy")
    argv[argv.index("-i") + 1] = str(testbed.wrong_identity)
    result = subprocess.run(argv + ["true"], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    assert result.returncode == 255
    assert "Permission denied" in result.stderr


def test_hosts_reach_each_other_by_name(pair):
    mlt1, _ = pair
    assert mlt1.run("getent hosts mlt2").stdout.split()[0] == "10.88.0.12"
    mlt1.run("timeout 5 bash -c '</dev/tcp/mlt2/22'")


def test_a_stop_on_one_host_ends_its_own_processes_and_no_other_hosts(pair):
    """Each host's systemd has a cgroup tree of its own: a unit of the same name on two hosts is two units."""
    service = "sleep 1000 & sleep 1001 & wait"
    for host in pair:
        host.run(f"systemd-run --quiet --unit=twin /bin/bash -c '{service}'")
    mlt1, mlt2 = pair
    mlt1.run("systemctl stop twin")
    assert mlt1.run("pgrep -x sleep", check=False).returncode == 1, "a process of the stopped unit outlived its stop"
    assert mlt2.run("systemctl is-active twin").stdout.strip() == "active"
    assert len(mlt2.run("pgrep -x sleep").stdout.split()) == 2
    assert "Failed to kill control group" not in mlt1.run("journalctl -u twin --no-pager").stdout
    mlt2.run("systemctl stop twin")


def test_apt_installs_without_apt_get_update(mlt1_with_curl):
    assert mlt1_with_curl.run("dpkg-query -W -f '${Status}' curl").stdout == "install ok installed"


def test_https_to_the_package_index_trusts_the_machine_ca(mlt1_with_curl):
    result = mlt1_with_curl.run("curl -sS -o /dev/null -w '%{http_code}' https://pypi.org/simple/six/", timeout=60)
    assert result.stdout == "200"


def test_new_connections_to_this_machine_are_refused(mlt1):
    result = mlt1.run("timeout 5 bash -c '</dev/tcp/10.88.0.1/22'", check=False)
    assert result.returncode != 0
    assert "Connection refused" in result.stderr


def test_power_loss_keeps_the_disk_and_leaves_nothing_behind(testbed, start_host):
    host = start_host("mlt10")
    host.run("echo survived > /var/tmp/marker && sync")
    host.poweroff_hard()
    assert not host.is_running()
    assert not host.has_leftovers()
    rebooted = start_host("mlt10", fresh=False)
    assert rebooted.run("cat /var/tmp/marker").stdout.strip() == "survived"
    rebooted.stop()
    assert not rebooted.has_leftovers()
    assert "mlt10" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
