"""Prebaked package layers: the Debian packages our tasks install, already installed over the base rootfs.

A host that opts in boots from `layer:base` and skips the apt installs that are not what its tests are about.
A layer holds exactly what `apt-get install --no-install-recommends` of the role's packages leaves on a server
(the package's own state, e.g. PostgreSQL's default cluster, and its services enabled), never anything of ours.
"""

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .hosts import harvest
from .proc import TestbedError, run, tail

log = logging.getLogger(__name__)

# Debian's switch for "install, but start no service now" (as in chroots and image builds); removed again after.
POLICY_RC_D = "#!/bin/sh\nexit 101\n"
# What the build leaves that no host may inherit: nspawn's copy of resolv.conf, a hostname, the no-start switch.
NOT_PREBAKED = ("etc/resolv.conf", "etc/hostname", "usr/sbin/policy-rc.d")
BUILD_TIMEOUT = 900


def role_packages() -> dict[str, list[str]]:
    """The Debian packages each role's tasks install whatever the settings (TLS, sign-in and the firewall add more,
    which those tasks install themselves): the one place the testbed reads them from tasks/."""
    from tasks.serving.balancer import BALANCER_PACKAGES
    from tasks.serving.deploy import MODEL_PACKAGES
    from tasks.tracking.database import DATABASE_PACKAGES
    from tasks.tracking.server import REPLICA_PACKAGES, TRACKING_PACKAGES
    from tasks.training.run import TRAINING_PACKAGES

    return {"tracking": TRACKING_PACKAGES, "lb": BALANCER_PACKAGES, "models": MODEL_PACKAGES, "training": TRAINING_PACKAGES,
            "db": DATABASE_PACKAGES, "replica": REPLICA_PACKAGES}


def packages_for(roles: tuple[str, ...]) -> list[str]:
    """The packages of these roles, sorted, each once; an unknown role is a mistake in a test module."""
    known = role_packages()
    unknown = [role for role in roles if role not in known]
    if unknown:
        raise ValueError(f"no prebaked packages for role {', '.join(unknown)}; known roles: {', '.join(known)}")
    return sorted({package for role in roles for package in known[role]})


def layer_key(base: Path, packages: list[str]) -> str:
    """`<base>-<this code>-<packages>`: a change to any of them builds a new layer."""
    def digest(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    return f"{base.name}-{digest(Path(__file__).read_text())}-{digest(' '.join(packages))}"


def ensure_layer(state_dir: Path, base: Path, packages: list[str]) -> Path:
    """The cached layer with these packages over this base, built first if needed. Call under the state-dir lock."""
    layer = state_dir / f"layer-{layer_key(base, packages)}"
    for leftover in state_dir.glob(".layer-build-*"):
        _unmount(leftover / "root")
        shutil.rmtree(leftover)
    if not layer.is_dir():
        build_dir = Path(tempfile.mkdtemp(prefix=".layer-build-", dir=state_dir))
        started = time.monotonic()
        try:
            _build(build_dir, state_dir, base, packages)
        except BaseException:
            _unmount(build_dir / "root")
            shutil.rmtree(build_dir, ignore_errors=True)
            raise
        (build_dir / "upper").rename(layer)
        shutil.rmtree(build_dir)
        log.info("built package layer %s (%s) in %.0f s", layer.name, " ".join(packages), time.monotonic() - started)
    _remove_outdated_layers(state_dir, current=layer.name.rsplit("-", 1)[0])
    return layer


def _build(build_dir: Path, state_dir: Path, base: Path, packages: list[str]) -> None:
    upper, work, root, apt_upper = (build_dir / sub for sub in ("upper", "work", "root", "apt-upper"))
    for directory in (upper, work, root, apt_upper):
        directory.mkdir()
    upper.chmod(0o755)  # the overlay's "/" takes its mode, and mkdtemp made its parent 0700
    run(["mount", "-t", "overlay", "mlflow-fab-testbed-layer", root, "-o", f"lowerdir={base},upperdir={upper},workdir={work}"])
    try:
        (root / "usr/sbin/policy-rc.d").write_text(POLICY_RC_D)
        (root / "usr/sbin/policy-rc.d").chmod(0o755)
        log.info("building a package layer: apt-get install %s", " ".join(packages))
        _install(root, state_dir / "cache" / "apt-archives", apt_upper, packages, build_dir / "apt.log")
    finally:
        _unmount(root)
    # Out of the upper, not through the overlay: that would leave whiteouts hiding the base's own files.
    for leftover in [*(upper / path for path in NOT_PREBAKED), *upper.glob("var/cache/apt/*.bin")]:
        leftover.unlink(missing_ok=True)
    harvest(apt_upper, state_dir / "cache" / "apt-archives")


def _install(root: Path, apt_cache: Path, apt_upper: Path, packages: list[str], log_path: Path) -> None:
    # systemd-nspawn without --boot: a container with /proc, /dev and /sys for the maintainer scripts, no init
    argv = [
        "systemd-nspawn", "--quiet", f"--directory={root}", "--register=no", "--keep-unit", "--resolv-conf=copy-host",
        f"--overlay={apt_cache}:{apt_upper}:/var/cache/apt/archives",
        "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q", "--no-install-recommends", *packages,
    ]
    with open(log_path, "w") as log_file:
        try:
            result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                    timeout=BUILD_TIMEOUT, env={**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"})
        except subprocess.TimeoutExpired:
            raise TestbedError(f"apt-get install {' '.join(packages)} for a package layer took over {BUILD_TIMEOUT} s") from None
    if result.returncode != 0:
        raise TestbedError(f"apt-get install {' '.join(packages)} for a package layer exited {result.returncode}:\n{tail(log_path)}")


def _unmount(root: Path) -> None:
    if os.path.ismount(root):
        run(["umount", root])


def _remove_outdated_layers(state_dir: Path, current: str) -> None:
    """Layers built by other code or on another base, unless a host still runs on one."""
    mounts = Path("/proc/self/mountinfo").read_text()
    for layer in state_dir.glob("layer-*"):
        if not layer.name.startswith(f"{current}-") and layer.is_dir() and str(layer) not in mounts:
            log.info("removing the outdated package layer %s", layer.name)
            shutil.rmtree(layer)
