"""known_hosts as OpenSSH writes it, read and appended for paramiko.

paramiko 5.1 skips every line it can't parse without a word, marker lines included: a key marked
`@revoked` that also has a plain line would be trusted, and a host known only through
`@cert-authority` looks merely unknown. Its HostKeys.save rewrites the whole file and drops those
lines. Here the markers are honoured (or the host is refused, saying why) and a learned key is
appended, every other byte of the file kept.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

REVOKED = "@revoked"
CERT_AUTHORITY = "@cert-authority"
HASHED = "|1|"


class HostKeyRefused(paramiko.SSHException):
    """The host's key is not trusted; the message says why and what to do."""


def key_fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's form, as `ssh-keygen -lf` prints it."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


def host_matches(patterns: str, hostname: str) -> bool:
    """OpenSSH's host field: one hashed name, or comma-separated globs (* and ?) where a matching !glob wins."""
    if patterns.startswith(HASHED):
        return paramiko.HostKeys.hash_host(hostname, patterns) == patterns
    matched = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        glob = re.escape(pattern.removeprefix("!")).replace(r"\*", ".*").replace(r"\?", ".")
        if re.fullmatch(glob, hostname, re.IGNORECASE):
            if negated:
                return False
            matched = True
    return matched


def key_blob(field_text: str) -> bytes:
    try:
        return base64.b64decode(field_text, validate=True)
    except (binascii.Error, ValueError):
        return b""


@dataclass
class KnownHosts:
    """What a known_hosts file says: keys paramiko can use, revoked keys, and certificate authorities' host patterns."""

    path: Path
    entries: list[tuple[list[str], paramiko.PKey]] = field(default_factory=list)
    revoked: set[bytes] = field(default_factory=set)
    authorities: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, path: Path, text: str) -> "KnownHosts":
        known = cls(path)
        for line in text.splitlines():
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if fields[0] == REVOKED and len(fields) >= 4:
                known.revoked.add(key_blob(fields[3]))
            elif fields[0] == CERT_AUTHORITY and len(fields) >= 2:
                known.authorities.append(fields[1])
            elif not fields[0].startswith("@"):
                entry = parse_entry(" ".join(fields[:3]))
                if entry is not None:
                    known.entries.append((entry.hostnames, entry.key))
        known.revoked.discard(b"")
        return known

    @classmethod
    def read(cls, path: Path) -> "KnownHosts":
        """The file's contents; an absent file knows no host. OSError when it can't be read."""
        if not path.exists():
            return cls(path)
        return cls.parse(path, path.read_bytes().decode("utf-8", errors="replace"))

    def is_revoked(self, key: paramiko.PKey) -> bool:
        # Revoked for every host, whatever the line's host field says: a revoked key is compromised everywhere.
        return key.asbytes() in self.revoked

    def knows(self, hostname: str, key: paramiko.PKey) -> bool:
        return any(key.asbytes() == known.asbytes() and any(host_matches(name, hostname) for name in names) for names, known in self.entries)

    def has_authority_for(self, hostname: str) -> bool:
        return any(host_matches(patterns, hostname) for patterns in self.authorities)

    def load_into(self, keys: paramiko.HostKeys) -> None:
        """The keys paramiko checks a server against, without revoked ones; the first line for a host and key type wins."""
        for names, key in self.entries:
            if self.is_revoked(key):
                continue
            for name in names:
                if key.get_name() not in (keys.lookup(name) or {}):
                    keys.add(name, key.get_name(), key)


def parse_entry(line: str) -> paramiko.hostkeys.HostKeyEntry | None:
    """A plain or hashed line as paramiko reads it; None for what it can't read (kept in the file, ignored like OpenSSH does)."""
    try:
        return paramiko.hostkeys.HostKeyEntry.from_line(line)
    except Exception:  # paramiko's key parsers raise many kinds (SSHException, ValueError, struct.error) on bad data
        return None


def append_host_key(path: Path, hostname: str, key: paramiko.PKey) -> None:
    """Add `hostname type key` with one O_APPEND write under an exclusive lock (threads and other fab processes alike),
    unless the key is already there. Every byte already in the file stays as it was."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        text = os.pread(fd, size, 0).decode("utf-8", errors="replace")
        if KnownHosts.parse(path, text).knows(hostname, key):
            return
        separator = "\n" if text and not text.endswith("\n") else ""
        os.write(fd, f"{separator}{hostname} {key.get_name()} {key.get_base64()}\n".encode())
    finally:
        os.close(fd)


class KnownHostsPolicy(paramiko.MissingHostKeyPolicy):
    """Asked by paramiko when the server's key is not among host_keys(): refuse, saying why, or learn it
    (OpenSSH's StrictHostKeyChecking=accept-new). A changed key never gets here: paramiko raises
    BadHostKeyException first."""

    def __init__(self, known: KnownHosts, accept_new: bool, target: str, shown_path: str):
        self.known = known
        self.accept_new = accept_new
        self.target = target
        self.shown_path = shown_path

    def missing_host_key(self, client, hostname, key):
        if self.known.is_revoked(key):
            raise HostKeyRefused(self.revoked_message(key))
        if self.known.has_authority_for(hostname):
            raise HostKeyRefused(
                f"{self.target} is trusted in {self.shown_path} only through a @cert-authority line, and host certificates "
                f"can't be checked here (paramiko verifies plain host keys only): add the host's own key "
                f"(ssh-keyscan {hostname_for_keyscan(hostname)}; it offers {key_fingerprint(key)}: compare with "
                f"`ssh-keygen -lf` of the server's /etc/ssh/ssh_host_*_key.pub) and connect again"
            )
        if not self.accept_new:
            raise HostKeyRefused(
                f"{self.target} is not in {self.shown_path}: check its key and add it "
                f"(ssh-keyscan, or ssh once), or set accept_new_host_keys = true in hosts.toml to trust it on first use"
            )
        append_host_key(self.known.path, hostname, key)

    def revoked_message(self, key: paramiko.PKey) -> str:
        return (
            f"the host key of {self.target} ({key_fingerprint(key)}) is marked @revoked in {self.shown_path}: refusing to connect. "
            f"Give the server a new host key and add that one, or remove the @revoked line if it was revoked by mistake"
        )


def hostname_for_keyscan(hostname: str) -> str:
    """paramiko names a host on another port `[address]:port`; ssh-keyscan wants `-p port address`."""
    match = re.fullmatch(r"\[(.+)\]:(\d+)", hostname)
    return f"-p {match.group(2)} {match.group(1)}" if match else hostname
