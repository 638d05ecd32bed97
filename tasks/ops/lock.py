"""A per-model deploy lock on each host: who holds it, since when, doing what.

The lock is a file created with noclobber (atomic) under /run/lock, so a reboot clears it.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass

LOCK_DIR = "/run/lock/mlflow-fab"
STALE_AFTER = 3600
HELD = "@@lock-held "


@dataclass(frozen=True)
class Lock:
    id: str
    by: str
    pid: int
    what: str
    at: float

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


def lock_path(name: str) -> str:
    return f"{LOCK_DIR}/model-{name}.lock"


def acquire_script(name: str, lock: Lock, break_lock: bool) -> str:
    path = lock_path(name)
    breaking = f"rm -f {path}\n" if break_lock else ""
    return (
        f"mkdir -p {LOCK_DIR}\n{breaking}"
        f"if ( set -o noclobber; printf '%s\\n' {shlex.quote(lock.to_json())} > {path} ) 2>/dev/null; then exit 0; fi\n"
        f"printf '{HELD}%s\\n' \"$(cat {path})\"\nexit 3"
    )


def release_script(name: str, lock: Lock) -> str:
    """Remove the lock only if it is ours."""
    path = lock_path(name)
    return f"if grep -qF {shlex.quote(lock.id)} {path} 2>/dev/null; then rm -f {path}; fi"


def holder_message(output: str, name: str, now: float | None = None) -> str:
    """Why the lock was refused, naming its owner; '' if the output holds no lock record."""
    for line in output.splitlines():
        if line.startswith(HELD):
            try:
                holder = json.loads(line[len(HELD):])
            except json.JSONDecodeError:
                return f"model {name} is locked ({line[len(HELD):]}): rerun with --break-lock if no deploy is running"
            age = (now or time.time()) - float(holder.get("at", 0))
            since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(holder.get("at", 0))))
            stale = "STALE " if age > STALE_AFTER else ""
            return (
                f"model {name} is locked by {stale}deploy of {holder.get('by')} (pid {holder.get('pid')}) "
                f"since {since} ({age / 60:.0f} min ago): {holder.get('what')}; "
                "wait for it, or rerun with --break-lock if that deploy is dead"
            )
    return ""
