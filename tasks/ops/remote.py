"""One SSH connection per host; every remote command is a bash script run as root.

Connection and privilege problems become HostError with what to do, never a bare traceback.
"""

from __future__ import annotations

import io
import secrets
import shlex
import socket
import stat
from contextlib import contextmanager, nullcontext
from pathlib import Path, PurePosixPath
from typing import Iterator

import paramiko
from fabric import Config, Connection
from invoke.exceptions import AuthFailure

from tasks.inventory import Host
from tasks.ops.known_hosts import HostKeyRefused, KnownHosts, KnownHostsPolicy, key_fingerprint
from tasks.ops.progress import activities

DEFAULT_CONNECT_TIMEOUT = 10
# A host that vanishes mid-command (power loss) is noticed within ~20 s instead of TCP's ~15 minutes.
KEEPALIVE_SECONDS = 5
DEAD_AFTER_MS = 15000
SUDO_PASSWORD_REQUIRED = "a password is required"
# Secrets and data cross between the laptop and root on a host only through a directory of this name: made fresh by
# SFTP mkdir for each transfer (0700, the SSH user's, refused when the name exists, like mktemp -d), removed after it.
PRIVATE_DIRECTORY = f"/tmp/mlflow-fab-{secrets.token_hex(8)}"
UPLOAD_CHUNK = 1 << 20


def private_path(name: str) -> str:
    """Where an upload lands on every host during this run (the directory exists only while it is used)."""
    return f"{PRIVATE_DIRECTORY}/{name}"


class HostError(Exception):
    """A failure on one host: names the step and what to do. Other hosts go on."""

    def __init__(self, step: str, message: str, unreachable: bool = False):
        super().__init__(f"{step}: {message}")
        self.step = step
        self.message = message
        self.unreachable = unreachable


def open_connection(host: Host, config: Config) -> Connection:
    connect_kwargs = {"key_filename": [str(Path(host.identity).expanduser())]} if host.identity else None
    if config.timeouts.connect is None:
        config.timeouts.connect = DEFAULT_CONNECT_TIMEOUT
    if host.ad_hoc:
        # Fabric parses user@address:port and applies ssh_config for aliases.
        user = None if "@" in host.name else host.user
        connection = Connection(host.name, user=user, connect_kwargs=connect_kwargs, config=config)
    else:
        connection = Connection(host.address, user=host.user, port=host.port, connect_kwargs=connect_kwargs, config=config)
    return connection


def check_host_keys(connection: Connection, host: Host, target: str) -> KnownHostsPolicy:
    """Unlike Fabric's default (accept anything), know the host's key: from known_hosts, or learned once when
    accept_new_host_keys is set."""
    path = Path(host.known_hosts).expanduser()
    try:
        known = KnownHosts.read(path)
    except OSError as error:
        raise HostError("connect", f"cannot read {host.known_hosts} ({error.strerror}): fix the file or known_hosts in hosts.toml",
                        unreachable=True) from None
    known.load_into(connection.client.get_host_keys())
    policy = KnownHostsPolicy(known, host.accept_new_host_keys, target, host.known_hosts)
    connection.client.set_missing_host_key_policy(policy)
    return policy


class Remote:
    """A host reached over one SSH connection; counts the commands it runs."""

    def __init__(self, host: Host, config: Config):
        self.host = host
        self.connection = open_connection(host, config)
        self.commands_run = 0
        self.abandoned = False

    @property
    def target(self) -> str:
        c = self.connection
        return f"{c.user}@{c.host}:{c.port}"

    def connect(self) -> None:
        if self.abandoned:
            raise HostError("deadline", f"gave up on {self.target} after its deadline: no further command is sent", unreachable=True)
        if self.connection.is_connected:
            return
        policy = check_host_keys(self.connection, self.host, self.target)
        try:
            self.connection.open()
            self._detect_dead_peer()
        except paramiko.BadHostKeyException as error:
            if policy.known.is_revoked(error.key):
                raise HostError("connect", policy.revoked_message(error.key), unreachable=True) from None
            raise HostError(
                "connect",
                f"the host key of {self.target} CHANGED (now {key_fingerprint(error.key)}): "
                f"refusing to connect. If the server was really reinstalled, remove the old key with "
                f"ssh-keygen -f {self.host.known_hosts} -R {self.connection.host} and connect again",
                unreachable=True,
            ) from None
        except paramiko.AuthenticationException:
            raise HostError(
                "connect",
                f"SSH login as {self.connection.user} was refused by {self.target}: "
                "check the key (-i, or identity in hosts.toml) and the user",
                unreachable=True,
            ) from None
        except socket.gaierror:
            raise HostError("connect", f"cannot resolve {self.connection.host}: check the address", unreachable=True) from None
        except (TimeoutError, socket.timeout):
            raise HostError(
                "connect",
                f"no answer from {self.target} within {self.connection.connect_timeout} s: is the host up and reachable?",
                unreachable=True,
            ) from None
        except (paramiko.ssh_exception.NoValidConnectionsError, ConnectionError, OSError) as error:
            raise HostError(
                "connect", f"cannot connect to {self.target} ({error}): is the host up, is sshd listening on that port?", unreachable=True
            ) from None
        except HostKeyRefused as error:
            raise HostError("connect", str(error), unreachable=True) from None
        except paramiko.SSHException as error:
            raise HostError("connect", f"SSH to {self.target} failed: {error}", unreachable=True) from None

    def _detect_dead_peer(self) -> None:
        transport = self.connection.client.get_transport()
        transport.set_keepalive(KEEPALIVE_SECONDS)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, DEAD_AFTER_MS)

    def run_script(self, script: str, step: str, out_stream=None, stdin: str | None = None):
        """Run a bash script as root (via sudo unless connected as root); return the invoke Result.

        stdin is how a secret reaches the host: a script is a command line, visible in `ps` there.
        """
        self.connect()
        command = "bash -c " + shlex.quote("exec 2>&1\ncd /\n" + script)
        in_stream = io.StringIO(stdin) if stdin is not None else False
        options = dict(warn=True, in_stream=in_stream, hide="stderr" if out_stream else True, out_stream=out_stream)
        self.commands_run += 1
        # A command whose output streams to the user already shows it is alive.
        watched = nullcontext() if getattr(out_stream, "shows_output", False) else activities.during(self.host.name, step)
        try:
            with watched:
                if not self.host.needs_sudo or self.connection.user == "root":
                    result = self.connection.run(command, **options)
                elif self.connection.config.sudo.password:
                    result = self.connection.sudo(command, **options)
                else:
                    result = self.connection.run("sudo -n -H " + command, **options)
        except AuthFailure:
            raise HostError(step, f"sudo on {self.target} refused the password given with --prompt-for-sudo-password") from None
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise HostError(step, f"connection to {self.target} lost: {error}", unreachable=True) from None
        if not self.connection.is_connected:
            raise HostError(step, f"connection to {self.target} lost while it ran: is the host down?", unreachable=True)
        if result.exited != 0 and SUDO_PASSWORD_REQUIRED in (result.stdout + result.stderr)[-500:]:
            raise HostError(
                step,
                f"sudo on {self.target} wants a password: rerun with --prompt-for-sudo-password, "
                f"or give {self.connection.user} NOPASSWD sudo",
            )
        return result

    @contextmanager
    def private_directory(self, path: str = PRIVATE_DIRECTORY) -> Iterator[str]:
        """A fresh directory only the SSH user can enter, removed with what it holds afterwards, also on failure."""
        self.connect()
        try:
            sftp = self.connection.sftp()
            sftp.mkdir(path, 0o700)
            made = sftp.lstat(path)
            if not stat.S_ISDIR(made.st_mode) or stat.S_IMODE(made.st_mode) != 0o700:
                raise OSError(f"it came out as {stat.filemode(made.st_mode)}")
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise HostError("upload", f"cannot make the private directory {path} on {self.target}: {error}",
                            unreachable=isinstance(error, EOFError)) from None
        try:
            yield path
        finally:
            self._remove_private_directory(sftp, path)

    def _remove_private_directory(self, sftp, path: str) -> None:
        if not self.connection.is_connected:
            return  # a host that went away keeps it, readable by no one but the SSH user
        try:
            for name in sftp.listdir(path):
                sftp.remove(f"{path}/{name}")
            sftp.rmdir(path)
        except (paramiko.SSHException, OSError, EOFError):
            pass

    @contextmanager
    def private_upload(self, data: bytes | Path, path: str) -> Iterator[str]:
        """Upload a secret or data (bytes, or a local file streamed) for root to use while the block runs: into a fresh
        private directory (PATH's parent), as a file made 0600 before any byte is written; both are gone afterwards."""
        with self.private_directory(str(PurePosixPath(path).parent)):
            try:
                with self.connection.sftp().open(path, "wx") as remote_file:
                    remote_file.chmod(0o600)
                    remote_file.set_pipelined(True)
                    size = data.stat().st_size if isinstance(data, Path) else len(data)
                    with data.open("rb") if isinstance(data, Path) else io.BytesIO(data) as local_file, activities.during(
                            self.host.name, f"upload {PurePosixPath(path).name}", total=size) as transfer:
                        while chunk := local_file.read(UPLOAD_CHUNK):
                            remote_file.write(chunk)
                            transfer.add(len(chunk))
            except (paramiko.SSHException, OSError, EOFError) as error:
                raise HostError("upload", f"SFTP upload of {path} to {self.target} failed: {error}", unreachable=isinstance(error, EOFError)) from None
            yield path

    def close(self) -> None:
        self.connection.close()

    def abandon(self) -> None:
        """Give up on this host after its deadline: the connection closes and the work still running here sends nothing more."""
        self.abandoned = True
        self.close()
