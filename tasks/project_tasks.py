"""`fab run-project`: an MLflow Project run on a training host against the tracking server."""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

from fabric import task
from invoke.exceptions import Exit

from tasks import cli
from tasks.fleet import finish, run_on_hosts
from tasks.report import console

RUN_ID = re.compile(r"Run \(ID '([0-9a-f]{32})'\)|in run with ID '([0-9a-f]{32})'")
STOP_DEADLINE = 120


def run_id_in(output: str) -> str:
    match = RUN_ID.search(output)
    return next(group for group in match.groups() if group) if match else ""


@task(
    iterable=["P"],
    help={
        "project": "a project directory (with an MLproject file) or a git URL, cloned on this machine",
        "P": "a parameter of the entry point, name=value (repeat for more)",
        "version": "with a git URL: the branch, tag or commit to run",
        "entry-point": "the entry point to run (default: main)",
        "experiment": "the experiment's name, created when missing (default: the project's name)",
        "detach": "start the run and return; follow it with `fab logs --service run:UNIT`",
        "credentials": "the MLflow credentials file the run signs in with (default ~/.mlflow/credentials)",
    },
)
def run_project(c, project, P=None, version="", entry_point="main", experiment="", detach=False, credentials="~/.mlflow/credentials"):
    """Run an MLflow Project on a "train" host as an unprivileged transient unit, logging to the tracking server."""
    from tasks.ops.pyenv import EnvSpec
    from tasks.project import ProjectError, checked_parameters, clone, load, pack, with_mlflow
    from tasks.tracking_api import TrackingApi, TrackingApiError
    from tasks.training import RunRequest, new_unit_name, prepare_and_start

    hosts = cli.hosts_for(c, role="train")
    if len(hosts) > 1:
        raise Exit(f"error: a run goes to one host: pick one of {', '.join(host.name for host in hosts)} with -H", code=2)
    inventory = cli.inventory(c)
    tracking_uri = cli.tracking_uri(c)
    credentials_path = Path(credentials).expanduser()
    with tempfile.TemporaryDirectory(prefix="mlflow-fab-project-") as scratch:
        try:
            is_url = "://" in project or project.startswith("git@")
            if version and not is_url:
                raise ProjectError("--version is for a git URL; a directory runs as it is")
            directory = clone(project, version, Path(scratch)) if is_url else Path(project)
            spec = load(directory)
            parameters = checked_parameters(spec, entry_point, list(P or []))
            tarball = pack(directory)
            api = TrackingApi.for_user(tracking_uri, credentials_path)
            api.call("GET", "experiments/search", params={"max_results": 1})
        except (ProjectError, TrackingApiError) as error:
            raise Exit(f"error: {error}; nothing was run", code=2) from None
    settings = inventory.train
    packages = with_mlflow(spec.requirements, inventory.tracking.mlflow_version)
    env = EnvSpec(settings.env_manager, packages, python=spec.python if settings.env_manager == "conda" else "",
                  allow_source_builds=settings.allow_source_builds)
    certificate = Path(api.verify).read_text() if isinstance(api.verify, str) else ""
    # not MLflow's Default experiment: a user may read it but not log to it
    request = RunRequest(spec.name, tarball, env, entry_point, parameters, experiment or spec.name, tracking_uri,
                         credentials_path.read_text() if api.auth else "", certificate, new_unit_name())
    console.print(f"project {spec.name} ({directory if not is_url else project}), entry point {entry_point}, "
                  f"tracking {tracking_uri}{' as ' + api.auth[0] if api.auth else ''}")
    reports = run_on_hosts(c.config, hosts, lambda remote, report: prepare_and_start(remote, report, request))
    if any(report.failed for report in reports) or detach:
        if detach and not reports[0].failed:
            console.print(f"started {request.unit} on {hosts[0].name}: "
                          f"fab logs -H {hosts[0].name} --service run:{request.unit} --follow")
        finish(reports)
        return
    finish(follow_run(c, hosts[0], request.unit, api))


def follow_run(c, host, unit: str, api):
    """Stream the run's output until it ends; Ctrl-C stops it and marks it KILLED. Reports with the run's outcome."""
    from tasks.fleet import guarded
    from tasks.logs import PrefixedLines
    from tasks.ops.remote import Remote
    from tasks.ops.steps import Step
    from tasks.report import show_step
    from tasks.training import follow_script, stop

    def follow(remote, report):
        result = remote.run_script(follow_script(unit), step="follow", out_stream=PrefixedLines(remote.host.name))
        report.details["output"] = result.stdout

    interrupted = False
    try:
        reports = run_on_hosts(c.config, [host], follow)
    except KeyboardInterrupt:
        interrupted = True
        console.print(f"\nCtrl-C: stopping {unit} on {host.name} (mlflow run gets SIGINT)")
        remote = Remote(host, c.config.clone())
        try:
            stop(remote, unit)
            output = remote.run_script(f"journalctl -u {unit} -o cat --no-pager", step="journal").stdout
        finally:
            remote.close()
        from tasks.report import HostReport

        reports = [HostReport(host.name)]
        reports[0].details["output"] = output
    report = reports[0]
    run_id = run_id_in(str(report.details.get("output", "")))
    if not run_id:
        if not report.error:
            step = Step.failure("run", "the run ended before MLflow created a run: see its output above")
            report.steps.append(step)
            show_step(report, step)
        return reports

    def outcome():
        if interrupted:
            api.call("POST", "runs/update", json_body={"run_id": run_id, "status": "KILLED", "end_time": int(time.time() * 1000)})
        info = api.run(run_id)
        summary = f"{run_id} {info['status']}: {api.run_url(info)}"
        step = Step.ok("run", summary) if info["status"] == "FINISHED" else Step.failure("run", summary)
        report.steps.append(step)
        show_step(report, step)

    guarded(report, outcome)
    return reports
