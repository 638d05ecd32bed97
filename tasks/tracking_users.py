"""`fab tracking-user --add NAME`: a user of the tracking server, with its credentials written on this machine.

Runbook this replaces: `curl -u admin:PASSWORD -X POST .../users/create` (the admin password now in the
shell history), then a new user's password pasted into a chat message.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path

from fabric import task
from invoke.exceptions import Exit

from tasks import cli
from tasks.fleet import finish, run_on_hosts
from tasks.frontdoor import ADMIN_CURL
from tasks.ops.remote import Remote
from tasks.ops.steps import Step
from tasks.report import HostReport, console, show_step
from tasks.tracking import TrackingTarget

USERS_API = "/api/2.0/mlflow/users"


def create_user_script(target: TrackingTarget, name: str, admin: bool) -> str:
    """The new user's JSON body (with its password) comes on stdin; the admin's credentials from a root-only file."""
    base = f"http://127.0.0.1:{target.server_port}{USERS_API}"
    curl = f"curl -s -o \"$response\" -w '%{{http_code}}' -K {ADMIN_CURL} -H 'Content-Type: application/json'"
    make_admin = ""
    if admin:
        body = json.dumps({"username": name, "is_admin": True})
        make_admin = f"""code=$({curl} -X PATCH --data-binary '{body}' {base}/update-admin)
[ "$code" = 200 ] || {{ echo "making {name} an admin: the server answered $code: $(head -c 300 "$response")"; exit 1; }}"""
    return f"""[ -f {ADMIN_CURL} ] || {{ echo "no tracking server with auth on this host: run fab setup-tracking first"; exit 2; }}
response=$(mktemp); trap 'rm -f "$response"' EXIT
code=$({curl} --data-binary @- {base}/create)
if grep -q RESOURCE_ALREADY_EXISTS "$response"; then echo "user {name} exists already on this server: nothing was changed"; exit 1; fi
[ "$code" = 200 ] || {{ echo "the server answered $code: $(head -c 300 "$response")"; exit 1; }}
{make_admin}
echo created"""


def add_on(remote: Remote, report: HostReport, name: str, password: str, admin: bool) -> None:
    target = TrackingTarget(remote.host, remote.connection.host)
    if not target.settings.auth:
        step = Step.failure("tracking user", "auth is off for this server (auth = false in hosts.toml): there are no users to add")
    else:
        body = json.dumps({"username": name, "password": password})
        result = remote.run_script(create_user_script(target, name, admin), step="tracking user", stdin=body)
        kind = "an admin" if admin else "a user"
        step = Step.change("tracking user", f"{name} is now {kind}", "") if result.exited == 0 else Step.failure("tracking user", result.stdout.strip()[-600:])
    report.steps.append(step)
    show_step(report, step)


def write_credentials(path: Path, name: str, password: str) -> None:
    """~/.mlflow/credentials, the file the MLflow client reads when MLFLOW_TRACKING_USERNAME/PASSWORD are unset."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(f"[mlflow]\nmlflow_tracking_username = {name}\nmlflow_tracking_password = {password}\n")


@task(help={
    "add": "the user name to create",
    "admin": "make the user an admin of the tracking server",
    "credentials": "where to write the user's credentials (default ~/.mlflow/credentials)",
})
def tracking_user(c, add, admin=False, credentials="~/.mlflow/credentials"):
    """Create a user on the tracking server and write its credentials for the MLflow client on this machine."""
    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", add):
        raise Exit(f"error: user name {add!r}: use letters, digits and _ . @ - only", code=2)
    path = Path(credentials).expanduser()
    if path.exists():
        raise Exit(f"error: {path} exists already and holds someone's credentials: pass --credentials PATH for the new user", code=2)
    hosts = cli.hosts_for(c, role="tracking")
    password = secrets.token_urlsafe(24)
    reports = run_on_hosts(c.config, hosts, lambda remote, report: add_on(remote, report, add, password, admin))
    if not any(report.failed for report in reports):
        write_credentials(path, add, password)
        console.print(f"credentials of {add} written to {path} (mode 0600): the MLflow client reads them"
                      + ("" if path == Path("~/.mlflow/credentials").expanduser() else
                         " from ~/.mlflow/credentials, or export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD from it"))
    finish(reports)
