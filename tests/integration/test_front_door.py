"""The secure default on a real host (mlt9): TLS by nginx, MLflow's basic auth, users, secrets, and plain HTTP on request.

The laptop's home is a temporary directory: the certificate and credentials fab writes land there.
Tests run in file order on one host.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tasks.tracking.frontdoor import pem_fingerprint
from tests.integration.fabrun import PLAIN_HTTP, fab, host_entry, recap, transcript, write_inventory

pytestmark = pytest.mark.integration

API = "/api/2.0/mlflow/experiments/search?max_results=1"
UNIT = "mlflow-tracking"


@pytest.fixture(scope="module")
def door(module_hosts, tmp_path_factory):
    (host,) = module_hosts("mlt9", prebaked={"mlt9": ("tracking",)})
    root = tmp_path_factory.mktemp("front-door")
    home = root / "home"
    home.mkdir()

    def inventory(**settings):
        return write_inventory(root / "hosts.toml", {"mlt9": host_entry(host, ["tracking"])}, tracking={"workers": 1, **settings})

    def run(*args, **settings):
        return fab(inventory(**settings), *args, env={"HOME": str(home)})

    first = run("setup-tracking")
    assert first.returncode == 0, first.stdout[-4000:]
    return host, run, home, first


def certificate_path(home, host):
    return home / ".mlflow" / "certs" / f"{host.address}_5000.pem"


def request(url: str, cafile=None, user: str = "", password: str = "") -> tuple[int, str]:
    """GET with our own TLS trust; returns the status and the body."""
    context = ssl.create_default_context(cafile=str(cafile)) if cafile else ssl._create_unverified_context()
    headers = {}
    if user:
        import base64

        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=20, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def host_secret(host, key: str) -> str:
    return host.run(f"sed -n 's/^{key}=//p' /etc/mlflow/tracking.env").stdout.strip()


def test_mlflow_listens_on_loopback_behind_nginx_with_tls(door, infra):
    host, _, home, first = door
    listening = host.run("ss -Hltn").stdout
    assert "127.0.0.1:5050" in listening and "0.0.0.0:5050" not in listening
    assert "0.0.0.0:5000" in listening  # nginx
    on_host = host.run("openssl x509 -in /etc/ssl/certs/mlflow-tracking.pem -noout -fingerprint -sha256").stdout.strip().partition("=")[2]
    assert f"sha256 fingerprint {on_host}" in first.stdout
    assert certificate_path(home, host).exists()
    assert request(f"https://{host.address}:5000/health", cafile=certificate_path(home, host))[0] == 200
    key = infra(host).file("/etc/ssl/private/mlflow-tracking.key")
    assert (key.user, key.mode) == ("root", 0o600)
    assert "MLFLOW_TRACKING_URI=https://" in infra(host).file("/etc/profile.d/mlflow.sh").content_string


def test_plain_http_to_the_tls_port_is_sent_to_https(door):
    host = door[0]
    with pytest.raises(urllib.error.HTTPError) as redirect:
        urllib.request.build_opener(NoRedirect).open(f"http://{host.address}:5000/health", timeout=10)
    assert redirect.value.code == 308 and redirect.value.headers["Location"] == f"https://{host.address}:5000/health"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def handshake(host, options: str) -> subprocess.CompletedProcess:
    """openssl s_client on the host against the front door; `DEFAULT@SECLEVEL=0` lets the client offer what the server must refuse."""
    return host.run(f"openssl s_client -connect 127.0.0.1:5000 {options} </dev/null 2>&1", check=False, timeout=60)


def test_tls_takes_only_modern_protocols_and_ciphers_and_sends_hsts(door):
    host = door[0]
    assert handshake(host, "-tls1_1 -cipher DEFAULT@SECLEVEL=0").returncode != 0
    assert handshake(host, "-tls1_2 -cipher AES256-GCM-SHA384").returncode != 0  # no forward secrecy
    modern = handshake(host, "-tls1_2 -cipher ECDHE-RSA-AES128-GCM-SHA256")
    assert modern.returncode == 0 and "Cipher is ECDHE-RSA-AES128-GCM-SHA256" in modern.stdout
    assert "session ticket" not in modern.stdout.lower()
    assert "TLSv1.3" in handshake(host, "-tls1_3").stdout
    headers = host.run(f"curl -sk -o /dev/null -D - 'https://127.0.0.1:5000{API}'").stdout.lower()
    assert headers.startswith("http/1.1 401") and "strict-transport-security: max-age=63072000" in headers


def test_no_or_wrong_credentials_get_401_and_nothing_else(door):
    host, _, home, _ = door
    cafile = certificate_path(home, host)
    url = f"https://{host.address}:5000{API}"
    status, body = request(url, cafile)
    assert status == 401 and "experiments" not in body
    status, body = request(url, cafile, "admin", "wrong-password")
    assert status == 401 and "experiments" not in body
    assert request(url, cafile, "admin", host_secret(host, "MLFLOW_AUTH_ADMIN_PASSWORD"))[0] == 200


def test_tracking_user_writes_credentials_the_mlflow_client_uses(door):
    host, run, home, _ = door
    credentials = home / "alice.credentials"
    added = run("tracking-user", "--add", "alice", "--credentials", str(credentials))
    assert added.returncode == 0, added.stdout
    assert oct(credentials.stat().st_mode & 0o777) == "0o600"
    values = dict(line.split(" = ", 1) for line in credentials.read_text().splitlines() if " = " in line)
    assert values["mlflow_tracking_username"] == "alice"
    environment = {
        **os.environ,
        "HOME": str(home),
        "MLFLOW_TRACKING_URI": f"https://{host.address}:5000",
        "MLFLOW_TRACKING_SERVER_CERT_PATH": str(certificate_path(home, host)),
        "MLFLOW_TRACKING_USERNAME": "alice",
        "MLFLOW_TRACKING_PASSWORD": values["mlflow_tracking_password"],
    }
    script = (
        "import mlflow\nmlflow.set_experiment('front-door')\n"
        "with mlflow.start_run() as run:\n    mlflow.log_metric('rmse', 0.71)\n"
        "print(mlflow.get_run(run.info.run_id).data.metrics['rmse'])"
    )
    logged = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=300)
    assert logged.returncode == 0 and logged.stdout.strip().endswith("0.71"), logged.stderr[-2000:]
    again = run("tracking-user", "--add", "alice", "--credentials", str(home / "other.credentials"))
    assert again.returncode == 1 and "user alice exists already" in again.stdout
    assert not (home / "other.credentials").exists()
    assert not any(values["mlflow_tracking_password"] in output for output in transcript)


def test_second_run_changes_nothing(door):
    host, run, _, _ = door
    pid = host.run(f"systemctl show -p MainPID --value {UNIT}").stdout.strip()
    again = run("setup-tracking")
    assert recap(again, "mlt9")["changed"] == 0, again.stdout
    assert host.run(f"systemctl show -p MainPID --value {UNIT}").stdout.strip() == pid


def test_generated_secrets_are_in_no_output_process_or_readable_file(door, infra):
    host = door[0]
    secrets = [host_secret(host, key) for key in ("MLFLOW_DB_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")]
    assert all(len(secret) >= 32 for secret in secrets)
    processes = host.run("ps -eo args").stdout
    ours = "/etc/systemd/system /etc/profile.d /etc/mlflow /etc/nginx /etc/ssl/certs /usr/local/sbin /var/lib/mlflow /var/log /tmp"
    for secret in secrets:
        assert secret not in processes
        assert not any(secret in output for output in transcript)
        holders = set(host.run(f"grep -rlF -e '{secret}' {ours} /opt/mlflow --exclude-dir=envs", check=False).stdout.split())
        assert holders <= {"/etc/mlflow/tracking.env", "/etc/mlflow/admin.curl"}, holders
        readable = host.run(f"find / -xdev -type f -perm -o=r -size -2M -print0 | xargs -0 -r grep -lF -e '{secret}'", check=False)
        assert readable.stdout.strip() == ""
    admin = infra(host).file("/etc/mlflow/admin.curl")
    assert (admin.user, admin.group, admin.mode) == ("root", "root", 0o600)


def host_fingerprint(host) -> str:
    return host.run("openssl x509 -in /etc/ssl/certs/mlflow-tracking.pem -noout -fingerprint -sha256").stdout.strip().partition("=")[2]


def test_a_self_signed_certificate_that_expires_within_30_days_is_renewed(door):
    host, run, home, _ = door
    host.run(f"umask 077 && openssl req -x509 -newkey rsa:2048 -nodes -days 5 -subj /CN=mlt9 -addext subjectAltName=IP:{host.address} "
             "-keyout /etc/ssl/private/mlflow-tracking.key -out /etc/ssl/certs/mlflow-tracking.pem 2>/dev/null && systemctl reload nginx")
    expiring = host_fingerprint(host)
    renewed = run("setup-tracking")
    assert renewed.returncode == 0, renewed.stdout[-3000:]
    assert "(within 30 days): renew" in renewed.stdout
    fingerprint = host_fingerprint(host)
    assert fingerprint != expiring and f"sha256 fingerprint {fingerprint}, saved to {certificate_path(home, host)}" in renewed.stdout
    assert host.run(f"openssl x509 -in /etc/ssl/certs/mlflow-tracking.pem -noout -checkend {800 * 86400}", check=False).returncode == 0
    assert pem_fingerprint(certificate_path(home, host).read_text()) == fingerprint
    assert request(f"https://{host.address}:5000/health", cafile=certificate_path(home, host))[0] == 200  # nginx serves the new one
    again = run("setup-tracking")
    assert recap(again, "mlt9")["changed"] == 0, again.stdout


def test_a_certificate_from_hosts_toml_replaces_the_self_signed_one(door, infra, tmp_path):
    host, run, _, _ = door
    certificate, key = tmp_path / "tracking.pem", tmp_path / "tracking.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=mlt9",
         "-addext", f"subjectAltName=IP:{host.address}", "-keyout", str(key), "-out", str(certificate)],
        check=True, capture_output=True,
    )
    result = run("setup-tracking", tls_certificate=str(certificate), tls_key=str(key))
    assert result.returncode == 0, result.stdout[-3000:]
    assert "self-signed" not in result.stdout
    assert f"tls_certificate {certificate} expires on" in result.stdout  # 30 days: time to renew it
    assert request(f"https://{host.address}:5000/health", cafile=certificate)[0] == 200
    key_text = key.read_text()
    assert infra(host).file("/etc/ssl/private/mlflow-tracking.key").content_string == key_text
    body = "".join(key_text.splitlines()[1:-1])
    assert not any(body[:64] in output for output in transcript)
    assert host.run("ls /tmp | grep -c mlflow-fab-", check=False).stdout.strip() == "0"
    again = run("setup-tracking", tls_certificate=str(certificate), tls_key=str(key))
    assert recap(again, "mlt9")["changed"] == 0, again.stdout


def test_plain_http_only_when_hosts_toml_says_so(door):
    host, run, _, _ = door
    plain = run("setup-tracking", **PLAIN_HTTP)
    assert plain.returncode == 0, plain.stdout[-3000:]
    assert "remove the nginx front door" in plain.stdout
    with urllib.request.urlopen(f"http://{host.address}:5000{API}", timeout=20) as response:
        assert response.status == 200 and "experiments" in json.loads(response.read())
    assert "--app-name" not in host.run(f"systemctl show -p ExecStart --value {UNIT}").stdout
