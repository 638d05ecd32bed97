"""`fab migrate-tracking --from HOST`: a one-host tracking server's runs, users and artifacts moved into a service of
replicas. The server stops (nothing is written meanwhile), its backup (database dump and artifact archive, with their
sums) goes through the laptop to the first replica, which restores the dump into the shared database in one transaction
and copies the artifacts into the bucket under the same paths: runs logged through the proxy keep their
`mlflow-artifacts:/` URIs. Counts and digests are checked on the way; then the replicas are converged (gated) and the old
server stays stopped and disabled, its data left in place. Any failure before the switch starts the old server again.

Runbook this replaces: stop the server; pg_dump; scp; pg_restore; aws s3 sync; compare by eye; repoint the clients.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from fabric import Config

from tasks.fleet import merge_reports, run_on_hosts
from tasks.inventory import Host
from tasks.ops import facts as f
from tasks.ops.remote import Remote, private_path
from tasks.ops.steps import Step, apply
from tasks.report import HostReport, record, show_note, show_step
from tasks.templates import render_script
from tasks.tracking import balancer
from tasks.tracking.backups import backup_path, download_backup
from tasks.tracking.replicas import setup_replicas
from tasks.tracking.schema import DATABASE
from tasks.tracking.server import BACKUP_SCRIPT, ENV_FILE, RUNNING_MARKER, SERVICE_USER, UNIT, UNIT_FILE, TrackingTarget, installed_mlflow_version
from tasks.tracking.service import StoreFiles, TrackingService

COUNTS_SQL = "select (select count(*) from runs), (select count(*) from experiments), (select count(*) from registered_models)"
SERVER_COUNTS = f.Fact("counts", f"cd / && runuser -u postgres -- psql -d {DATABASE} -tAX -F ' ' -c '{COUNTS_SQL}'")
# The shared database, from a replica: the service's password in the environment, never on a command line.
SERVICE_COUNTS = f.Fact("service_counts", f"PGPASSWORD=$(sed -n 's/^PGPASSWORD=//p' {ENV_FILE}) psql "
                        f"\"$(sed -n 's/^MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2:/postgresql:/p' {ENV_FILE})\" -tAX -F ' ' -c '{COUNTS_SQL}'")


def check_source(remote: Remote, report: HostReport, service: TrackingService, found: dict) -> None:
    """The one-host server: set up by setup-tracking, on the service's MLflow version; what it holds."""
    facts = f.gather(remote, [RUNNING_MARKER, UNIT_FILE, SERVER_COUNTS])
    running = installed_mlflow_version(facts[RUNNING_MARKER])
    artifacts = re.search(r"--artifacts-destination (\S+)", facts[UNIT_FILE].content)
    if not running or not artifacts or not re.fullmatch(r"\d+ \d+ \d+", facts[SERVER_COUNTS]):
        record(report, [Step.failure("source", "no one-host tracking server set up by setup-tracking here (with its own PostgreSQL)")])
        return
    if artifacts.group(1).startswith("s3://"):
        record(report, [Step.failure("source", f"its artifacts are already in {artifacts.group(1)}: only its database would move")])
        return
    if running != service.settings.mlflow_version:
        record(report, [Step.failure("source", f"it runs mlflow {running} and the service {service.settings.mlflow_version}: "
                                              f"upgrade one of them first (fab upgrade-tracking), so the schema is the same")])
        return
    found["counts"] = facts[SERVER_COUNTS]
    record(report, [Step.ok("source", f"mlflow {running}, {facts[SERVER_COUNTS]} (runs, experiments, registered models), "
                                     f"artifacts in {artifacts.group(1)}")])


def check_target(remote: Remote, report: HostReport) -> None:
    """The service's database: set up (setup-tracking ran), and holding no run yet."""
    counts = f.gather(remote, [SERVICE_COUNTS])[SERVICE_COUNTS]
    if not re.fullmatch(r"\d+ \d+ \d+", counts):
        record(report, [Step.failure("shared database", "not set up, or not reachable from here: run fab setup-tracking first")])
    elif counts.split()[0] != "0":
        record(report, [Step.failure("shared database", f"already holds {counts.split()[0]} runs: migrate-tracking moves a server "
                                                       "into a service that has none")])
    else:
        record(report, [Step.ok("shared database", "set up, no run yet")])


def stop_and_back_up(remote: Remote, report: HostReport, directory: str, found: dict) -> None:
    stop = Step.change(f"stop {UNIT}", "nothing is written from now on", f"systemctl stop {UNIT}")
    backup = Step.change("backup", "database dump and artifact archive, with their sums", f"{BACKUP_SCRIPT} {remote.host.tracking.backup_keep + 1}")
    report.steps += [stop, backup]
    if apply(remote, [stop, backup], lambda each: show_step(report, each)):
        download_backup(remote, report, backup_path(backup.output), directory)
        found["backup"] = next(Path(directory).glob(f"{remote.host.name}-mlflow-backup-*.tar"))


def restore_into_service(remote: Remote, report: HostReport, service: TrackingService, backup: Path, counts: str) -> None:
    target = TrackingTarget(remote.host, remote.connection.host)
    upload = private_path(backup.name)
    script = render_script("tracking-migrate-into.sh.j2", user=SERVICE_USER, env_file=ENV_FILE, env_path=target.env_path, backup=upload,
                           counts_sql=COUNTS_SQL, expected=counts, artifacts=service.settings.artifacts)
    step = Step.change("restore", f"into the shared database (one transaction) and {service.settings.artifacts}, each checked", script)
    report.steps.append(step)
    with remote.private_upload(backup, upload):
        apply(remote, [step], lambda each: show_step(report, each))
    for line in step.output.splitlines() if not step.failed else []:
        show_note(report, line)


def migrate(config: Config, service: TrackingService, source: Host, files: StoreFiles, check: bool) -> list[HostReport]:
    first = balancer.replica_host(service.replicas[0], service) if service.fronted else service.replicas[0]
    found: dict = {}
    stages = [run_on_hosts(config, [source], lambda remote, report: check_source(remote, report, service, found)),
              run_on_hosts(config, [first], check_target)]
    if check or any(report.failed for stage in stages for report in stage):
        return merge_reports(*stages)
    with tempfile.TemporaryDirectory(prefix="mlflow-migrate-") as directory:
        stages.append(run_on_hosts(config, [source], lambda remote, report: stop_and_back_up(remote, report, directory, found)))
        if "backup" in found:
            stages.append(run_on_hosts(config, [first], lambda remote, report: restore_into_service(
                remote, report, service, found["backup"], found["counts"])))
    if "backup" not in found or any(report.failed for report in stages[-1]):
        stages.append(run_on_hosts(config, [source], lambda remote, report: start_again(remote, report)))
        return merge_reports(*stages)
    stages.append(setup_replicas(config, service, list(service.replicas), files, check=False))
    if source.name not in {host.name for host in service.replicas}:
        stages.append(run_on_hosts(config, [source], lambda remote, report: retire(remote, report)))
    return merge_reports(*stages)


def start_again(remote: Remote, report: HostReport) -> None:
    step = Step.change(f"start {UNIT}", "the migration did not finish: the old server serves again", f"systemctl start {UNIT}")
    report.steps.append(step)
    apply(remote, [step], lambda each: show_step(report, each))


def retire(remote: Remote, report: HostReport) -> None:
    step = Step.change(f"disable {UNIT}", "the service of replicas serves its runs now; its database and artifacts stay here",
                       f"systemctl disable --quiet {UNIT}")
    report.steps.append(step)
    if apply(remote, [step], lambda each: show_step(report, each)):
        show_note(report, "point your clients at the service; remove this server's data once you no longer need it")
