"""`fab run-project`: an MLflow Project run on a training host against the tracking server."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fabric import task
from invoke.exceptions import Exit

from tasks.cli import arguments
from tasks.credentials import TRACKING_CREDENTIALS
from tasks.fleet import end_with_recap, run_on_hosts
from tasks.report import console


@task(
    iterable=["P"],
    help={
        "project": "a project directory (with an MLproject file) or a git URL, cloned on this machine",
        "P": "a parameter of the entry point, name=value (repeat for more)",
        "version": "with a git URL: the branch, tag or commit to run",
        "entry-point": "the entry point to run (default: main)",
        "experiment": "the experiment's name, created when missing (default: the project's name)",
        "detach": "start the run and return; follow it with `fab logs --service run:UNIT`",
        "credentials": f"the MLflow credentials file the run signs in with (default {TRACKING_CREDENTIALS})",
    },
)
def run_project(c, project, P=None, version="", entry_point="main", experiment="", detach=False, credentials=TRACKING_CREDENTIALS):
    """Run an MLflow Project on a "train" host as an unprivileged transient unit, logging to the tracking server."""
    from tasks.ops.pyenv import EnvSpec
    from tasks.tracking.api import TrackingApi, TrackingApiError
    from tasks.training.project import ProjectError, checked_parameters, clone, load, pack, with_mlflow
    from tasks.training.run import RunRequest, follow_run, new_unit_name, prepare_and_start

    hosts = arguments.hosts_for(c, role="train")
    if len(hosts) > 1:
        raise Exit(f"error: a run goes to one host: pick one of {', '.join(host.name for host in hosts)} with -H", code=2)
    inventory = arguments.inventory(c)
    tracking_uri = arguments.tracking_uri(c)
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
        end_with_recap(reports)
        return
    end_with_recap(follow_run(c.config, hosts[0], request.unit, api))
