"""backup-tracking and restore-tracking on a real tracking host (mlt8), and the optional backup timer; then, with
TLS and sign-in on mlt8 and a second host mlt18, tracking users for their whole life and a restore onto a rebuilt host."""

from __future__ import annotations

import base64
import ssl
import urllib.error
import urllib.request

import pytest

from tests.integration.fabrun import PLAIN_HTTP, fab, host_entry, recap, transcript, wait_for, write_inventory

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tracking(module_hosts, tmp_path_factory):
    (host,) = module_hosts("mlt8", prebaked={"mlt8": ("tracking",)})
    inventory = write_inventory(tmp_path_factory.mktemp("backups") / "hosts.toml", {"mlt8": host_entry(host, ["tracking"])},
                                tracking={"workers": 1, **PLAIN_HTTP, "backup_schedule": "*-*-* 03:00", "backup_keep": 3})
    result = fab(inventory, "setup-tracking")
    assert result.returncode == 0, result.stdout[-3000:]
    return host, inventory, f"http://{host.address}:5000"


def run_names(tracking_uri) -> set[str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    return {run.info.run_name for experiment in client.search_experiments() for run in client.search_runs([experiment.experiment_id])}


def log_runs(tracking_uri, *names):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("backups")
    for name in names:
        run = client.create_run(experiment, run_name=name)
        client.log_metric(run.info.run_id, "score", 1.0)
        client.log_text(run.info.run_id, f"artifact of {name}", "notes.txt")
        client.set_terminated(run.info.run_id)


def healthy(host) -> bool:
    return host.run("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:5000/health", check=False).stdout == "200"


def test_the_timer_runs_the_same_backup(tracking):
    host, _, _ = tracking
    assert host.run("systemctl is-enabled mlflow-backup.timer").stdout.strip() == "enabled"
    assert "*-*-* 03:00" in host.run("systemctl cat mlflow-backup.timer").stdout
    host.run("systemctl start mlflow-backup.service")
    assert host.run("ls /var/backups/mlflow/mlflow-backup-*.tar | wc -l").stdout.strip() == "1"


def test_backup_destroy_restore_brings_the_runs_back(tracking, tmp_path):
    host, inventory, tracking_uri = tracking
    log_runs(tracking_uri, "first", "second")
    backup = fab(inventory, "backup-tracking", "--download", str(tmp_path))
    assert backup.returncode == 0 and recap(backup, "mlt8")["failed"] == 0
    (downloaded,) = tmp_path.glob("mlt8-mlflow-backup-*.tar")

    host.run("systemctl stop mlflow-tracking && cd / && runuser -u postgres -- dropdb mlflow && "
             "runuser -u postgres -- createdb -O mlflow mlflow && rm -rf /var/lib/mlflow/artifacts/* && systemctl start mlflow-tracking")
    wait_for(lambda: healthy(host), 120, "the server on an empty database")
    assert run_names(tracking_uri) == set()

    restore = fab(inventory, "restore-tracking", "--from", str(downloaded))
    assert restore.returncode == 0, restore.stdout[-3000:]
    assert run_names(tracking_uri) == {"first", "second"}
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("backups").experiment_id], "attributes.run_name = 'first'")[0]
    assert client.download_artifacts(run.info.run_id, "notes.txt", str(tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "artifact of first"


def test_keep_prunes_old_backups(tracking):
    host, inventory, _ = tracking
    for _ in range(3):
        assert fab(inventory, "backup-tracking").returncode == 0
    assert host.run("ls /var/backups/mlflow/mlflow-backup-*.tar | wc -l").stdout.strip() == "3"


@pytest.mark.parametrize("kind", ["missing", "corrupt"])
def test_a_bad_backup_is_refused_before_the_database_is_touched(tracking, tmp_path, kind):
    host, inventory, tracking_uri = tracking
    before = run_names(tracking_uri)
    pid = host.run("systemctl show -p MainPID --value mlflow-tracking").stdout
    source = tmp_path / "backup.tar"
    if kind == "corrupt":
        host.run("cp $(ls /var/backups/mlflow/mlflow-backup-*.tar | head -1) /tmp/good.tar")
        good = host.run("base64 -w0 /tmp/good.tar").stdout
        data = bytearray(base64.b64decode(good))
        data[len(data) // 2] ^= 0xFF  # one flipped byte inside the dump or the archive
        source.write_bytes(bytes(data))
    result = fab(inventory, "restore-tracking", "--from", str(source))
    assert result.returncode == 1
    assert ("no such backup" if kind == "missing" else "corrupt") in result.stdout
    assert "safety backup" not in result.stdout
    assert host.run("systemctl show -p MainPID --value mlflow-tracking").stdout == pid
    assert run_names(tracking_uri) == before


# ---- the secure default on two hosts: users for their whole life, and a restore onto a rebuilt host ----------------
# mlt8 (converged above with plain HTTP, now switched to TLS and sign-in) and a fresh mlt18, each with its own secrets.

API = "/api/2.0/mlflow/experiments/search?max_results=1"


@pytest.fixture(scope="module")
def secure_pair(tracking, module_hosts, tmp_path_factory):
    host_a = tracking[0]
    (host_b,) = module_hosts("mlt18", prebaked={"mlt18": ("tracking",)})
    root = tmp_path_factory.mktemp("secure-pair")
    home = root / "home"
    home.mkdir()
    inventory = write_inventory(root / "hosts.toml", {"mlt8": host_entry(host_a, ["tracking"]), "mlt18": host_entry(host_b, ["tracking"])},
                                tracking={"workers": 1})

    def run(*args):
        return fab(inventory, *args, env={"HOME": str(home)})

    result = run("setup-tracking")
    assert result.returncode == 0, result.stdout[-4000:]
    return host_a, host_b, run


def status_as(host, user: str, password: str) -> int:
    """An API call through the host's front door with these credentials (its self-signed certificate is not the point here)."""
    request = urllib.request.Request(f"https://{host.address}:5000{API}",
                                     headers={"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()})
    try:
        with urllib.request.urlopen(request, timeout=30, context=ssl._create_unverified_context()) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def as_admin(host, path: str = API) -> str:
    """The status of an API call on the host with its own admin credentials (what the health gate and tracking-user use)."""
    return host.run(f"curl -s -o /dev/null -w '%{{http_code}}' -K /etc/mlflow/admin.curl 'http://127.0.0.1:5050{path}'", check=False).stdout


def credentials_of(path) -> tuple[str, str]:
    values = dict(line.split(" = ", 1) for line in path.read_text().splitlines() if " = " in line)
    return values["mlflow_tracking_username"], values["mlflow_tracking_password"]


def test_tracking_user_reset_password_and_remove(secure_pair, tmp_path):
    host_a, host_b, run = secure_pair
    path = tmp_path / "erin.credentials"
    assert run("tracking-user", "--add", "erin", "--credentials", str(path)).returncode == 0
    _, old = credentials_of(path)
    assert [status_as(host, "erin", old) for host in (host_a, host_b)] == [200, 200]

    reset = run("tracking-user", "--reset-password", "erin", "--credentials", str(path))
    assert reset.returncode == 0, reset.stdout
    name, new = credentials_of(path)
    assert name == "erin" and new != old and oct(path.stat().st_mode & 0o777) == "0o600"
    assert [status_as(host, "erin", old) for host in (host_a, host_b)] == [401, 401]
    assert [status_as(host, "erin", new) for host in (host_a, host_b)] == [200, 200]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["erin.credentials"]  # no pending copy left behind
    assert not any(new in output for output in transcript)

    other = tmp_path / "frank.credentials"
    other.write_text("[mlflow]\nmlflow_tracking_username = frank\nmlflow_tracking_password = secret\n")
    refused = run("tracking-user", "--reset-password", "erin", "--credentials", str(other))
    assert refused.returncode == 2 and "holds the credentials of frank" in refused.stderr
    assert "secret" in other.read_text() and status_as(host_a, "erin", new) == 200

    removed = run("tracking-user", "--remove", "erin")
    assert removed.returncode == 0, removed.stdout
    assert [status_as(host, "erin", new) for host in (host_a, host_b)] == [401, 401]

    admin = run("tracking-user", "--remove", "admin")
    assert admin.returncode == 2 and "can't be removed" in admin.stderr
    assert [as_admin(host) for host in (host_a, host_b)] == ["200", "200"]


def test_credentials_that_cannot_be_written_are_refused_before_the_user_exists(secure_pair, tmp_path):
    host_a, _, run = secure_pair
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run("tracking-user", "--add", "gina", "--credentials", str(blocker / "credentials"))
    assert result.returncode == 2 and "cannot write there" in result.stderr, result.stdout + result.stderr
    assert as_admin(host_a, "/api/2.0/mlflow/users/get?username=gina") == "404"


def test_a_user_created_on_some_hosts_only_keeps_its_password(secure_pair, tmp_path):
    host_a, host_b, run = secure_pair
    assert run("-H", "mlt18", "tracking-user", "--add", "carol", "--credentials", str(tmp_path / "carol-on-mlt18")).returncode == 0
    path = tmp_path / "carol.credentials"
    both = run("tracking-user", "--add", "carol", "--credentials", str(path))
    assert both.returncode == 1 and "user carol exists already" in both.stdout
    _, password = credentials_of(path)  # created on mlt8: its password is written, not lost
    assert status_as(host_a, "carol", password) == 200
    assert "fab tracking-user --reset-password carol" in both.stdout


@pytest.fixture(scope="module")
def backup_of_a(secure_pair, tmp_path_factory):
    """A backup of mlt8 on the laptop: an experiment and a user alice, and mlt8's admin password hash."""
    host_a, _, run = secure_pair
    directory = tmp_path_factory.mktemp("backup-of-a")
    host_a.run("curl -s -K /etc/mlflow/admin.curl -H 'Content-Type: application/json' -d '{\"name\": \"made-on-a\"}' "
               "http://127.0.0.1:5050/api/2.0/mlflow/experiments/create")
    alice = directory / "alice.credentials"
    assert run("-H", "mlt8", "tracking-user", "--add", "alice", "--credentials", str(alice)).returncode == 0
    assert run("-H", "mlt8", "backup-tracking", "--download", str(directory)).returncode == 0
    (archive,) = directory.glob("mlt8-mlflow-backup-*.tar")
    return archive, credentials_of(alice)[1]


def test_setup_tracking_resets_the_admin_after_a_restore_by_hand_onto_a_rebuilt_host(secure_pair, backup_of_a):
    _, host_b, run = secure_pair
    archive, _ = backup_of_a
    host_b.run("base64 -d > /root/from-mlt8.tar", input=base64.b64encode(archive.read_bytes()).decode())
    # by hand without mlflow-restore (which sets the admin password itself): the dump straight into a new database
    host_b.run("cd /root && tar -xf from-mlt8.tar mlflow.dump && systemctl stop mlflow-tracking && cd / && "
               "runuser -u postgres -- dropdb --force mlflow && runuser -u postgres -- createdb -O mlflow mlflow && "
               "runuser -u postgres -- pg_restore --no-owner --role=mlflow -d mlflow < /root/mlflow.dump && systemctl start mlflow-tracking")
    assert wait_for(lambda: as_admin(host_b) in ("200", "401") and as_admin(host_b), 180, "mlt18 after the restore") == "401"

    fixed = run("-H", "mlt18", "setup-tracking")
    assert fixed.returncode == 0, fixed.stdout[-3000:]
    assert "refuses the admin credential (401)" in fixed.stdout
    assert as_admin(host_b) == "200"
    assert as_admin(host_b, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=made-on-a") == "200"


def test_restore_tracking_onto_a_rebuilt_host_leaves_the_gate_and_users_working(secure_pair, backup_of_a, tmp_path):
    _, host_b, run = secure_pair
    archive, alice_password = backup_of_a
    restore = run("-H", "mlt18", "restore-tracking", "--from", str(archive))
    assert restore.returncode == 0, restore.stdout[-3000:]
    assert as_admin(host_b) == "200"
    assert status_as(host_b, "alice", alice_password) == 200  # the users come with the backup
    added = run("-H", "mlt18", "tracking-user", "--add", "hank", "--credentials", str(tmp_path / "hank.credentials"))
    assert added.returncode == 0, added.stdout
