"""Tasks of model serving: `fab deploy-model`, `rollback-model`, `releases`, `predict`, `setup-lb`, `model-user`."""

from __future__ import annotations

import secrets
from pathlib import Path

from fabric import task
from invoke.exceptions import Exit

from tasks.cli import arguments
from tasks.credentials import MODEL_USER_CREDENTIALS
from tasks.fleet import end_with_recap, run_on_hosts
from tasks.report import console
from tasks.values import check_model_name


def checked_name(name: str) -> str:
    try:
        check_model_name(name)
    except ValueError as error:
        raise Exit(f"error: --name {name!r} {error}", code=2) from None
    return name


def check_fronted(c, name: str) -> None:
    """A model the balancer doesn't front would be switched with no drain and, behind the firewall, reach no client."""
    from tasks.serving.balancer import not_fronted

    problem = not_fronted(arguments.inventory(c), name)
    if problem:
        raise Exit(f"error: --name {name}: {problem}; nothing was changed", code=2)


ROLLING_HELP = {
    "batch-size": "hosts switched at once: a number or a percentage of the hosts (rounded up); default 1",
    "canary": "this many hosts go first, alone",
    "max-failures": "hosts allowed to fail (preflight or switch) before the deploy stops; default 0",
    "pause": "seconds to wait between batches",
    "rollback-all": "when the deploy stops, also roll back the hosts already updated",
    "break-lock": "remove another deploy's lock first (when that deploy is dead)",
}


BAKE_HELP = {
    "bake": "after the canary passed its gate, watch its live traffic at the balancers for this many seconds; a breach rolls it back",
    "max-error-rate": "with --bake: the share of 5xx answers the canary may give (default 1%)",
    "max-p99": "with --bake: the canary's p99 latency limit (default 250ms)",
    "canary-weight": "with --bake: the canary's share of the traffic while it bakes (nginx weights), e.g. 10%; default its plain share",
}


def rolling_options(batch_size, canary, max_failures, pause, rollback_all, break_lock, bake=None):
    from tasks.serving.rolling import PlanError, RollingOptions, plan_batches

    try:
        plan_batches(["check"], batch_size, int(canary))
    except (PlanError, ValueError) as error:
        raise Exit(f"error: {error}", code=2) from None
    return RollingOptions(str(batch_size), int(canary), int(max_failures), float(pause), rollback_all, break_lock, bake)


def bake_limits(c, bake, max_error_rate, max_p99, canary, canary_weight=""):
    """--bake's limits, checked before anything is fetched: it needs a canary, and lb hosts whose log shows its traffic."""
    from tasks.serving.bake import BakeError, BakeLimits, error_rate, seconds, share

    if not float(bake):
        if canary_weight:
            raise Exit("error: --canary-weight sets the canary's share while it bakes: give --bake SECONDS too", code=2)
        return None
    if float(bake) < 0:
        raise Exit("error: --bake must be a number of seconds", code=2)
    if int(canary) < 1:
        raise Exit("error: --bake judges the canary: give --canary N too", code=2)
    if not arguments.inventory(c).with_role("lb"):
        raise Exit("error: --bake reads the canary's traffic at the balancer: the inventory has no lb host; nothing was changed", code=2)
    try:
        return BakeLimits(float(bake), error_rate(max_error_rate), seconds(max_p99), share(canary_weight))
    except BakeError as error:
        raise Exit(f"error: {error}", code=2) from None


@task(
    help={
        "run-id": "deploy runs:/ID/model",
        "model-uri": "or any model URI: models:/Name/Version, models:/Name@alias, models:/m-...",
        "name": "the model's service name on the hosts (default: model); each name has its own port",
        "sample": "JSON request for the health gate (default: the model's serving_input_example.json)",
        "check": "show the plan with diffs and change nothing",
        **ROLLING_HELP,
        **BAKE_HELP,
    }
)
def deploy_model(c, run_id=None, model_uri=None, name="model", sample=None, check=False, batch_size="1", canary=0,
                 max_failures=0, pause=0.0, rollback_all=False, break_lock=False, bake=0.0, max_error_rate="1%", max_p99="250ms",
                 canary_weight=""):
    """Deploy a model from the tracking server to the "models" hosts: preflight in parallel, then batches with a health gate and rollback."""
    from tasks.serving.deploy import Deployment, HostDeploy
    from tasks.serving.firewall import policy as firewall_policy
    from tasks.serving.rolling import new_lock, rolling
    from tasks.serving.source import ModelError, fetch
    from tasks.serving.source import model_uri as resolve_uri

    name = checked_name(name)
    options = rolling_options(batch_size, canary, max_failures, pause, rollback_all, break_lock,
                              bake_limits(c, bake, max_error_rate, max_p99, canary, canary_weight))
    hosts = arguments.hosts_for(c, role="models")
    check_fronted(c, name)
    try:
        uri = resolve_uri(run_id, model_uri)
        sample_text = Path(sample).read_text() if sample else None
        tracking = arguments.tracking_uri(c)
        console.print(f"fetching {uri} from {tracking}")
        artifact = fetch(uri, tracking)
    except (ModelError, OSError) as error:
        raise Exit(f"error: {error}; nothing was changed", code=2) from None
    deployment = Deployment(name, artifact, sample_text if sample_text is not None else artifact.sample)
    if not deployment.sample:
        console.print("warning: the model has no serving_input_example.json and no --sample was given: the gate only checks /ping")
    tarball = deployment.tarball()
    console.print(f"model {artifact.uri}: run {artifact.run_id}, digest {artifact.digest[:12]}, release {deployment.release}")
    lock = new_lock(deployment.by, f"deploy {uri} as {name}")
    inventory = arguments.inventory(c)
    firewall = firewall_policy(inventory)

    def make_deploy(remote, report):
        return HostDeploy(remote, report, name, lock, deployment=deployment, tarball=tarball, break_lock=options.break_lock,
                          firewall_policy=firewall)

    end_with_recap(rolling(c.config, inventory, hosts, make_deploy, options, check, name))


@task(help={"name": "the model's service name (default: model)", "to": "a release name from `fab releases` (default: the previous one)",
            "check": "show the plan and change nothing", **ROLLING_HELP})
def rollback_model(c, name="model", to="", check=False, batch_size="1", canary=0, max_failures=0, pause=0.0,
                   rollback_all=False, break_lock=False):
    """Serve the previous release of a model again (or --to RELEASE), rolled across hosts like a deploy."""
    from tasks.ops.audit import operator
    from tasks.serving.deploy import HostRollback
    from tasks.serving.rolling import new_lock, rolling

    name = checked_name(name)
    options = rolling_options(batch_size, canary, max_failures, pause, rollback_all, break_lock)
    hosts = arguments.hosts_for(c, role="models")
    check_fronted(c, name)
    lock = new_lock(operator(), f"rollback {name}" + (f" to {to}" if to else ""))

    def make_deploy(remote, report):
        return HostRollback(remote, report, name, lock, to=to, break_lock=options.break_lock)

    end_with_recap(rolling(c.config, arguments.inventory(c), hosts, make_deploy, options, check, name))


@task(help={"name": "the model's service name (default: model)"})
def releases(c, name="model"):
    """Per host: the current, previous and kept releases of a model, and its deploy audit log."""
    from rich.table import Table

    from tasks.serving.deploy import list_releases_on

    name = checked_name(name)
    hosts = arguments.hosts_for(c, role="models")
    reports = run_on_hosts(c.config, hosts, lambda remote, report: list_releases_on(remote, report, name))
    for report in reports:
        if report.error:
            continue
        table = Table("release", "state", "run id", "deployed at", "by", title=f"{report.host}: {name}")
        for row in report.details.get("rows", []):
            table.add_row(*row)
        console.print(table)
        console.print(f"  {report.details.get('serving', '')}")
        for entry in report.details.get("audit", [])[-10:]:
            console.print(
                f"  {entry.get('at', '')}  {entry.get('action', ''):<8} {entry.get('from') or '-'} -> {entry.get('to', '')}"
                f"  {entry.get('result', '')}  by {entry.get('by', '')}"
            )
    end_with_recap(reports)


@task(help={"check": "show what would change, with diffs, and change nothing"})
def setup_lb(c, check=False):
    """nginx on the "lb" hosts: one upstream and one port per model over the model hosts, validated with nginx -t."""
    from tasks.serving.balancer import converge_lb

    hosts = arguments.hosts_for(c, role="lb")
    inventory = arguments.inventory(c)
    end_with_recap(run_on_hosts(c.config, hosts, lambda remote, report: converge_lb(remote, report, inventory), check=check))


@task(help={
    "name": "the model's service name (default: model)",
    "input": "a request file (JSON; .csv is sent as text/csv), or - for stdin; default: the serving release's own sample",
    "each": "ask every model host itself (over SSH, on 127.0.0.1) instead of the balancer",
    "user": "with sign-in on the balancer: whose ~/.mlflow/model-users/NAME.curl to use (default: the only one)",
})
def predict(c, name="model", input="", each=False, user=""):
    """Send one request to a deployed model; print the predictions and the host and release that answered."""
    import sys

    from tasks.fleet import guarded
    from tasks.report import HostReport
    from tasks.serving.predict import PredictError, credentials_of, on_host, read_request, show_answers, via_balancer

    name = checked_name(name)
    inventory = arguments.inventory(c)
    hosts = arguments.hosts_for(c, role="models")
    balancers = [] if each else inventory.with_role("lb")
    try:
        request = read_request(input, sys.stdin)
        auth = credentials_of(user) if balancers and inventory.lb.auth else None
    except PredictError as error:
        raise Exit(f"error: {error}; nothing was sent", code=2) from None
    if balancers:
        report = HostReport(balancers[0].name)
        guarded(report, lambda: report.details.update(answer=via_balancer(c.config, balancers[0], inventory, name, request, auth)))
        reports = [report]
    else:
        targets = hosts if each else hosts[:1]
        reports = run_on_hosts(c.config, targets, lambda remote, report: report.details.update(answer=on_host(remote, name, request)))
    show_answers(reports, name)
    end_with_recap(reports)


@task(help={
    "add": "a user to create on every lb host",
    "reset-password": "give this user a new password (its credentials file is rewritten)",
    "remove": "remove this user from every lb host",
    "credentials": f"the user's curl config file on this machine (default {MODEL_USER_CREDENTIALS})",
})
def model_user(c, add="", reset_password="", remove="", credentials=""):
    """Users of the model endpoints (nginx basic auth on the lb hosts); credentials written here for `curl -K FILE`."""
    from tasks.credentials import chosen_action, commit, write_pending
    from tasks.serving.users import change_on

    action, name = chosen_action(add, reset_password, remove)
    inventory = arguments.inventory(c)
    if not inventory.lb.auth:
        raise Exit(f"error: {inventory.path}: [lb] auth = false: the model endpoints take no users", code=2)
    path = Path(credentials or MODEL_USER_CREDENTIALS.format(name=name)).expanduser()
    if action == "add" and path.exists():
        raise Exit(f"error: {path} exists already: pass --credentials PATH, or --reset-password {name}", code=2)
    hosts = arguments.hosts_for(c, role="lb")
    password = secrets.token_urlsafe(24) if action != "remove" else ""
    pending = write_pending(path, f'user = "{name}:{password}"\n') if password else None
    reports = run_on_hosts(c.config, hosts, lambda remote, report: change_on(remote, report, action, name, password))
    accepted = [report.host for report in reports if not report.failed]
    refused = [report.host for report in reports if report.failed]
    if pending and accepted:
        commit(pending, path)
        console.print(f"credentials of {name} written to {path} (mode 0600): curl -K {path} https://LB:PORT/invocations ...")
        if refused:
            console.print(f"[red]{', '.join(refused)} did not take the new password: fix them, then "
                          f"`fab model-user --reset-password {name}` sets one password everywhere[/]")
    elif pending:
        pending.unlink()
    if action == "remove" and accepted and path.exists():
        path.unlink()
        console.print(f"{path} removed")
    end_with_recap(reports)
