"""An MLflow Project run on a training host: its env built once, its code shipped, `mlflow run` in a transient unit.

Runbook this replaces: ssh to the GPU box, git clone, conda env create, export MLFLOW_TRACKING_URI and a
password in the shell, `nohup mlflow run . -P alpha=0.5 &`, and hope the SSH session outlives it.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import time
import uuid
from dataclasses import dataclass

from tasks.fleet import guarded, run_on_hosts
from tasks.ops import facts as f
from tasks.ops import wheelsync
from tasks.ops.files import ensure_directory, ensure_file
from tasks.ops.platform import check_platform
from tasks.ops.pyenv import ENVS_ROOT, EnvSpec, ensure_env
from tasks.ops.remote import HostError, Remote, private_path
from tasks.ops.steps import Step, apply
from tasks.ops.system import ensure_packages, ensure_system_user
from tasks.report import HostReport, PrefixedLines, console, record, show_step
from tasks.templates import render_script

RUN_ID = re.compile(r"Run \(ID '([0-9a-f]{32})'\)|in run with ID '([0-9a-f]{32})'")


def run_id_in(output: str) -> str:
    match = RUN_ID.search(output)
    return next(group for group in match.groups() if group) if match else ""


TRAIN_USER = "mlflow-train"
TRAIN_HOME = "/var/lib/mlflow-train"
RUNS_DIR = f"{TRAIN_HOME}/runs"
CREDENTIALS = f"{TRAIN_HOME}/.mlflow/credentials"
CERTIFICATE = f"{TRAIN_HOME}/tracking.pem"
TRAINING_PACKAGES = ["python3-venv", "ca-certificates"]
UNIT_PREFIX = "mlflow-run-"
# the hardening our other units have, where a training script still works (it may write its run directory)
HARDENING = ["NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes",
             "ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectControlGroups=yes", "RestrictSUIDSGID=yes",
             "LockPersonality=yes", "RestrictRealtime=yes", "CapabilityBoundingSet=", "UMask=0027"]
# `systemctl stop` sends SIGINT to `mlflow run` alone, which stops its command; then anything left gets SIGKILL
STOP = ["KillMode=mixed", "KillSignal=SIGINT", "TimeoutStopSec=60"]


def new_unit_name() -> str:
    return f"{UNIT_PREFIX}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class RunRequest:
    """What run-project asks one training host to do."""

    project_name: str
    tarball: bytes
    spec: EnvSpec
    entry_point: str
    parameters: dict[str, str]
    experiment: str
    tracking_uri: str
    credentials: str  # the [mlflow] credentials file's text; "" with sign-in off
    certificate: str  # the tracking server's PEM to trust; "" for a certificate the host's CAs trust
    unit: str

    @property
    def run_dir(self) -> str:
        return f"{RUNS_DIR}/{self.unit}"

    @property
    def env_path(self) -> str:
        return self.spec.path(ENVS_ROOT, "project")

    @property
    def env_marker_fact(self) -> f.Fact[str]:
        return f.Fact("env_marker", f"cat {self.env_path}/.complete")


INSTALLED_PACKAGES = f.installed_packages(TRAINING_PACKAGES)
TRAIN_USER_EXISTS = f.user_exists(TRAIN_USER)
CREDENTIALS_FILE = f.file_content(CREDENTIALS)
CERTIFICATE_FILE = f.file_content(CERTIFICATE)


def facts(request: RunRequest) -> list[f.Fact]:
    return [
        f.os_release(),
        INSTALLED_PACKAGES,
        TRAIN_USER_EXISTS,
        f.python_version(),
        request.env_marker_fact,
        *[f.path_stat(path) for path, *_ in directories()],
        CREDENTIALS_FILE,
        CERTIFICATE_FILE,
    ]


def directories() -> list[tuple[str, str, str, str]]:
    return [
        (TRAIN_HOME, "root", TRAIN_USER, "750"),
        (f"{TRAIN_HOME}/.mlflow", TRAIN_USER, TRAIN_USER, "700"),
        (RUNS_DIR, TRAIN_USER, TRAIN_USER, "750"),
        (ENVS_ROOT, "root", "root", "755"),
    ]


def plan(request: RunRequest, facts: f.Facts) -> list[Step]:
    """Packages, the user, its directories, the env, the credentials and certificate the run reads."""
    steps = [ensure_packages(TRAINING_PACKAGES, facts[INSTALLED_PACKAGES])]
    steps.append(ensure_system_user(TRAIN_USER, TRAIN_HOME, facts[TRAIN_USER_EXISTS]))
    steps += [ensure_directory(path, owner, group, mode, facts[f.path_stat(path)]) for path, owner, group, mode in directories()]
    steps.append(ensure_env(request.spec, request.env_path, facts[request.env_marker_fact], name="python env"))
    if request.credentials:
        steps.append(ensure_file(CREDENTIALS, request.credentials, facts[CREDENTIALS_FILE], TRAIN_USER, TRAIN_USER, "600"))
    if request.certificate:
        steps.append(ensure_file(CERTIFICATE, request.certificate, facts[CERTIFICATE_FILE]))
    return steps


def start_script(request: RunRequest) -> str:
    """Unpack the project into its own run directory and start `mlflow run` there as a transient unit."""
    environment = {
        "HOME": TRAIN_HOME,
        "PATH": f"{request.env_path}/bin:/usr/local/bin:/usr/bin:/bin",
        "MLFLOW_TRACKING_URI": request.tracking_uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        # the project is shipped without .git and the host needs no git: MLflow records no commit, quietly
        "GIT_PYTHON_REFRESH": "quiet",
        **({"MLFLOW_TRACKING_SERVER_CERT_PATH": CERTIFICATE} if request.certificate else {}),
    }
    properties = [
        f"WorkingDirectory={request.run_dir}",
        # the parent too, so that ExecStopPost (sandboxed like the run) can remove the run's directory
        f"ReadWritePaths={RUNS_DIR}",
        *HARDENING,
        *STOP,
        *[f"Environment={key}={value}" for key, value in environment.items()],
        # the unpacked copy goes when the run ends, however it ends
        f"ExecStopPost=/bin/rm -rf {request.run_dir}",
    ]
    command = [f"{request.env_path}/bin/mlflow", "run", request.run_dir, "--env-manager", "local", "-e", request.entry_point]
    for name, value in request.parameters.items():
        command += ["-P", f"{name}={value}"]
    if request.experiment:
        command += ["--experiment-name", request.experiment]
    options = " ".join(f"-p {shlex.quote(item)}" for item in properties)
    description = shlex.quote(f"mlflow run {request.project_name} -e {request.entry_point}")
    return "\n".join([
        f"install -d -o {TRAIN_USER} -g {TRAIN_USER} -m 750 {request.run_dir}",
        # root opens the upload (in a private directory), the unprivileged user unpacks it
        f"runuser -u {TRAIN_USER} -- tar -xz -C {request.run_dir} --no-same-owner < {upload_path(request.unit)}",
        f"systemd-run --quiet --collect --unit={request.unit} --description={description} --uid={TRAIN_USER} --gid={TRAIN_USER} "
        f"{options} {' '.join(shlex.quote(part) for part in command)}",
    ])


def follow_script(unit: str) -> str:
    """Print the unit's journal as it grows until the unit has ended (no line twice, none missed)."""
    return render_script("journal-follow.sh.j2", unit=unit)


def upload_path(unit: str) -> str:
    return private_path(f"{unit}.tgz")


def prepare_and_start(remote: Remote, report: HostReport, request: RunRequest) -> None:
    """Converge what the run needs, then start it; the unit runs on whatever happens to this laptop."""
    gathered = f.gather(remote, facts(request))
    platform = check_platform(gathered[f.os_release()])
    if platform.failed:
        record(report, [platform])
        return
    show = lambda step: show_step(report, step)  # noqa: E731
    spec, wheels = wheelsync.supply(remote, request.spec, gathered[request.env_marker_fact], report.check)
    record(report, wheels)
    request = dataclasses.replace(request, spec=spec)
    steps = plan(request, gathered)
    report.steps += steps
    if not apply(remote, steps, show):
        return
    start = Step.change("start", f"{request.unit}: mlflow run -e {request.entry_point} "
                        + " ".join(f"-P {name}={value}" for name, value in request.parameters.items()), start_script(request))
    report.steps.append(start)
    with remote.private_upload(request.tarball, upload_path(request.unit)):
        if not apply(remote, [start], show):
            raise HostError("start", start.output.strip()[-500:] or "systemd-run failed")
    report.details["unit"] = request.unit


def stop(remote: Remote, unit: str) -> None:
    """SIGINT to `mlflow run` (it stops its command and ends the run), SIGKILL to what is left after 60 s."""
    remote.run_script(f"systemctl stop {unit} 2>/dev/null || true", step="stop")


def follow_run(config, host, unit: str, api) -> list[HostReport]:
    """Stream the run's output until it ends; Ctrl-C stops it and marks it KILLED. Reports with the run's outcome."""

    def follow(remote, report):
        result = remote.run_script(follow_script(unit), step="follow", out_stream=PrefixedLines(remote.host.name))
        report.details["output"] = result.stdout

    interrupted = False
    try:
        reports = run_on_hosts(config, [host], follow)
    except KeyboardInterrupt:
        interrupted = True
        console.print(f"\nCtrl-C: stopping {unit} on {host.name} (mlflow run gets SIGINT)")
        remote = Remote(host, config.clone())
        try:
            stop(remote, unit)
            output = remote.run_script(f"journalctl -u {unit} -o cat --no-pager", step="journal").stdout
        finally:
            remote.close()
        reports = [HostReport(host.name)]
        reports[0].details["output"] = output
    report = reports[0]
    run_id = run_id_in(str(report.details.get("output", "")))
    if not run_id:
        if not report.error:
            step = Step.failure("run", "the run ended before MLflow created a run: see its output above")
            record(report, [step])
        return reports

    def outcome():
        if interrupted:
            api.call("POST", "runs/update", json_body={"run_id": run_id, "status": "KILLED", "end_time": int(time.time() * 1000)})
        info = api.run(run_id)
        summary = f"{run_id} {info['status']}: {api.run_url(info)}"
        step = Step.ok("run", summary) if info["status"] == "FINISHED" else Step.failure("run", summary)
        record(report, [step])

    guarded(report, outcome)
    return reports
