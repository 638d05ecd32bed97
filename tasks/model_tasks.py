"""`fab deploy-model`, `fab rollback-model`, `fab releases`: thin tasks over tasks.models."""

from __future__ import annotations

import getpass
import re
import socket
from pathlib import Path

from fabric import task
from invoke.exceptions import Exit
from rich.table import Table

from tasks import cli
from tasks.fleet import finish, run_on_hosts, run_one_host_at_a_time
from tasks.report import console

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def checked_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise Exit(f"error: --name {name!r}: use letters, digits, '-' and '_' (it names a directory and a systemd unit)", code=2)
    return name


@task(
    help={
        "run-id": "deploy runs:/ID/model",
        "model-uri": "or any model URI: models:/Name/Version, models:/Name@alias, models:/m-...",
        "name": "the model's service name on the hosts (default: model); each name has its own port",
        "sample": "JSON request for the health gate (default: the model's serving_input_example.json)",
        "check": "show the plan with diffs and change nothing",
    }
)
def deploy_model(c, run_id=None, model_uri=None, name="model", sample=None, check=False):
    """Deploy a model from the tracking server to the "models" hosts, one at a time, with a health gate and rollback."""
    from tasks.model_source import ModelError, fetch, model_uri as resolve_uri
    from tasks.models import Deployment, deploy_on

    name = checked_name(name)
    hosts = cli.hosts_for(c, role="models")
    try:
        uri = resolve_uri(run_id, model_uri)
        sample_text = Path(sample).read_text() if sample else None
        tracking = cli.tracking_uri(c)
        console.print(f"fetching {uri} from {tracking}")
        artifact = fetch(uri, tracking)
    except (ModelError, OSError) as error:
        raise Exit(f"error: {error}; nothing was changed", code=2) from None
    deployment = Deployment(name, artifact, sample_text if sample_text is not None else artifact.sample)
    if not deployment.sample:
        console.print("warning: the model has no serving_input_example.json and no --sample was given: the gate only checks /ping")
    tarball = deployment.tarball()
    console.print(f"model {artifact.uri}: run {artifact.run_id}, digest {artifact.digest[:12]}, release {deployment.release}")
    finish(run_one_host_at_a_time(c.config, hosts, lambda remote, report: deploy_on(remote, report, deployment, tarball), check))


@task(help={"name": "the model's service name (default: model)", "to": "a release name from `fab releases` (default: the previous one)", "check": "show the plan and change nothing"})
def rollback_model(c, name="model", to="", check=False):
    """Serve the previous release of a model again (or --to RELEASE), one host at a time, with the health gate."""
    from tasks.models import rollback_on

    name = checked_name(name)
    by = f"{getpass.getuser()}@{socket.gethostname()}"
    hosts = cli.hosts_for(c, role="models")
    finish(run_one_host_at_a_time(c.config, hosts, lambda remote, report: rollback_on(remote, report, name, to, by), check))


@task(help={"name": "the model's service name (default: model)"})
def releases(c, name="model"):
    """Per host: the current, previous and kept releases of a model, and its deploy history."""
    from tasks.models import list_releases_on

    name = checked_name(name)
    hosts = cli.hosts_for(c, role="models")
    reports = run_on_hosts(c.config, hosts, lambda remote, report: list_releases_on(remote, report, name))
    for report in reports:
        if report.error:
            continue
        table = Table("release", "state", "run id", "deployed at", "by", title=f"{report.host}: {name}")
        for row in report.details.get("rows", []):
            table.add_row(*row)
        console.print(table)
        for entry in report.details.get("history", [])[-10:]:
            console.print(f"  {entry.get('at', '')}  {entry.get('action', ''):<8} {entry.get('from') or '-'} -> {entry.get('release', '')}  by {entry.get('by', '')}  {entry.get('reason', '')}")
    finish(reports)
