"""Credentials files on this machine: the MLflow client's (`[mlflow] mlflow_tracking_username/password`) and
the model users' curl configs. Shared by `fab tracking-user` and `fab model-user`.

A new password is written to disk (0600, beside the file) before any host gets it, and moved in place
once a host took it: a failure halfway never leaves a password that works somewhere and is known nowhere.
"""

from __future__ import annotations

import configparser
import os
import re
import tempfile
from pathlib import Path

from invoke.exceptions import Exit

SECTION = "mlflow"
USER_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
# Where MLflow's client reads its sign-in, and where `fab model-user` writes a user's curl config.
TRACKING_CREDENTIALS = "~/.mlflow/credentials"
MODEL_USER_CREDENTIALS = "~/.mlflow/model-users/{name}.curl"


def chosen_action(add: str, reset_password: str, remove: str) -> tuple[str, str]:
    """(action, name) from --add / --reset-password / --remove; bad input exits with 2 before any host is touched."""
    given = [(action, name) for action, name in (("add", add), ("reset-password", reset_password), ("remove", remove)) if name]
    if len(given) != 1:
        raise Exit("error: give exactly one of --add NAME, --reset-password NAME, --remove NAME", code=2)
    action, name = given[0]
    if not USER_NAME.fullmatch(name):
        raise Exit(f"error: user name {name!r}: use letters, digits and _ . @ - only", code=2)
    return action, name


def read_credentials(path: Path) -> tuple[str, str]:
    """(user, password) the MLflow credentials file holds; empty strings when it holds none or can't be read."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(path.read_text())
    except (OSError, UnicodeDecodeError, configparser.Error):
        return "", ""
    return (parser.get(SECTION, "mlflow_tracking_username", fallback="").strip(),
            parser.get(SECTION, "mlflow_tracking_password", fallback="").strip())


def owner(path: Path) -> str:
    """The user name the credentials file holds; '' when it holds none or can't be read."""
    return read_credentials(path)[0]


def mlflow_credentials(name: str, password: str) -> str:
    return f"[{SECTION}]\nmlflow_tracking_username = {name}\nmlflow_tracking_password = {password}\n"


def write_pending(path: Path, text: str) -> Path:
    """A new file beside PATH, 0600 from its creation (mkstemp), holding the new credentials."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor, pending = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".new")
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    return Path(pending)


def commit(pending: Path, path: Path) -> None:
    os.replace(pending, path)
