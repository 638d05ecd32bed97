"""One SSH connection per host; every remote command is a bash script run as root.

Connection and privilege problems become HostError with what to do, never a bare traceback.
"""

from __future__ import annotations

import io

import shlex
import socket
import threading
from pathlib import Path

import paramiko
from fabric import Config, Connection
from invoke.exceptions import AuthFailure

from tasks.inventory import Host

DEFAULT_CONNECT_TIMEOUT = 10
# A host that vanishes mid-command (power loss) is noticed within ~20 s instead of TCP's ~15 minutes.
KEEPALIVE_SECONDS = 5
DEAD_AFTER_MS = 15000
SUDO_PASSWORD_REQUIRED = "a password is required"


_known_hosts_lock = threading.Lock()


class AcceptNewHostKey(paramiko.MissingHostKeyPolicy):
    """OpenSSH's StrictHostKeyChecking=accept-new: remember a host seen for the first time; a changed key
    still fails (paramiko raises BadHostKeyException before any policy is asked)."""

    def __init__(self, path: Path):
        self.path = path

    def missing_host_key(self, client, hostname, key):
        with _known_hosts_lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            keys = paramiko.HostKeys(str(self.path)) if self.path.exists() else paramiko.HostKeys()
            keys.add(hostname, key.get_name(), key)
            keys.save(str(self.path))


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
    check_host_keys(connection, host)
    return connection


def check_host_keys(connection: Connection, host: Host) -> None:
    """Unlike Fabric's default (accept anything), know the host's key: from known_hosts, or learned once when
    accept_new_host_keys is set."""
    known_hosts = Path(host.known_hosts).expanduser()
    if known_hosts.exists():
        connection.client.load_host_keys(str(known_hosts))
    policy = AcceptNewHostKey(known_hosts) if host.accept_new_host_keys else paramiko.RejectPolicy()
    connection.client.set_missing_host_key_policy(policy)


class Remote:
    """A host reached over one SSH connection; counts the commands it runs."""

    def __init__(self, host: Host, config: Config):
        self.host = host
        self.connection = open_connection(host, config)
        self.commands_run = 0

    @property
    def target(self) -> str:
        c = self.connection
        return f"{c.user}@{c.host}:{c.port}"

    def connect(self) -> None:
        if self.connection.is_connected:
            return
        try:
            self.connection.open()
            self._detect_dead_peer()
        except paramiko.BadHostKeyException as error:
            raise HostError(
                "connect",
                f"the host key of {self.target} CHANGED (now {error.key.get_name()} {error.key.get_fingerprint().hex()}): "
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
        except paramiko.SSHException as error:
            if "not found in known_hosts" in str(error):
                raise HostError(
                    "connect",
                    f"{self.target} is not in {self.host.known_hosts}: check its key and add it "
                    f"(ssh-keyscan, or ssh once), or set accept_new_host_keys = true in hosts.toml to trust it on first use",
                    unreachable=True,
                ) from None
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
        try:
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

    def put(self, data, path: str) -> None:
        """Upload a file-like object by SFTP as the SSH user (root work on it goes through run_script)."""
        self.connect()
        try:
            self.connection.put(data, remote=path)
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise HostError("upload", f"SFTP upload of {path} to {self.target} failed: {error}", unreachable=isinstance(error, EOFError)) from None

    def put_private(self, data: bytes, path: str) -> None:
        """Upload a secret by SFTP into a file made 0600 before anything is written to it."""
        self.connect()
        try:
            with self.connection.sftp().open(path, "w") as remote_file:
                remote_file.chmod(0o600)
                remote_file.write(data)
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise HostError("upload", f"SFTP upload of {path} to {self.target} failed: {error}", unreachable=isinstance(error, EOFError)) from None

    def close(self) -> None:
        self.connection.close()
