"""No secret or data is readable by another local user, not even for a moment (mlt12: tracking and model host).

While setup-tracking (with a certificate from hosts.toml), tracking-user, a model logged over TLS, backup-tracking
--download, restore-tracking --from that file and deploy-model run, a watcher logged in as another local user tries
to read every file created or moved in under the trees where uploads, backups, secrets and releases land.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.fabrun import REPO, fab, host_entry, wait_for, write_inventory

pytestmark = pytest.mark.integration

WATCHER = "watcher"
WATCHED = ("/tmp", "/var/tmp", "/home", "/etc", "/opt", "/var/backups", "/var/lib", "/run")
LOG = f"/home/{WATCHER}/reads"
SENTINEL = "/run/read-everything-done"
# Where only root (and a service) may read: uploads, downloads and work files, backups, keys, secrets, releases.
# In /tmp, the files our tasks make (mlflow-fab-*, mktemp's tmp.*): a Debian package's maintainer script leaves its own
# there while apt runs (postgresql-common.XXXXXX, a config template), which is not ours to judge.
PRIVATE_PLACES = re.compile(r"^(/tmp/(mlflow-fab-|tmp\.)|/var/tmp/|/home/|/var/backups/|/etc/ssl/private/|/etc/mlflow/|/opt/mlflow/models/[^/]+/releases/)")


def start_watcher(host) -> str:
    script = (Path(__file__).parent / "read_everything.sh").read_text()
    host.run("DEBIAN_FRONTEND=noninteractive apt-get install -y -q inotify-tools >/dev/null", timeout=300)
    host.run(f"useradd -m {WATCHER} && install -m 755 /dev/stdin /usr/local/bin/read-everything", input=script)
    pid = host.run(f"cd /; setsid runuser -u {WATCHER} -- /usr/local/bin/read-everything {LOG} {' '.join(WATCHED)} "
                   "</dev/null >/dev/null 2>&1 & echo $!").stdout.strip()
    wait_for(lambda: "Watches established" in host.run(f"cat {LOG}.err", check=False).stdout, 120, "the watcher's inotify watches")
    return pid


def stop_watcher(host, pid: str) -> list[str]:
    """Every file the watcher read, once it has caught up with the last event; then it is stopped by its PID."""
    assert host.run(f"pgrep -g {pid} -x inotifywait", check=False).returncode == 0, "the watcher died before the end"
    host.run(f"touch {SENTINEL}")
    wait_for(lambda: SENTINEL in host.run(f"cat {LOG}", check=False).stdout, 60, "the watcher to catch up")
    host.run(f"kill -- -{pid}")
    return host.run(f"cat {LOG}").stdout.splitlines()


def leaks(reads: list[str]) -> list[str]:
    """Reads of a private place, of a private key, or of an archive (a backup, a model)."""
    found = []
    for line in sorted(set(reads)):
        path, _, rest = line.removeprefix("READ ").rpartition(" bytes=")
        read = dict(field.split("=", 1) for field in f"bytes={rest}".split())
        if PRIVATE_PLACES.match(path) or read["key"] != "0" or "1" in (read["gzip"], read["tar"]):
            found.append(line)
    return found


@pytest.fixture(scope="module")
def watched_run(module_hosts, tmp_path_factory):
    (host,) = module_hosts("mlt12")  # a bare host: the watcher must see apt at work (dpkg-new files) to prove it watched
    root = tmp_path_factory.mktemp("no-reads")
    home = root / "home"
    home.mkdir()
    certificate, key = root / "tracking.pem", root / "tracking.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=mlt12",
         "-addext", f"subjectAltName=IP:{host.address}", "-keyout", str(key), "-out", str(certificate)],
        check=True, capture_output=True,
    )
    inventory = write_inventory(root / "hosts.toml", {"mlt12": host_entry(host, ["tracking", "models"])},
                                tracking={"workers": 1, "tls_certificate": str(certificate), "tls_key": str(key)})
    pid = start_watcher(host)
    laptop = {"HOME": str(home), "MLFLOW_TRACKING_SERVER_CERT_PATH": str(certificate)}

    def run(*args, **extra):
        result = fab(inventory, *args, env={**laptop, **extra})
        assert result.returncode == 0, result.stdout[-4000:]
        return result

    run("setup-tracking")
    credentials = home / "alice.credentials"
    run("tracking-user", "--add", "alice", "--credentials", str(credentials))
    values = dict(line.split(" = ", 1) for line in credentials.read_text().splitlines() if " = " in line)
    alice = {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": values["mlflow_tracking_password"]}
    logged = subprocess.run([sys.executable, "-m", "tests.wine", "--tracking-uri", f"https://{host.address}:5000"], cwd=REPO,
                            env={**os.environ, **laptop, **alice}, capture_output=True, text=True, timeout=600)
    assert logged.returncode == 0, logged.stderr[-3000:]
    run("backup-tracking", "--download", str(root / "backups"))
    (backup,) = (root / "backups").iterdir()
    run("restore-tracking", "--from", str(backup))
    run("deploy-model", "--run-id", logged.stdout.split()[-1], **alice)
    return host, stop_watcher(host, pid)


def test_another_local_user_reads_no_secret_and_no_data(watched_run):
    _, reads = watched_run
    # dpkg makes a package's files readable before it closes them: proof the watcher read while the tasks ran
    assert any(line.startswith("READ /etc/nginx/nginx.conf.dpkg-new ") for line in reads), "the watcher read nothing at all"
    found = leaks(reads)
    assert not found, "another local user read:\n" + "\n".join(found)


def test_releases_are_for_root_and_the_model_service_only(watched_run):
    host, _ = watched_run
    releases = "/opt/mlflow/models/model/releases"
    assert host.run(f"stat -c '%U %G %a' {releases}").stdout.split() == ["root", "mlflow-model", "750"]
    assert host.run(f"find {releases} -perm /o=rwx ! -type l").stdout == ""
    assert host.run("ls -A /tmp | grep -c mlflow-fab", check=False).stdout.strip() == "0"
