"""The base root filesystem every host boots from: debootstrap'd Debian 12, configured, cached by content hash."""

import hashlib
import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .proc import TestbedError, run, tail

log = logging.getLogger(__name__)

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
VARIANT = "minbase"
PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "openssh-server", "sudo",
    "iproute2", "ca-certificates", "procps", "less",
]
DEPLOY_USER = "deploy"
PASSWORD_USER = "needpw"
PASSWORD = "needpw-secret"

MACHINE_CA_DIR = Path("/usr/local/share/ca-certificates")
MACHINE_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
MACHINE_APT_LISTS = Path("/var/lib/apt/lists")

SSHD_CONFIG = "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
# Replaces the unit's ExecStartPre list: `sshd -t` fails while no host key exists yet.
SSH_UNIT_DROP_IN = """[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
"""
APT_KEEP_DEBS = 'Binary::apt::APT::Keep-Downloaded-Packages "true";\n'


def base_key(public_key: str) -> str:
    """A hash of everything that goes into the base, so a change to any of it builds a new one."""
    digest = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        digest.update(f"{label}\0{len(data)}\0".encode())
        digest.update(data)

    add("rootfs.py", Path(__file__).read_bytes())
    add("parameters", repr((SUITE, MIRROR, VARIANT, PACKAGES)).encode())
    add("public key", public_key.encode())
    add("sources", MACHINE_SOURCES.read_bytes())
    for cert in sorted(MACHINE_CA_DIR.glob("*.crt")):
        add(f"ca {cert.name}", cert.read_bytes())
    # InRelease carries the hashes of the package lists that get copied in.
    for release in sorted(MACHINE_APT_LISTS.glob("*InRelease")):
        add(f"list {release.name}", release.read_bytes())
    return digest.hexdigest()[:16]


def ensure_base(state_dir: Path, public_key: str) -> Path:
    """Return the cached base for these inputs, building it first if needed. Call under the state-dir lock."""
    base = state_dir / f"base-{base_key(public_key)}"
    for leftover in state_dir.glob(".base-build-*"):
        shutil.rmtree(leftover)
    if not base.is_dir():
        build_dir = Path(tempfile.mkdtemp(prefix=".base-build-", dir=state_dir))
        build_dir.chmod(0o755)  # it becomes the hosts' "/", and mkdtemp made it 0700
        started = time.monotonic()
        try:
            _debootstrap(build_dir, state_dir / "debootstrap.log")
            _configure(build_dir, public_key)
        except BaseException:
            shutil.rmtree(build_dir, ignore_errors=True)
            raise
        build_dir.rename(base)
        log.info("built base rootfs %s in %.0f s", base.name, time.monotonic() - started)
    _remove_unused_bases(state_dir, keep=base)
    return base


def _debootstrap(root: Path, log_path: Path) -> None:
    log.info("building base rootfs with debootstrap (about a minute)")
    argv = [
        "debootstrap", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}",
        SUITE, str(root), MIRROR,
    ]
    with open(log_path, "w") as log_file:
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise TestbedError(f"debootstrap exited {result.returncode}; last lines of {log_path}:\n{tail(log_path)}")


def _chroot(root: Path, *argv: str, input: str | None = None) -> None:
    run(["chroot", root, *argv], input=input)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _configure(root: Path, public_key: str) -> None:
    # Empty, not a newline: nspawn fails on a lone newline ("Failed to read machine ID ... Invalid argument").
    _write(root / "etc/machine-id", "")
    (root / "etc/hostname").unlink(missing_ok=True)

    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    shutil.copy2(MACHINE_SOURCES, root / "etc/apt/sources.list.d" / MACHINE_SOURCES.name)
    # debootstrap's own lists would sit beside the machine's, one Packages file uncompressed, one not.
    for entry in (root / "var/lib/apt/lists").iterdir():
        if entry.is_file() and entry.name != "lock":
            entry.unlink()
    for entry in MACHINE_APT_LISTS.iterdir():
        if entry.is_file() and entry.name != "lock":
            shutil.copy2(entry, root / "var/lib/apt/lists" / entry.name)
    _write(root / "etc/apt/apt.conf.d/90testbed-keep-debs", APT_KEEP_DEBS)

    for cert in MACHINE_CA_DIR.glob("*.crt"):
        shutil.copy2(cert, root / "usr/local/share/ca-certificates" / cert.name)
    _chroot(root, "update-ca-certificates")

    _write(root / "etc/ssh/sshd_config.d/testbed.conf", SSHD_CONFIG)
    _write(root / "etc/systemd/system/ssh.service.d/host-keys.conf", SSH_UNIT_DROP_IN)
    for host_key in (root / "etc/ssh").glob("ssh_host_*"):
        host_key.unlink()
    run(["systemctl", f"--root={root}", "enable", "ssh.service"])

    _chroot(root, "useradd", "--create-home", "--shell", "/bin/bash", DEPLOY_USER)
    _chroot(root, "useradd", "--create-home", "--shell", "/bin/bash", "--groups", "sudo", PASSWORD_USER)
    _chroot(root, "chpasswd", input=f"{PASSWORD_USER}:{PASSWORD}\n")
    _write(root / f"etc/sudoers.d/{DEPLOY_USER}", f"{DEPLOY_USER} ALL=(ALL:ALL) NOPASSWD: ALL\n", 0o440)
    _chroot(root, "visudo", "--check", "--quiet")

    for user, home in (("root", "/root"), (DEPLOY_USER, f"/home/{DEPLOY_USER}"), (PASSWORD_USER, f"/home/{PASSWORD_USER}")):
        _write(root / home.lstrip("/") / ".ssh/authorized_keys", public_key, 0o600)
        (root / home.lstrip("/") / ".ssh").chmod(0o700)
        _chroot(root, "chown", "-R", f"{user}:{user}", f"{home}/.ssh")

    # Hosts see the shared download cache at /var/cache/apt/archives instead of these.
    for cache in [*root.glob("var/cache/apt/*.bin"), *root.glob("var/cache/apt/archives/*.deb")]:
        cache.unlink()


def _remove_unused_bases(state_dir: Path, keep: Path) -> None:
    mounts = Path("/proc/self/mountinfo").read_text()
    for base in state_dir.glob("base-*"):
        if base != keep and base.is_dir() and str(base) not in mounts:
            log.info("removing outdated base rootfs %s", base.name)
            shutil.rmtree(base)
