"""The audit log on each host: one JSON line per deploy and rollback, under /var/log."""

from __future__ import annotations

import getpass
import json
import shlex
import socket
from datetime import datetime, timezone

AUDIT_LOG = "/var/log/mlflow-fab/deploys.jsonl"


def operator() -> str:
    """Who is deploying: user@laptop, as locks, manifests and the audit log name them."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def append_script(record: dict) -> str:
    line = json.dumps({"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **record})
    return f"mkdir -p {AUDIT_LOG.rsplit('/', 1)[0]}\nprintf '%s\\n' {shlex.quote(line)} >> {AUDIT_LOG}"


def parse(text: str, model: str) -> list[dict]:
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("model") == model:
            records.append(record)
    return records
