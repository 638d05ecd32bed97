"""The MLflow client's credentials file on this machine (`[mlflow] mlflow_tracking_username/password`).

A new password is written to disk (0600, beside the file) before any host gets it, and moved in place
once a host took it: a failure halfway never leaves a password that works somewhere and is known nowhere.
"""

from __future__ import annotations

import configparser
import os
import tempfile
from pathlib import Path

SECTION = "mlflow"


def owner(path: Path) -> str:
    """The user name the credentials file holds; '' when it holds none or can't be read."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(path.read_text())
    except (OSError, UnicodeDecodeError, configparser.Error):
        return ""
    return parser.get(SECTION, "mlflow_tracking_username", fallback="").strip()


def write_pending(path: Path, name: str, password: str) -> Path:
    """A new file beside PATH, 0600 from its creation (mkstemp), holding the new credentials."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, pending = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".new")
    with os.fdopen(descriptor, "w") as file:
        file.write(f"[{SECTION}]\nmlflow_tracking_username = {name}\nmlflow_tracking_password = {password}\n")
    return Path(pending)


def commit(pending: Path, path: Path) -> None:
    os.replace(pending, path)
