"""`fab model-user --add/--reset-password/--remove NAME`: who may call the model endpoints behind the balancer.

nginx basic auth on every lb host: `NAME:$6$...` lines (SHA-512 crypt, hashed on the host by
`openssl passwd -6 -stdin` from the password sent on stdin), root:www-data 0640. The password is
generated here and kept in a curl config file (0600) for `curl -K FILE`.

Runbook this replaces: `htpasswd -b users alice PASSWORD` (the password in `ps` and the shell history),
repeated on each balancer, then the password pasted into a chat message.
"""

from __future__ import annotations

import secrets
import shlex
from pathlib import Path

from fabric import task
from invoke.exceptions import Exit

from tasks import cli
from tasks.credentials import chosen_action, commit, write_pending
from tasks.fleet import finish, run_on_hosts
from tasks.lb import USERS
from tasks.ops.remote import Remote
from tasks.ops.steps import Step
from tasks.report import HostReport, console, show_step

DEFAULT_CREDENTIALS = "~/.mlflow/model-users/{name}.curl"


def users_script(action: str, name: str) -> str:
    """Rewrite the users file without NAME, plus NAME's new hash unless removing; the password comes on stdin."""
    user = shlex.quote(name)
    must = {
        "add": f'[ -z "$line" ] || {{ echo "user {name} exists already on this balancer: nothing was changed (--reset-password {name} gives a new password)"; exit 1; }}',
        "reset-password": f'[ -n "$line" ] || {{ echo "no user {name} on this balancer: nothing was changed (--add {name} makes one)"; exit 1; }}',
    }
    must["remove"] = must["reset-password"]
    add_hash = "" if action == "remove" else f'hash=$(openssl passwd -6 -stdin)\nprintf "%s:%s\\n" {user} "$hash" >> "$new"'
    return f"""[ -f {USERS} ] || {{ echo "this balancer has no users file: run fab setup-lb with [lb] auth = true first"; exit 2; }}
line=$(awk -F: -v user={user} '$1 == user' {USERS})
{must[action]}
new=$(mktemp {USERS}.XXXXXX); trap 'rm -f "$new"' EXIT
awk -F: -v user={user} '$1 != user' {USERS} > "$new"
{add_hash}
chown root:www-data "$new" && chmod 640 "$new" && mv "$new" {USERS}"""


def change_on(remote: Remote, report: HostReport, action: str, name: str, password: str) -> None:
    result = remote.run_script(users_script(action, name), step="model user", stdin=password if action != "remove" else None)
    done = {"add": f"{name} may call the models", "reset-password": f"{name} has a new password", "remove": f"{name} removed"}[action]
    step = Step.change("model user", done, "") if result.exited == 0 else Step.failure("model user", result.stdout.strip()[-600:])
    report.steps.append(step)
    show_step(report, step)


@task(help={
    "add": "a user to create on every lb host",
    "reset-password": "give this user a new password (its credentials file is rewritten)",
    "remove": "remove this user from every lb host",
    "credentials": f"the user's curl config file on this machine (default {DEFAULT_CREDENTIALS})",
})
def model_user(c, add="", reset_password="", remove="", credentials=""):
    """Users of the model endpoints (nginx basic auth on the lb hosts); credentials written here for `curl -K FILE`."""
    action, name = chosen_action(add, reset_password, remove)
    inventory = cli.inventory(c)
    if not inventory.lb.auth:
        raise Exit(f"error: {inventory.path}: [lb] auth = false: the model endpoints take no users", code=2)
    path = Path(credentials or DEFAULT_CREDENTIALS.format(name=name)).expanduser()
    if action == "add" and path.exists():
        raise Exit(f"error: {path} exists already: pass --credentials PATH, or --reset-password {name}", code=2)
    hosts = cli.hosts_for(c, role="lb")
    password = secrets.token_urlsafe(24) if action != "remove" else ""
    pending = write_pending(path, f'user = "{name}:{password}"\n') if password else None
    reports = run_on_hosts(c.config, hosts, lambda remote, report: change_on(remote, report, action, name, password))
    accepted = [report.host for report in reports if not report.failed]
    refused = [report.host for report in reports if report.failed]
    if pending and accepted:
        commit(pending, path)
        console.print(f"credentials of {name} written to {path} (mode 0600): curl -K {path} https://LB:PORT/invocations ...")
        if refused:
            console.print(f"[red]{', '.join(refused)} did not take the new password: fix them, then "
                          f"`fab model-user --reset-password {name}` sets one password everywhere[/]")
    elif pending:
        pending.unlink()
    if action == "remove" and accepted and path.exists():
        path.unlink()
        console.print(f"{path} removed")
    finish(reports)
