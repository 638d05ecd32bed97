"""`fab restore-tracking --from FILE` for replicas of one service: the backup (a dump of the shared database and the list of
the bucket's objects) checked on the first replica while the service serves, its listed artifacts compared with the
bucket; then every replica stopped, a safety backup of the current state, the dump restored into the shared database in
one transaction (migrated when it is older), and every replica started and gated. A replica that fails its gate puts the
state from before back, the same way.

Runbook this replaces: stop every app server; pg_dump for safety; pg_restore --clean; check the bucket still holds what the
runs refer to; mlflow db upgrade; start the servers, watching each come back.
"""

from __future__ import annotations

import re
from pathlib import Path

from fabric import Config

from tasks.fleet import Connect, merge_reports, run_on_hosts
from tasks.inventory import Host
from tasks.ops.health import gate_script
from tasks.ops.remote import Remote, private_path
from tasks.ops.steps import Step, apply
from tasks.report import HostReport, show_note, show_step
from tasks.templates import render_script
from tasks.tracking import balancer, schema
from tasks.tracking.server import (
    BACKUP_DIR,
    BACKUP_SCRIPT,
    ENV_FILE,
    INSTALLED_ENV,
    SERVICE_USER,
    UNIT,
    UNIT_PATH,
    TrackingTarget,
    reset_admin_password_script,
)
from tasks.tracking.service import TrackingService

# What the check stages on the first replica for the restore: root's alone, removed at the end.
STAGE = f"{BACKUP_DIR}/.restore-shared"


def run_step(remote: Remote, report: HostReport, step: Step) -> bool:
    report.steps.append(step)
    return apply(remote, [step], lambda each: show_step(report, each))


def show_output(report: HostReport, step: Step) -> None:
    for line in step.output.splitlines():
        show_note(report, line)


def check_backup(remote: Remote, report: HostReport, service: TrackingService, source: str, accept_missing: bool) -> None:
    """Stage the backup (uploaded, or a path on the host) and check it: sums, dump, MLflow version, artifacts in the bucket."""
    local = Path(source).expanduser()
    archive = private_path(local.name) if local.is_file() else source
    script = check_script(archive, service.settings.artifacts, accept_missing)
    step = Step.change("check backup", f"{source}: sums, dump, mlflow version, its artifacts against {service.settings.artifacts}", script)
    if local.is_file():
        with remote.private_upload(local, archive):
            run_step(remote, report, step)
    else:
        run_step(remote, report, step)
    show_output(report, step)


def check_script(archive: str, artifacts: str, accept_missing: bool) -> str:
    return render_script("tracking-restore-shared-check.sh.j2", archive=archive, stage=STAGE, user=SERVICE_USER, env_file=ENV_FILE,
                         installed_env=INSTALLED_ENV, unit_path=UNIT_PATH, env_version=schema.ENV_VERSION, artifacts=artifacts,
                         accept_missing=accept_missing)


def stop_server(remote: Remote, report: HostReport) -> None:
    run_step(remote, report, Step.change(f"stop {UNIT}", "the restore replaces the shared database: nothing is written meanwhile",
                                         f"systemctl stop {UNIT}"))


def start_server(remote: Remote, report: HostReport) -> None:
    target = TrackingTarget(remote.host, remote.connection.host)
    s = target.settings
    gate = gate_script(UNIT, target.server_port, target.health_checks, s.health_timeout, after_restart=True)
    run_step(remote, report, Step.change(f"start {UNIT}", f"then wait up to {s.health_timeout} s for /health and the API",
                                         f"systemctl start {UNIT}\n{gate}"))


def restore_script(auth: bool, safety: str = "") -> str:
    """The staged dump into the shared database after a safety backup; with safety: that backup's dump put back instead."""
    admin_reset = reset_admin_password_script('"$env"', shared=True) if auth else ""
    return render_script("tracking-restore-shared.sh.j2", stage=STAGE, user=SERVICE_USER, env_file=ENV_FILE, installed_env=INSTALLED_ENV,
                         backup_script=BACKUP_SCRIPT, safety_first=not safety, safety=safety, admin_reset=admin_reset)


def restore_database(remote: Remote, report: HostReport, found: dict) -> None:
    step = Step.change("restore", "a safety backup, then the backup's dump into the shared database (one transaction)",
                       restore_script(remote.host.tracking.auth))
    run_step(remote, report, step)
    show_output(report, step)
    safety = re.search(r"^safety backup of the current state: (\S+)$", step.output, re.MULTILINE)
    if safety:
        found["safety"] = safety.group(1)


def put_back(remote: Remote, report: HostReport, safety: str) -> None:
    if not safety:
        run_step(remote, report, Step.failure("put back", "the restore named no safety backup: restore the newest backup in "
                                                          f"{BACKUP_DIR} by hand"))
        return
    step = Step.change("put back", f"the state from before the restore ({safety})", restore_script(remote.host.tracking.auth, safety))
    run_step(remote, report, step)
    show_output(report, step)


def clean_up(remote: Remote, report: HostReport) -> None:
    run_step(remote, report, Step.change("staged backup", f"remove {STAGE}", f"rm -rf {STAGE}"))


def restore_service(config: Config, service: TrackingService, source: str, accept_missing: bool,
                    connect: Connect = Remote) -> list[HostReport]:
    """Check, stop every replica, restore on the first, start and gate every replica; on a failure after the stop, the
    state from before comes back and the replicas start on it."""
    replicas: list[Host] = [balancer.replica_host(host, service) if service.fronted else host for host in service.replicas]
    first = replicas[:1]

    def on(hosts: list[Host], work) -> list[HostReport]:
        return run_on_hosts(config, hosts, work, connect=connect)

    found: dict = {}
    stages = [on(first, lambda remote, report: check_backup(remote, report, service, source, accept_missing))]
    if not failed(stages[-1]):
        stages.append(on(replicas, stop_server))
        if not failed(stages[-1]):
            stages.append(on(first, lambda remote, report: restore_database(remote, report, found)))
        restored = not failed(stages[-1])  # else nothing was restored: the replicas start on what they served
        stages.append(on(replicas, start_server))
        if restored and failed(stages[-1]):
            stages += [on(replicas, stop_server), on(first, lambda remote, report: put_back(remote, report, found.get("safety", ""))),
                       on(replicas, start_server)]
    stages.append(on(first, clean_up))
    return merge_reports(*stages)


def failed(reports: list[HostReport]) -> bool:
    return any(report.failed for report in reports)
