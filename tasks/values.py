"""What a value from hosts.toml or the command line may look like, checked before any host is contacted.

These values end up in shell scripts, systemd units and nginx configs on the hosts: each check
restricts a value to what its kind needs. Each raises ValueError with a phrase saying what the value
must be; the caller adds where the value came from.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

# The first MLflow that reads the admin password from MLFLOW_AUTH_ADMIN_PASSWORD: older ones read it only from
# basic_auth.ini (KeyError 'admin_password' without it), where this suite keeps no secret.
OLDEST_MLFLOW = "3.16.1"
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
WILDCARD_LABEL = re.compile(r"[A-Za-z0-9*]([A-Za-z0-9*-]{0,61}[A-Za-z0-9*])?")
USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
PATH_PART = re.compile(r"[A-Za-z0-9._@+-]+")
# control characters, invisible format characters (bidi overrides...), line and paragraph separators
UNPRINTABLE = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}


def check_printable(text: str) -> None:
    bad = next((char for char in text if unicodedata.category(char) in UNPRINTABLE), None)
    if bad is not None:
        raise ValueError(f"must not contain control characters or line breaks (found {bad!r})")


def check_model_name(name: str) -> None:
    if not MODEL_NAME.fullmatch(name):
        raise ValueError("must be 1 to 64 letters, digits, '-' and '_', starting with a letter or digit (it names a directory and a systemd unit)")


def check_host_name(name: str) -> None:
    """An inventory host's own name: it goes into certificates and the server's allowed Host headers."""
    if not HOST_NAME.fullmatch(name):
        raise ValueError("must be letters, digits, '.', '-' and '_', starting with a letter or digit")


def address_port(address: str, port: int) -> str:
    """ADDRESS:PORT as URLs, nginx's logs and Prometheus write it: an IPv6 address in brackets."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def check_address(address: str) -> None:
    if "%" not in address:
        try:
            ipaddress.ip_address(address)
            return
        except ValueError:
            pass
    if len(address) > 253 or not all(HOST_LABEL.fullmatch(label) for label in address.split(".")):
        raise ValueError("must be a host name (letters, digits, '-' and '_' between dots) or an IP address")


def check_user_name(name: str) -> None:
    if not USER_NAME.fullmatch(name):
        raise ValueError("must be a user name: up to 32 letters, digits, '_', '.', '-', not starting with a digit, '.' or '-'")


def check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ValueError("must be a positive number up to 65535")


def check_remote_path(path: str) -> None:
    """An absolute, normalized path on a host, in characters that need no quoting in a unit file or a script."""
    if not path.startswith("/") or path == "/":
        raise ValueError("must be an absolute path below /")
    parts = path[1:].split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError("must be normalized: no trailing slash, '//', '.' or '..'")
    if not all(PATH_PART.fullmatch(part) for part in parts):
        raise ValueError("may only use letters, digits and . _ @ + - between slashes (it lands in unit files and scripts)")


S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def check_artifacts(location: str) -> None:
    """Where the tracking server keeps artifacts: a path on the host, or s3://BUCKET[/PREFIX]."""
    if not location.startswith("s3://"):
        check_remote_path(location)
        return
    bucket, _, prefix = location[len("s3://"):].partition("/")
    if not S3_BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError("must be s3://BUCKET[/PREFIX], BUCKET an S3 bucket name (3 to 63 lowercase letters, digits, '.' and '-')")
    if prefix and not all(PATH_PART.fullmatch(part) for part in prefix.split("/")):
        raise ValueError("must be s3://BUCKET[/PREFIX], PREFIX letters, digits and . _ @ + - between slashes, no empty part")
    if any(part in (".", "..") for part in prefix.split("/")):
        raise ValueError("must be s3://BUCKET[/PREFIX] without '.' or '..' in PREFIX")


def check_endpoint_url(url: str) -> None:
    """An S3-compatible store's endpoint: http(s)://HOST[:PORT], nothing else (no user, path or query)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise ValueError("must be http(s)://HOST[:PORT] with a port from 1 to 65535") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password \
            or parts.path not in ("", "/") or parts.query or parts.fragment or port == 0:
        raise ValueError("must be http(s)://HOST[:PORT]: no user, path, query or fragment")
    check_address(parts.hostname)


def check_allowed_host(entry: str) -> None:
    """A Host header MLflow accepts: HOST or HOST:PORT; HOST may use MLflow's * wildcards or be an [IPv6] address."""
    host, port = entry, ""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError("must be HOST or HOST:PORT")
        port = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("must hold an IPv6 address between [ and ]") from None
    else:
        if entry.count(":") == 1:
            host, port = entry.split(":")
        if not all(WILDCARD_LABEL.fullmatch(label) for label in host.split(".")):
            raise ValueError("must be HOST or HOST:PORT, HOST a name (may use * wildcards) or an IP address")
    if ":" in entry and not (port == "*" or (port.isdigit() and 1 <= int(port) <= 65535)):
        raise ValueError("must end in a port (1 to 65535, or *) after ':'")


def check_version(text: str) -> None:
    from packaging.version import InvalidVersion, Version  # not at import: `fab -l` lists without it

    try:
        Version(text)
    except InvalidVersion:
        raise ValueError('must be a version, like "3.17.2"') from None
    if text != text.strip():
        raise ValueError('must be a version without spaces, like "3.17.2"')


def check_mlflow_version(text: str) -> None:
    from packaging.version import Version

    check_version(text)
    if Version(text) < Version(OLDEST_MLFLOW):
        raise ValueError(f'must be {OLDEST_MLFLOW} or newer: older MLflow reads the admin password only from basic_auth.ini, '
                         f'and the tracking server would crash-loop with sign-in on (the oldest that works is "{OLDEST_MLFLOW}")')


PROMETHEUS_DURATION = re.compile(r"([0-9]+(ms|s|m|h|d|w|y))+")


def check_duration(text: str) -> None:
    """A Prometheus duration: 15s, 1m30s, 15d."""
    if not PROMETHEUS_DURATION.fullmatch(text):
        raise ValueError("must be a duration such as 15s, 1m30s or 15d (units ms, s, m, h, d, w, y)")
