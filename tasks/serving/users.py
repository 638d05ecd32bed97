"""`fab model-user --add/--reset-password/--remove NAME`: who may call the model endpoints behind the balancer.

nginx basic auth on every lb host: `NAME:$6$...` lines (SHA-512 crypt, hashed on the host by
`openssl passwd -6 -stdin` from the password sent on stdin), root:www-data 0640. The password is
generated here and kept in a curl config file (0600) for `curl -K FILE`.

Runbook this replaces: `htpasswd -b users alice PASSWORD` (the password in `ps` and the shell history),
repeated on each balancer, then the password pasted into a chat message.
"""

from __future__ import annotations

from tasks.ops.remote import Remote
from tasks.ops.steps import Step
from tasks.report import HostReport, record
from tasks.serving.balancer import USERS
from tasks.templates import render_script


def users_script(action: str, name: str) -> str:
    """Rewrite the users file without NAME, plus NAME's new hash unless removing; the password comes on stdin."""
    return render_script("model-user.sh.j2", action=action, name=name, users=USERS)


def change_on(remote: Remote, report: HostReport, action: str, name: str, password: str) -> None:
    result = remote.run_script(users_script(action, name), step="model user", stdin=password if action != "remove" else None)
    done = {"add": f"{name} may call the models", "reset-password": f"{name} has a new password", "remove": f"{name} removed"}[action]
    step = Step.change("model user", done, "") if result.exited == 0 else Step.failure("model user", result.stdout.strip()[-600:])
    record(report, [step])
