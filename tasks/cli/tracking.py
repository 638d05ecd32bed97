"""Tasks of the tracking service: `fab setup-tracking`, `tracking-user`, `backup-tracking`, `restore-tracking`, `upgrade-tracking`,
`migrate-tracking`."""

from __future__ import annotations

import secrets
from pathlib import Path

from fabric import task
from invoke.exceptions import Exit

from tasks.cli import arguments
from tasks.credentials import TRACKING_CREDENTIALS, mlflow_credentials, write_pending
from tasks.fleet import end_with_recap, run_on_hosts
from tasks.secret_files import SecretFileError
from tasks.tracking.replicas import setup_replicas
from tasks.tracking.restore_replicas import restore_service
from tasks.tracking.backups import backup_on, download_directory, restore_on
from tasks.tracking.server import check_user_certificates, converge
from tasks.tracking.service import StoreFiles, TrackingService
from tasks.tracking.upgrade import upgrade_on
from tasks.tracking.upgrade_replicas import upgrade_replicas
from tasks.tracking.users import check_credentials_file, chosen_action, remove_on, set_password_on, settle
from tasks.values import check_mlflow_version


@task(help={"check": "show what would change, with diffs, and change nothing"})
def setup_tracking(c, check=False):
    """Install or converge the MLflow tracking server: PostgreSQL, artifact root, systemd unit, TLS and sign-in, health gate."""
    hosts = arguments.hosts_for(c, role="tracking")
    check_user_certificates(hosts)
    service = TrackingService.of(arguments.inventory(c))
    if not service.shared:
        end_with_recap(run_on_hosts(c.config, hosts, converge, check=check))
        return
    try:
        files = StoreFiles.read(service.settings)
    except SecretFileError as error:
        raise Exit(f"error: {error}: nothing was changed", code=2) from None
    end_with_recap(setup_replicas(c.config, service, hosts, files, check))


@task(help={
    "add": "the user name to create",
    "reset-password": "give this user a new password (written to --credentials, which may hold this user's old one)",
    "remove": "remove this user from the tracking server (the admin can't be removed)",
    "admin": "with --add: make the user an admin of the tracking server",
    "credentials": f"where to write the user's credentials (default {TRACKING_CREDENTIALS})",
})
def tracking_user(c, add="", reset_password="", remove="", admin=False, credentials=TRACKING_CREDENTIALS):
    """Create a user of the tracking server, give one a new password, or remove one; credentials are written on this machine."""
    action, name = chosen_action(add, reset_password, remove, admin)
    hosts = arguments.hosts_for(c, role="tracking")
    if TrackingService.of(arguments.inventory(c)).shared:
        hosts = hosts[:1]  # the replicas keep their users in the shared database: one of them makes the change for all
    if action == "remove":
        end_with_recap(run_on_hosts(c.config, hosts, lambda remote, report: remove_on(remote, report, name)))
        return
    path = Path(credentials).expanduser()
    check_credentials_file(path, name, action)
    password = secrets.token_urlsafe(24)
    try:
        pending = write_pending(path, mlflow_credentials(name, password))
    except OSError as error:
        where = f": {error.filename}" if error.filename else ""
        raise Exit(f"error: --credentials {credentials}: cannot write there ({error.strerror or error}{where}): nothing was changed", code=2) from None
    outcomes: dict[str, str] = {}
    reports = run_on_hosts(c.config, hosts, lambda remote, report: set_password_on(remote, report, action, name, password, admin, outcomes))
    settle(pending, path, name, outcomes, [host.name for host in hosts])
    end_with_recap(reports)


@task(help={"download": "also copy the backup to this directory on the laptop"})
def backup_tracking(c, download=""):
    """Dump the tracking database and archive the artifacts on each tracking host (kept: backup_keep); replicas: one
    dump of the shared database and a list of the bucket's artifacts."""
    hosts = arguments.hosts_for(c, role="tracking")
    if TrackingService.of(arguments.inventory(c)).shared:
        hosts = hosts[:1]  # one database and one bucket for every replica: one backup of them
    directory = download_directory(download) if download else ""
    end_with_recap(run_on_hosts(c.config, hosts, lambda remote, report: backup_on(remote, report, directory)))


@task(help={"from": "a backup file on the laptop (from --download), or a path on the host",
            "accept-missing-artifacts": "replicas: restore even when objects the backup lists are missing from the bucket or changed"})
def restore_tracking(c, from_="", accept_missing_artifacts=False):
    """Replace the tracking database and artifacts with a backup, after checking it; the current state is backed up first, and comes back on any failure."""
    if not from_:
        raise Exit("error: give --from FILE (a backup from fab backup-tracking --download, or a path on the host)", code=2)
    service = TrackingService.of(arguments.inventory(c))
    if service.shared:  # one database for every replica: the first one restores it while all are stopped
        end_with_recap(restore_service(c.config, service, from_, accept_missing_artifacts))
        return
    hosts = arguments.hosts_for(c, role="tracking")
    if len(hosts) != 1:
        raise Exit(f"error: restore one tracking host at a time: pass -H (tracking hosts: {', '.join(h.name for h in hosts)})", code=2)
    end_with_recap(run_on_hosts(c.config, hosts, lambda remote, report: restore_on(remote, report, from_)))


@task(help={"mlflow-version": "the version to run (default: mlflow_version from the inventory)",
            "download": "also copy the backup taken first to this directory on the laptop, before anything changes",
            "check": "show the plan and change nothing"})
def upgrade_tracking(c, mlflow_version="", download="", check=False):
    """Upgrade MLflow on the tracking hosts: backup, new env beside the old, db migration, health gate, rollback on failure."""
    if mlflow_version:
        try:
            check_mlflow_version(mlflow_version)
        except ValueError as error:
            raise Exit(f"error: --mlflow-version {error} (got {mlflow_version!r})", code=2) from None
    service = TrackingService.of(arguments.inventory(c))
    directory = download_directory(download) if download and not check else ""
    if service.shared:
        if c.config.get("target_hosts"):
            raise Exit("error: the replicas of one service upgrade together (one schema): run upgrade-tracking without -H", code=2)
        end_with_recap(upgrade_replicas(c.config, service, mlflow_version or service.settings.mlflow_version, directory, check))
        return
    hosts = arguments.hosts_for(c, role="tracking")
    end_with_recap(run_on_hosts(c.config, hosts, lambda remote, report: upgrade_on(remote, report, mlflow_version or remote.host.tracking.mlflow_version, directory), check=check))


@task(help={"from": "the one-host tracking server to move (an inventory host without role tracking, or user@address)",
            "check": "check both sides and change nothing"})
def migrate_tracking(c, from_="", check=False):
    """Move a one-host tracking server's runs, users and artifacts into the service of replicas (shared database, S3)."""
    from tasks.tracking.migrate import migrate

    service = TrackingService.of(arguments.inventory(c))
    if not from_:
        raise Exit("error: give --from HOST: the one-host tracking server to move", code=2)
    if not service.shared or not service.settings.artifacts.startswith("s3://") or not service.replicas:
        raise Exit('error: migrate-tracking moves a server into a service of replicas: set [tracking] database = "host" or '
                   '"external" and artifacts = "s3://...", give hosts role "tracking", and run fab setup-tracking first', code=2)
    (source,) = arguments.hosts_for(c, role=None, targets=[from_])
    if source.name in {host.name for host in service.replicas}:
        raise Exit(f"error: {source.name} has role tracking: setup-tracking made it a replica already. List the server to move "
                   "without that role (roles = []), migrate, then give it the role if it should become a replica", code=2)
    try:
        files = StoreFiles.read(service.settings)
    except SecretFileError as error:
        raise Exit(f"error: {error}: nothing was changed", code=2) from None
    end_with_recap(migrate(c.config, service, source, files, check))
