"""Secrets the user keeps in files on this machine for a team-scale tracking service: the external database's URL and
the S3 credentials. Read when a task needs them, checked before any host is touched, never printed.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tasks.values import address_port, check_address

SSL_MODES = ("require", "verify-ca", "verify-full")
DATABASE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
ROLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION")
S3_REQUIRED = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
PASSWORD = re.compile(r"[!#-&(-\[\]-~]{1,1024}")  # printable ASCII but space, quotes and backslash
S3_VALUE = re.compile(r"[A-Za-z0-9/+=._-]{1,2048}")


class SecretFileError(Exception):
    """A secrets file that can't be used; the message names the file and what to do, never the secret."""


@dataclass(frozen=True)
class DatabaseUrl:
    """A PostgreSQL server we create nothing on: where it is, who signs in, and the password (kept out of repr)."""

    user: str
    host: str
    port: int
    database: str
    sslmode: str
    password: str = field(repr=False)

    def url(self) -> str:
        """For SQLAlchemy, without the password: libpq takes it from PGPASSWORD in the server's environment."""
        return f"postgresql+psycopg2://{self.user}@{address_port(self.host, self.port)}/{self.database}?sslmode={self.sslmode}"


def read_private(path: Path, what: str) -> str:
    """The file's text, refused when other users of this machine may read it."""
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as error:
        raise SecretFileError(f"{what} {path}: cannot read it ({error.strerror or error})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretFileError(f"{what} {path}: other users of this machine may read it: chmod 600 {path}")
    return text


def read_database_url(path: Path) -> DatabaseUrl:
    """postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE[?sslmode=require|verify-ca|verify-full], alone in the file."""
    what = "database_url_file"
    lines = [line.strip() for line in read_private(path, what).splitlines() if line.strip() and not line.lstrip().startswith("#")]
    usage = "it must hold one line postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE[?sslmode=require]"
    if len(lines) != 1:
        raise SecretFileError(f"{what} {path}: {usage}")
    parts = urlsplit(lines[0])
    try:
        port = parts.port or 5432
    except ValueError:
        raise SecretFileError(f"{what} {path}: the port is not a number from 1 to 65535") from None
    if parts.scheme not in ("postgresql", "postgres", "postgresql+psycopg2") or not parts.hostname or not parts.password:
        raise SecretFileError(f"{what} {path}: {usage}")
    user, database = unquote(parts.username or ""), parts.path.lstrip("/")
    if not ROLE_NAME.fullmatch(user):
        raise SecretFileError(f"{what} {path}: the user must be letters, digits and '_' (a PostgreSQL role name)")
    if not DATABASE_NAME.fullmatch(database):
        raise SecretFileError(f"{what} {path}: the database must be letters, digits and '_' after the host")
    try:
        check_address(parts.hostname)
    except ValueError as error:
        raise SecretFileError(f"{what} {path}: the host {error}") from None
    query = dict(item.partition("=")[::2] for item in parts.query.split("&") if item)
    unknown = sorted(set(query) - {"sslmode"})
    if unknown or query.get("sslmode", "require") not in SSL_MODES:
        raise SecretFileError(f"{what} {path}: the only option taken is sslmode, one of {', '.join(SSL_MODES)} "
                              f"(the connection leaves the host: it must be encrypted)")
    password = unquote(parts.password)
    if not PASSWORD.fullmatch(password):
        raise SecretFileError(f"{what} {path}: the password must be printable, without spaces, quotes or backslashes "
                              "(systemd's EnvironmentFile would change it)")
    return DatabaseUrl(user, parts.hostname, port, database, query.get("sslmode", "require"), password)


def read_s3_credentials(path: Path) -> dict[str, str]:
    """KEY=VALUE lines: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, optionally AWS_SESSION_TOKEN and AWS_DEFAULT_REGION."""
    what = "s3_credentials_file"
    values = {}
    for number, line in enumerate(read_private(path, what).splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.strip().partition("=")
        if not sep or key not in S3_KEYS:
            raise SecretFileError(f"{what} {path}: line {number} must be KEY=VALUE, KEY one of {', '.join(S3_KEYS)}")
        if not S3_VALUE.fullmatch(value):
            raise SecretFileError(f"{what} {path}: line {number}: the value of {key} must be letters, digits and / + = . _ - "
                                  "(no quotes or spaces)")
        values[key] = value
    missing = [key for key in S3_REQUIRED if key not in values]
    if missing:
        raise SecretFileError(f"{what} {path}: {' and '.join(missing)} missing")
    return values
