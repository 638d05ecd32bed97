"""Wrong passwords can't stall the tracking server (mlt15), tried from another host (mlt16) than the laptop.

The attacker's address is banned from the tracking port after signin_max_failures wrong passwords and let in
again after signin_ban_seconds; the laptop, signing in correctly, is never refused. Tests run in file order.
"""

from __future__ import annotations

import base64
import http.client
import ssl

import pytest

from tests.integration.fabrun import fab, host_entry, recap, wait_for, write_inventory

pytestmark = pytest.mark.integration

API = "/api/2.0/mlflow/experiments/search?max_results=1"
MAX_FAILURES = 3
BAN_SECONDS = 20
JAIL = "mlflow-tracking"


@pytest.fixture(scope="module")
def guarded(module_hosts, tmp_path_factory):
    server, attacker = module_hosts("mlt15", "mlt16", prebaked={"mlt15": ("tracking",)})
    root = tmp_path_factory.mktemp("password-flood")
    home = root / "home"
    home.mkdir()
    attacker.run("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends curl", timeout=600)

    def run(**settings):
        tracking = {"workers": 1, "signin_max_failures": MAX_FAILURES, "signin_ban_seconds": BAN_SECONDS, **settings}
        inventory = write_inventory(root / "hosts.toml", {"mlt15": host_entry(server, ["tracking"])}, tracking=tracking)
        return fab(inventory, "setup-tracking", env={"HOME": str(home)})

    first = run()
    assert first.returncode == 0, first.stdout[-4000:]
    password = server.run("sed -n 's/^MLFLOW_AUTH_ADMIN_PASSWORD=//p' /etc/mlflow/tracking.env").stdout.strip()
    return server, attacker, run, password


def from_attacker(attacker, server, credentials: str = "-u admin:wrong-password") -> str:
    """One request from the attacker host: the HTTP status, or "refused" when the front door turned it away."""
    result = attacker.run(f"curl -sk -o /dev/null -w '%{{http_code}}' --max-time 60 {credentials} 'https://{server.address}:5000{API}'", check=False)
    return "refused" if result.returncode == 7 else result.stdout.strip()


def from_laptop(server, password: str, count: int = 1) -> list[int]:
    """`count` requests as admin over one kept-alive connection, as the MLflow client logs metrics."""
    connection = http.client.HTTPSConnection(server.address, 5000, timeout=60, context=ssl._create_unverified_context())
    headers = {"Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()}
    statuses = []
    for _ in range(count):
        connection.request("GET", API, headers=headers)
        response = connection.getresponse()
        response.read()
        statuses.append(response.status)
    connection.close()
    return statuses


def banned(server) -> str:
    return server.run(f"fail2ban-client get {JAIL} banip", check=False).stdout


def test_wrong_passwords_get_the_address_refused_while_the_laptop_signs_in(guarded):
    server, attacker, _, password = guarded
    answers = []

    def attacker_refused():
        answers.append(from_attacker(attacker, server))
        return answers[-1] == "refused"

    wait_for(attacker_refused, 180, "the attacker's address to be refused after wrong passwords")
    assert answers.count("401") >= MAX_FAILURES and set(answers) <= {"401", "refused"}, answers
    assert attacker.address in banned(server)
    assert from_attacker(attacker, server, credentials="") == "refused"  # banned for every request on the port
    assert from_laptop(server, password, count=5) == [200] * 5
    assert "10.88.0.1" not in banned(server)


def test_many_quick_requests_with_the_right_password_are_never_banned(guarded):
    server, _, _, password = guarded
    assert from_laptop(server, password, count=200) == [200] * 200
    assert "10.88.0.1" not in banned(server)
    assert "10.88.0.1" not in server.run("cat /var/log/nginx/mlflow-tracking-signin.log").stdout


def test_the_ban_ends_after_the_ban_time(guarded):
    server, attacker, _, _ = guarded
    # no credentials: a request that can't count as a wrong password, so the probe itself doesn't renew the ban
    wait_for(lambda: from_attacker(attacker, server, credentials="") == "401", BAN_SECONDS + 120, "the ban to end")
    assert attacker.address not in banned(server)


def test_second_run_changes_nothing(guarded):
    server, _, run, _ = guarded
    again = run()
    assert recap(again, "mlt15")["changed"] == 0, again.stdout


def test_turned_off_the_guard_is_removed(guarded):
    server, attacker, run, _ = guarded
    off = run(signin_guard=False)
    assert off.returncode == 0, off.stdout[-3000:]
    assert "remove the fail2ban jail" in off.stdout
    assert server.run("ls /etc/fail2ban/jail.d /etc/fail2ban/filter.d").stdout.count(JAIL) == 0
    assert JAIL not in server.run("fail2ban-client status", check=False).stdout
    assert "limit_conn" not in server.run("cat /etc/nginx/conf.d/mlflow-tracking.conf").stdout
    assert all(from_attacker(attacker, server) == "401" for _ in range(MAX_FAILURES + 2))
    again = run(signin_guard=False)
    assert recap(again, "mlt15")["changed"] == 0, again.stdout
