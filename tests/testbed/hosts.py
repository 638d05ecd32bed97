"""One test host: an overlay root on the base, a network namespace, and systemd-nspawn booting it."""

import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from . import cgroups, network, proc
from .addresses import address_of, hosts_file
from .proc import TestbedError
from .ssh import accepts_key, ssh_argv

log = logging.getLogger(__name__)

SSH_READY_TIMEOUT = 30
CLEAN_STOP_TIMEOUT = 30
KILL_TIMEOUT = 10
# Per-host overlays over one shared cache each: a shared read-write bind fights over apt's lock.
# pip's is where the deploys' unprivileged build user keeps it (tasks.ops.pyenv.PIP_CACHE).
SHARED_CACHES = {"apt-archives": "/var/cache/apt/archives", "pip": "/var/cache/mlflow-build/pip"}
# Popen objects of the nspawn processes this Python process started: dropping one while it runs warns.
_started_here: dict[int, subprocess.Popen] = {}


class RemoteCommandError(subprocess.CalledProcessError):
    """A command on a host failed; unlike its base class, the message shows what the command printed."""

    def __init__(self, host: str, command: str, result: subprocess.CompletedProcess):
        super().__init__(result.returncode, result.args, result.stdout, result.stderr)
        self.host, self.command = host, command

    def __str__(self) -> str:
        output = (self.stderr or self.stdout or "").strip()[-2000:]
        return f"on {self.host}: `{self.command}` exited {self.returncode}\n{output}"


class TestHost:
    """A throwaway Debian 12 server with systemd as PID 1, reachable over SSH at a fixed address."""

    user = "deploy"
    port = 22

    def __init__(self, name: str, state_dir: Path, identity: Path):
        self.name = name
        self.address = address_of(name)
        self.identity = identity
        self.state_dir = state_dir
        self.dir = state_dir / "hosts" / name
        self.root = self.dir / "root"
        self.log_path = self.dir / "nspawn.log"
        self.pid_path = self.dir / "nspawn.pid"

    def __repr__(self) -> str:
        return f"TestHost({self.name!r}, {self.address!r}, {'running' if self.is_running() else 'stopped'})"

    # ---- using a running host ------------------------------------------------------------------

    def ssh_argv(self, user: str = "root") -> list[str]:
        """The ssh command line for this host, ready for a remote command to be appended."""
        return ssh_argv(user, self.address, self.port, self.identity)

    def run(self, command: str, check: bool = True, timeout: float | None = None,
            user: str = "root", input: str | None = None) -> subprocess.CompletedProcess:
        """Run a shell command on the host over SSH (as root unless `user` says otherwise)."""
        stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        result = subprocess.run(self.ssh_argv(user) + [command], capture_output=True, text=True,
                                timeout=timeout, **stdin)
        if check and result.returncode != 0:
            raise RemoteCommandError(self.name, command, result)
        return result

    # ---- state --------------------------------------------------------------------------------

    def nspawn_pid(self) -> int | None:
        """The PID of this host's systemd-nspawn if it is alive (a reused PID has another start time)."""
        try:
            pid_text, started = self.pid_path.read_text().split()
            pid = int(pid_text)
        except (FileNotFoundError, ValueError):
            return None
        # Not /proc/PID/cmdline: it reads back empty for a moment while nspawn sets up its child.
        if proc.is_running(pid) and proc.start_time(pid) == started:
            return pid
        return None

    def is_running(self) -> bool:
        return self.nspawn_pid() is not None

    def has_leftovers(self) -> bool:
        return self.pid_path.exists() or self._root_mounted() or network.namespace_exists(self.name)

    def _root_mounted(self) -> bool:
        return os.path.ismount(self.root)

    # ---- lifecycle ----------------------------------------------------------------------------

    def boot(self, lowers: list[Path], fresh: bool = True) -> None:
        """Boot the host on these read-only layers, topmost first (wiping its disk unless fresh=False, which boots
        on the layers it was created on), and return once SSH takes the deploy key."""
        if self.is_running():
            self.stop()
        self._clean_up()
        if fresh and self.dir.exists():
            shutil.rmtree(self.dir)
        started = time.monotonic()
        for sub in ("upper", "work", "root", *(f"{cache}-upper" for cache in SHARED_CACHES)):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "upper").chmod(0o755)  # the overlay's "/" takes its mode, whatever our umask was
        lowers_path = self.dir / "lowers"
        if fresh or not lowers_path.exists():
            lowers_path.write_text(":".join(map(str, lowers)) + "\n")
        proc.run(["mount", "-t", "overlay", f"mlflow-fab-testbed-{self.name}", self.root, "-o",
                  f"lowerdir={lowers_path.read_text().strip()},upperdir={self.dir / 'upper'},workdir={self.dir / 'work'}"])
        (self.root / "etc/hostname").write_text(f"{self.name}\n")
        # written at each boot, not baked into the base: a new test host name rebuilds nothing
        (self.root / "etc/hosts").write_text(hosts_file())
        for target in SHARED_CACHES.values():
            (self.root / target.lstrip("/")).mkdir(parents=True, exist_ok=True)  # nspawn's --overlay needs it
        network.create_host_network(self.name, self.address)
        self._start_nspawn()
        self._wait_for_ssh()
        log.info("%s (%s) accepts SSH after %.1f s", self.name, self.address, time.monotonic() - started)

    def _nspawn_argv(self) -> list[str]:
        argv = [
            "systemd-nspawn", "--boot", f"--directory={self.root}", f"--machine={self.name}",
            "--register=no", "--keep-unit", f"--network-namespace-path=/run/netns/{self.name}",
            "--console=read-only", "--resolv-conf=copy-host",
            # as on a server, root may set the host's firewall (nftables): it acts on this host's own network namespace
            "--capability=CAP_NET_ADMIN",
        ]
        for cache, target in SHARED_CACHES.items():
            argv.append(f"--overlay={self.state_dir / 'cache' / cache}:{self.dir / f'{cache}-upper'}:{target}")
        return argv

    def _start_nspawn(self) -> None:
        env = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
        # the shell moves itself into the host's own cgroup, then becomes nspawn (same PID)
        argv = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroups.prepare(self.name)), *self._nspawn_argv()]
        with open(self.log_path, "w") as log_file:
            process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                       stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        _started_here[process.pid] = process
        self.pid_path.write_text(f"{process.pid} {proc.start_time(process.pid)}\n")

    def _wait_for_ssh(self) -> None:
        def ready_or_dead():
            if not self.is_running():
                return "dead"
            return accepts_key(self.user, self.address, self.port, self.identity) and "ready"

        outcome = proc.wait_until(ready_or_dead, SSH_READY_TIMEOUT, interval=0.2)
        if outcome == "ready":
            return
        problem = "systemd-nspawn exited" if outcome == "dead" else f"no SSH login within {SSH_READY_TIMEOUT} s"
        self.poweroff_hard()
        raise TestbedError(f"host {self.name} ({self.address}) did not come up: {problem}. "
                           f"Last lines of {self.log_path}:\n{proc.tail(self.log_path)}")

    def stop(self) -> None:
        """Shut the host down cleanly (as `poweroff` would), clean up, and keep its downloads in the shared caches."""
        started = time.monotonic()
        pid = self.nspawn_pid()
        if pid is not None:
            for init in proc.children(pid):
                proc.send_signal(init, signal.SIGRTMIN + 3)  # systemd's "halt" request
            if not proc.wait_until(lambda: not proc.is_running(pid), CLEAN_STOP_TIMEOUT):
                log.warning("%s did not shut down within %d s; killing it", self.name, CLEAN_STOP_TIMEOUT)
                self._kill(pid)
        self._clean_up()
        self._harvest_caches()
        if pid is not None:
            _forget(pid)
            log.info("%s stopped in %.1f s", self.name, time.monotonic() - started)

    def poweroff_hard(self) -> None:
        """Simulate power loss: kill the whole container at once, then release its mounts and network.

        The disk (the overlay upper) is kept; boot(fresh=False) starts from it like a reboot.
        """
        pid = self.nspawn_pid()
        if pid is not None:
            self._kill(pid)
            _forget(pid)
        self._clean_up()

    def _kill(self, pid: int) -> None:
        proc.kill_tree(pid)
        if not proc.wait_until(lambda: not proc.is_running(pid), KILL_TIMEOUT):
            raise TestbedError(f"systemd-nspawn of {self.name} (pid {pid}) survived SIGKILL for {KILL_TIMEOUT} s")

    def _clean_up(self) -> None:
        if self._root_mounted():
            # The container's last processes may still hold the mount for a moment after nspawn exits.
            if not proc.wait_until(lambda: proc.run(["umount", self.root], check=False).returncode == 0, 10):
                proc.run(["umount", self.root])
        network.delete_host_network(self.name, self.address)
        shutil.rmtree(Path("/run/systemd/nspawn/propagate") / self.name, ignore_errors=True)
        cgroups.remove(self.name)
        self.pid_path.unlink(missing_ok=True)

    def _harvest_caches(self) -> None:
        for cache in SHARED_CACHES:
            harvest(self.dir / f"{cache}-upper", self.state_dir / "cache" / cache)


def _forget(pid: int) -> None:
    process = _started_here.pop(pid, None)
    if process is not None:
        process.wait()


def harvest(upper: Path, shared: Path) -> None:
    """Copy complete files that a host added to a cache into the shared cache (no overwrites)."""
    if not upper.is_dir():
        return
    for source in upper.rglob("*"):
        relative = source.relative_to(upper)
        if any(part == "partial" or part == "lock" or part.endswith((".lock", ".tmp")) for part in relative.parts):
            continue
        # Overlay whiteouts are character devices, and directories get created as needed.
        if source.is_symlink() or not source.is_file():
            continue
        target = shared / relative
        if target.exists():
            continue
        _open_directories(shared, relative.parent)
        staging = target.with_name(f".{target.name}.{upper.parent.name}.harvest")
        shutil.copy2(source, staging)
        staging.chmod(0o644)  # pip writes its cache 0600: the build user of every other host must read it
        os.replace(staging, target)


def _open_directories(shared: Path, relative: Path) -> None:
    """Make the shared cache's directories writable by any user of the hosts: their build user adds files too."""
    directory = shared
    for part in relative.parts:
        directory = directory / part
        if not directory.is_dir():
            directory.mkdir(exist_ok=True)  # hosts stopped in parallel harvest at once
            directory.chmod(0o777)
