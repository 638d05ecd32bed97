"""The testbed as a whole: prepare once, start and stop hosts, tear everything down."""

import fcntl
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from . import network, rootfs
from .addresses import ADDRESSES, address_of
from .hosts import SHARED_CACHES, TestHost
from .prebaked import ensure_layer, packages_for
from .proc import TestbedError, missing_tools
from .ssh import ensure_key

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("/var/lib/mlflow-fab-testbed")
SERVICES_TIMEOUT = 120
REQUIRED_TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "iptables": "iptables",
    "iptables-restore": "iptables",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "getent": "libc-bin",
}


def check_requirements() -> None:
    """Raise TestbedError naming what is missing: root, or the tools (and the Debian packages that have them)."""
    if os.geteuid() != 0:
        raise TestbedError("the testbed needs root (it mounts overlays, creates network namespaces and boots containers)")
    missing = missing_tools(REQUIRED_TOOLS)
    if missing:
        packages = sorted({REQUIRED_TOOLS[tool] for tool in missing})
        raise TestbedError(f"missing tools: {', '.join(missing)}; install with: apt-get install {' '.join(packages)}")


class Testbed:
    """Throwaway Debian 12 servers on this machine; all state lives under `state_dir`."""

    def __init__(self, state_dir: str | Path | None = None):
        self.state_dir = Path(state_dir or os.environ.get("MLFAB_TESTBED_DIR") or DEFAULT_STATE_DIR)
        self.identity = self.state_dir / "keys" / "id_ed25519"
        self.wrong_identity = self.state_dir / "keys" / "wrong_ed25519"
        self._base: Path | None = None

    @contextmanager
    def _locked(self):
        """Serialise prepare and teardown across threads and processes sharing this state dir."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            yield

    def prepare(self) -> None:
        """Make keys, the base rootfs (cached) and the network ready. Idempotent."""
        check_requirements()
        with self._locked():
            ensure_key(self.identity, "mlflow-fab-testbed")
            ensure_key(self.wrong_identity, "mlflow-fab-testbed-authorised-nowhere")
            public_key = self.identity.with_suffix(".pub").read_text()
            self._base = rootfs.ensure_base(self.state_dir, public_key)
            for cache in SHARED_CACHES:
                (self.state_dir / "cache" / cache).mkdir(parents=True, exist_ok=True)
            network.prepare_network(self.state_dir)

    def host(self, name: str) -> TestHost:
        """The host called `name`, running or not (raises ValueError for an unknown name)."""
        address_of(name)
        return TestHost(name, self.state_dir, self.identity)

    def start(self, name: str, fresh: bool = True, prebaked: tuple[str, ...] = ()) -> TestHost:
        """Boot `name` and return it once SSH takes the deploy key.

        fresh=True (the default) wipes any earlier disk of that name; fresh=False boots from it, like a reboot.
        prebaked: roles (tests/testbed/prebaked.py) whose Debian packages the host has installed already; none by default,
        so a host is a bare Debian server unless its tests are not about installing.
        """
        host = self.host(name)
        if self._base is None:
            self.prepare()
        lowers = [self.package_layer(packages_for(prebaked)), self._base] if prebaked else [self._base]
        try:
            host.boot(lowers, fresh=fresh)
        except TestbedError as error:
            # Seen once on a loaded machine: a unit of the boot failed and logins stayed closed. Boot once more.
            log.warning("%s; booting %s once more", str(error).splitlines()[0], name)
            host.boot(lowers, fresh=fresh)
        if prebaked:
            # as after `apt-get install`, the packages' services run before anything uses them
            host.run("systemctl is-system-running --wait", check=False, timeout=SERVICES_TIMEOUT)
        return host

    def package_layer(self, packages: list[str]) -> Path:
        """The cached layer with these Debian packages installed over the base (built once per machine and input)."""
        with self._locked():
            return ensure_layer(self.state_dir, self._base, packages)

    def known_hosts(self) -> list[TestHost]:
        hosts_dir = self.state_dir / "hosts"
        names = sorted(entry.name for entry in hosts_dir.iterdir()) if hosts_dir.is_dir() else []
        return [self.host(name) for name in names if name in ADDRESSES]

    def running_hosts(self) -> list[TestHost]:
        return [host for host in self.known_hosts() if host.is_running()]

    def stop_all(self) -> None:
        """Stop every host of this state dir that runs or left mounts, namespaces or pid files behind."""
        to_stop = [host for host in self.known_hosts() if host.is_running() or host.has_leftovers()]
        with ThreadPoolExecutor(max_workers=max(1, len(to_stop))) as pool:
            list(pool.map(TestHost.stop, to_stop))

    def teardown(self) -> None:
        """stop_all, then remove the bridge and our iptables rules and restore ip_forward."""
        self.stop_all()
        with self._locked():
            network.teardown_network(self.state_dir)
        self._base = None

    def network_prepared(self) -> bool:
        return network.network_prepared()

