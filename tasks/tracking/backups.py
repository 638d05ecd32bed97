"""`fab backup-tracking` and `fab restore-tracking`: a database dump and an artifact archive in one file.

The work is done by /usr/local/sbin/mlflow-backup and mlflow-restore, which setup-tracking installs
(the optional timer runs the same backup script), so a backup by hand on the host is the same backup.
"""

from __future__ import annotations

import os
import shlex
from contextlib import nullcontext
from pathlib import Path

from invoke.exceptions import Exit

from tasks.ops import facts as f
from tasks.ops.remote import HostError, Remote, private_path
from tasks.ops.steps import Step, apply
from tasks.report import HostReport, record, show_note, show_step
from tasks.tracking.schema import DATABASE
from tasks.tracking.server import BACKUP_SCRIPT, RESTORE_SCRIPT, TrackingTarget


def download_directory(path: str) -> str:
    """The --download directory, made when missing; an error before any host is touched when it can't be written."""
    directory = Path(path).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise Exit(f"error: --download {path}: {error.strerror}", code=2) from None
    if not os.access(directory, os.W_OK):
        raise Exit(f"error: --download {path}: not writable by this user", code=2)
    return str(directory)


def backup_path(output: str) -> str:
    """mlflow-backup prints the path of the file it made last."""
    return output.strip().splitlines()[-1] if output.strip() else ""


def backup_on(remote: Remote, report: HostReport, download: str = "") -> None:
    keep = remote.host.tracking.backup_keep
    result = remote.run_script(f"test -x {BACKUP_SCRIPT} || {{ echo 'missing {BACKUP_SCRIPT}: run fab setup-tracking first'; exit 2; }}\n"
                               f"{BACKUP_SCRIPT} {keep}", step="backup")
    path = backup_path(result.stdout)
    step = Step.change("backup", f"{path} (keeping the newest {keep})", "") if result.exited == 0 else Step.failure("backup", result.stdout[-1000:])
    record(report, [step])
    if not step.failed and download:
        download_backup(remote, report, path, download)


def download_backup(remote: Remote, report: HostReport, path: str, directory: str) -> None:
    """Copy a backup on the host to DIRECTORY/HOST-NAME on the laptop (0600), through a copy in a private directory."""
    target = Path(directory) / f"{remote.host.name}-{Path(path).name}"
    with remote.private_directory() as private:
        readable = f"{private}/{Path(path).name}"
        copy = remote.run_script(f"install -m 0600 -o {shlex.quote(remote.connection.user)} {shlex.quote(path)} {readable}", step="download")
        if copy.exited != 0:
            raise HostError("download", copy.stdout[-500:])
        try:
            with os.fdopen(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as local_file:
                remote.connection.sftp().getfo(readable, local_file)
        except OSError as error:
            raise HostError("download", f"copying {readable} to {target}: {error}") from None
    show_note(report, f"downloaded to {target}")


def restore_on(remote: Remote, report: HostReport, source: str) -> None:
    """Upload a local backup (or use a path on the host); mlflow-restore checks it, swaps, gates, and puts the old state back on failure."""
    local = Path(source).expanduser()
    host_path = private_path(local.name) if local.is_file() else source
    settings = remote.host.tracking
    # the script holds the rollback and the gate: one from before them would restore without either
    wanted = TrackingTarget(remote.host, remote.connection.host).backup_files()[RESTORE_SCRIPT][0]
    installed = f.file_content(RESTORE_SCRIPT)
    if f.gather(remote, [installed])[installed].content != wanted:
        stale = Step.failure("restore", f"{RESTORE_SCRIPT} is missing or not this fabfile's: run fab setup-tracking first; nothing was changed")
        report.steps.append(stale)
        show_step(report, stale)
        return
    restore = Step.change("restore", f"{source} -> database {DATABASE} and {settings.artifacts}, then a health gate of up to {settings.health_timeout} s",
                          f"{RESTORE_SCRIPT} {shlex.quote(host_path)}")
    report.steps.append(restore)
    with remote.private_upload(local, host_path) if local.is_file() else nullcontext():
        restored = apply(remote, [restore], lambda step: show_step(report, step))
    if restored:  # what it kept, closed and backed up on the way
        for line in restore.output.splitlines():
            show_note(report, line)
