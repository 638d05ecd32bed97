"""`fab tracking-user --add/--reset-password/--remove NAME`: the users of the tracking server, whose
credentials are written on this machine.

Runbook this replaces: `curl -u admin:PASSWORD -X POST .../users/create` (the admin password now in the
shell history), then a new user's password pasted into a chat message.
"""

from __future__ import annotations

import json
from pathlib import Path

from invoke.exceptions import Exit

from tasks import credentials
from tasks.credentials import TRACKING_CREDENTIALS, commit, owner
from tasks.ops.remote import HostError, Remote
from tasks.ops.steps import Step
from tasks.report import HostReport, console, record
from tasks.templates import render_script
from tasks.tracking.frontdoor import ADMIN, ADMIN_CURL
from tasks.tracking.server import TrackingTarget

USERS_API = "/api/2.0/mlflow/users"
# The host script prints this once the server took the new password: from then on it must not be lost.
PASSWORD_SET = "@@password-set"


def users_api_script(target: TrackingTarget, action: str, name: str, admin: bool = False) -> str:
    """add, reset-password or remove NAME through the users API, as the admin whose credentials come from a root-only file."""
    return render_script("tracking-user.sh.j2", action=action, name=name, admin=admin, admin_curl=ADMIN_CURL, password_set=PASSWORD_SET,
                         base=f"http://127.0.0.1:{target.server_port}{USERS_API}",
                         admin_body=json.dumps({"username": name, "is_admin": True}), remove_body=json.dumps({"username": name}))


def create_user_script(target: TrackingTarget, name: str, admin: bool) -> str:
    """The new user's JSON body (with its password) comes on stdin."""
    return users_api_script(target, "add", name, admin)


def reset_password_script(target: TrackingTarget, name: str) -> str:
    """The new password comes on stdin, inside the JSON body."""
    return users_api_script(target, "reset-password", name)


def remove_user_script(target: TrackingTarget, name: str) -> str:
    return users_api_script(target, "remove", name)


def set_password_on(remote: Remote, report: HostReport, action: str, name: str, password: str, admin: bool, outcomes: dict[str, str]) -> None:
    """Create the user or give it a new password; outcomes[host] says whether the server took the password."""
    target = auth_target(remote, report)
    if not target:
        return
    script = create_user_script(target, name, admin) if action == "add" else reset_password_script(target, name)
    remote.connect()
    try:
        result = remote.run_script(script, step="tracking user", stdin=json.dumps({"username": name, "password": password}))
    except HostError as error:
        if error.unreachable:
            outcomes[remote.host.name] = "unknown"
        raise
    outcomes[remote.host.name] = "set" if PASSWORD_SET in result.stdout else "not set"
    output = result.stdout.replace(PASSWORD_SET, "").strip()
    if result.exited != 0:
        step = Step.failure("tracking user", output[-600:])
    elif action == "add":
        step = Step.change("tracking user", f"{name} is now {'an admin' if admin else 'a user'}", "")
    else:
        step = Step.change("tracking user", f"{name} has a new password", "")
    record(report, [step])


def remove_on(remote: Remote, report: HostReport, name: str) -> None:
    target = auth_target(remote, report)
    if not target:
        return
    result = remote.run_script(remove_user_script(target, name), step="tracking user")
    output = result.stdout.strip()
    if result.exited != 0:
        step = Step.failure("tracking user", output[-600:])
    elif output.endswith("absent"):
        step = Step.ok("tracking user", f"no user {name} on this server")
    else:
        step = Step.change("tracking user", f"{name} removed: its credentials get 401", "")
    record(report, [step])


def auth_target(remote: Remote, report: HostReport) -> TrackingTarget | None:
    """The host's tracking server, or None (reported as failed) when it has no sign-in and so no users."""
    target = TrackingTarget(remote.host, remote.connection.host)
    if not target.settings.auth:
        record(report, [Step.failure("tracking user", "auth is off for this server (auth = false in hosts.toml): it has no users")])
        return None
    return target


def chosen_action(add: str, reset_password: str, remove: str, admin: bool) -> tuple[str, str]:
    """(action, name) from the flags; bad input exits with 2 before any host is touched."""
    action, name = credentials.chosen_action(add, reset_password, remove)
    if admin and action != "add":
        raise Exit("error: --admin goes with --add only", code=2)
    if name == ADMIN and action != "add":
        raise Exit(f"error: {ADMIN} is the tracking server's own admin: its password is generated on each host (tracking.env) "
                   f"and setup-tracking puts it back when the server refuses it; it can't be {'removed' if action == 'remove' else 'reset here'}", code=2)
    return action, name


def check_credentials_file(path: Path, name: str, action: str) -> None:
    """Never overwrite someone else's credentials: only --reset-password replaces a file, and only that user's."""
    if not path.exists():
        return
    holder = owner(path)
    if action == "reset-password" and holder == name:
        return
    held = f"the credentials of {holder}" if holder else "no credentials we can read"
    raise Exit(f"error: {path} exists already and holds {held}: pass --credentials PATH for {name}", code=2)


def settle(pending: Path, path: Path, name: str, outcomes: dict[str, str], host_names: list[str]) -> None:
    """Move the new credentials in place when any host took (or may have taken) the password; else drop them."""
    took = [host for host in host_names if outcomes.get(host) == "set"]
    unknown = [host for host in host_names if outcomes.get(host) == "unknown"]
    if not took and not unknown:
        pending.unlink()
        return
    try:
        commit(pending, path)
    except OSError as error:
        console.print(f"[bold red]error[/]: moving the new credentials of {name} to {path} failed ({error.strerror}): they are in {pending}")
        return
    default = path == Path(TRACKING_CREDENTIALS).expanduser()
    console.print(f"credentials of {name} written to {path} (mode 0600): the MLflow client reads them"
                  + ("" if default else " from ~/.mlflow/credentials, or export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD from it"))
    missing = [host for host in host_names if host not in took]
    if missing:
        lost = f" (the connection to {', '.join(unknown)} was lost: the password may or may not be set there)" if unknown else ""
        again = f"fab tracking-user --reset-password {name}" + ("" if default else f" --credentials {path}")
        console.print(f"[bold red]warning[/]: the password in {path} works on {', '.join(took) or 'no host for certain'}, "
                      f"not on {', '.join(missing)}{lost}: fix what failed there, then `{again}` gives {name} one new password everywhere")
