"""SSH keys of the testbed and the ssh command line used to reach a host."""

import subprocess
from pathlib import Path

from .proc import run

SSH_OPTIONS = [
    "-F", "/dev/null",
    "-o", "BatchMode=yes",
    "-o", "IdentitiesOnly=yes",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "StrictHostKeyChecking=no",
    "-o", "LogLevel=ERROR",
]


def ensure_key(path: Path, comment: str) -> None:
    if path.exists() and path.with_suffix(".pub").exists():
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    path.with_suffix(".pub").unlink(missing_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path])


def ssh_argv(user: str, address: str, port: int, identity: Path, connect_timeout: int = 10) -> list[str]:
    return ["ssh", *SSH_OPTIONS, "-o", f"ConnectTimeout={connect_timeout}",
            "-i", str(identity), "-p", str(port), f"{user}@{address}"]


def accepts_key(user: str, address: str, port: int, identity: Path) -> bool:
    argv = ssh_argv(user, address, port, identity, connect_timeout=2) + ["true"]
    try:
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=5)
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0
