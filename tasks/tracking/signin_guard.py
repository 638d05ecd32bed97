"""Wrong passwords can't stall the tracking server: each costs ~0.4 s of scrypt, a checked right one is cached.

nginx can't tell a right password from a wrong one before MLflow has hashed it, so a rate limit there would
throttle honest clients too. Instead nginx writes each wrong password (a 401 to a request that carried
credentials) to its own log, fail2ban bans an address that keeps failing from the tracking port (nftables),
and nginx caps the requests one address runs at once, so a flood can't queue up work ahead of its ban.

Runbook this replaces: apt-get install fail2ban; a jail pasted from a blog post that watches every 401 in
access.log (banning browsers that have not signed in yet); and Debian 12's sshd jail keeping fail2ban down.
"""

from __future__ import annotations

from tasks.inventory import TrackingSettings
from tasks.ops import facts as f
from tasks.ops.files import ensure_file
from tasks.ops.steps import Step
from tasks.templates import render, render_script

JAIL = "mlflow-tracking"
JAIL_PATH = f"/etc/fail2ban/jail.d/{JAIL}.conf"
FILTER_PATH = f"/etc/fail2ban/filter.d/{JAIL}.conf"
SIGNIN_LOG = "/var/log/nginx/mlflow-tracking-signin.log"
# Debian 12's own sshd jail reads this file; a host that logs only to the journal has none.
SSH_LOG = "/var/log/auth.log"
SIGNIN_GUARD_PACKAGES = ["fail2ban", "nftables"]
START_TIMEOUT = 30


def enabled(settings: TrackingSettings) -> bool:
    """Only nginx (tls) writes the log, and only sign-in (auth) has passwords to guess."""
    return settings.signin_guard and settings.tls and settings.auth


def packages(settings: TrackingSettings) -> list[str]:
    return SIGNIN_GUARD_PACKAGES if enabled(settings) else []


def nginx_values(settings: TrackingSettings) -> dict:
    """What the front door's template needs: the log to write and the per-address cap (empty: guard off)."""
    if not enabled(settings):
        return {"signin_log": "", "parallel_requests": 0}
    return {"signin_log": SIGNIN_LOG, "parallel_requests": settings.parallel_requests_per_address}


JAIL_FILE = f.file_content(JAIL_PATH)
FILTER_FILE = f.file_content(FILTER_PATH)
# `jail running` and `ssh log`, each when it holds
GUARD_STATE = f.Fact("signin_guard", f"fail2ban-client status {JAIL} >/dev/null && echo jail running; test -e {SSH_LOG} && echo ssh log")


def facts() -> list[f.Fact]:
    return [JAIL_FILE, FILTER_FILE, GUARD_STATE]


def jail_config(settings: TrackingSettings, ssh_log: bool) -> str:
    return render(
        "fail2ban-mlflow-tracking-jail.conf.j2", jail=JAIL, signin_log=SIGNIN_LOG, port=settings.port,
        max_failures=settings.signin_max_failures, window_seconds=settings.signin_window_seconds,
        ban_seconds=settings.signin_ban_seconds, disable_sshd=not ssh_log, ssh_log=SSH_LOG,
    )


def filter_config() -> str:
    return render("fail2ban-mlflow-tracking-filter.conf.j2", signin_log=SIGNIN_LOG)


def start_jail_script() -> str:
    """fail2ban reads the log from its start: the log must exist (nginx opens it owned by root otherwise)."""
    return render_script("fail2ban-start-jail.sh.j2", signin_log=SIGNIN_LOG, jail=JAIL, timeout=START_TIMEOUT)


def remove_script() -> str:
    """Stopping the jail lifts its bans and drops its nftables set; the rest of fail2ban is left as it is."""
    return f"""if fail2ban-client status {JAIL} >/dev/null 2>&1; then fail2ban-client stop {JAIL} >/dev/null; fi
rm -f {JAIL_PATH} {FILTER_PATH}"""


def steps(settings: TrackingSettings, facts: f.Facts) -> list[Step]:
    """After nginx writes the sign-in log: the jail and its filter, and fail2ban running them."""
    installed = [facts[JAIL_FILE], facts[FILTER_FILE]]
    state = facts[GUARD_STATE]
    if not enabled(settings):
        if not any(file.exists for file in installed):
            return [Step.ok("signin guard", "off")]
        why = "signin_guard = false" if settings.tls and settings.auth else "no tls or no auth"
        return [Step.change("signin guard", f"off ({why} in hosts.toml): remove the fail2ban jail {JAIL}", remove_script())]
    files = [
        ensure_file(JAIL_PATH, jail_config(settings, "ssh log" in state), installed[0]),
        ensure_file(FILTER_PATH, filter_config(), installed[1]),
    ]
    summary = (f"bans an address from port {settings.port} for {settings.signin_ban_seconds} s after "
               f"{settings.signin_max_failures} wrong passwords within {settings.signin_window_seconds} s")
    if any(step.changed for step in files) or "jail running" not in state:
        return files + [Step.change(f"fail2ban jail {JAIL}", f"(re)load: {summary}", start_jail_script())]
    return files + [Step.ok(f"fail2ban jail {JAIL}", summary)]
