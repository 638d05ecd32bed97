"""The S3 test server (tests/integration/s3server.py) on mlt49, driven by a real S3 client: rclone's own s3 backend."""

from __future__ import annotations

import shlex
import stat

import pytest

from tests.integration.s3server import REMOTE_BINARY, start_s3_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3(module_hosts):
    (host,) = module_hosts("mlt49")
    with start_s3_server(host) as server:
        yield server


def s3_client(server, command: str, secret_key: str | None = None):
    """`rclone COMMAND` on the server's host, with a remote `s3:` configured only by environment variables."""
    remote = {"TYPE": "s3", "PROVIDER": "Other", "ENDPOINT": server.endpoint_url, "ACCESS_KEY_ID": server.access_key,
              "SECRET_ACCESS_KEY": secret_key or server.secret_key}
    env = " ".join(f"RCLONE_CONFIG_S3_{name}={shlex.quote(value)}" for name, value in remote.items())
    # without these, a refused request is retried for many seconds before rclone gives up
    return server.host.run(f"env {env} {REMOTE_BINARY} --retries 1 --low-level-retries 1 {command}", check=False)


def test_an_object_written_through_s3_is_listed_with_its_size_and_reads_back_the_same(s3):
    s3.host.run("head -c 123457 /dev/urandom > /root/payload")
    key = f"{s3.bucket}/1/models/m-1/artifacts/model.skops"
    assert s3_client(s3, f"copyto /root/payload s3:{key}").returncode == 0
    assert s3.objects() == {"1/models/m-1/artifacts/model.skops": 123457}
    assert s3.objects("1/models/") == s3.objects() and s3.objects("2/") == {}
    assert s3_client(s3, f"copyto s3:{key} /root/back").returncode == 0
    s3.host.run("cmp /root/payload /root/back")


def test_a_wrong_secret_is_refused(s3):
    refused = s3_client(s3, f"copyto /etc/hostname s3:{s3.bucket}/refused", secret_key="0" * 40)
    assert refused.returncode != 0 and "StatusCode: 403" in refused.stderr
    assert "refused" not in s3.objects()


def test_objects_survive_a_stop_and_start(s3):
    before = s3.objects()
    s3.stop()
    assert not s3.answers()
    s3.start()
    listing = s3_client(s3, f"lsf -R --files-only s3:{s3.bucket}")
    assert listing.returncode == 0 and before and set(listing.stdout.split()) == set(before)
    assert s3.objects() == before


def test_the_credentials_file_holds_the_keys_for_this_machine_only(s3, tmp_path):
    path = s3.credentials_file(tmp_path / "s3.env")
    assert path.read_text() == f"AWS_ACCESS_KEY_ID={s3.access_key}\nAWS_SECRET_ACCESS_KEY={s3.secret_key}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    processes = s3.host.run("ps -eo args").stdout
    assert f"{REMOTE_BINARY} serve s3" in processes and s3.secret_key not in processes
