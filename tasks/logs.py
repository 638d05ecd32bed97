"""`fab logs`: the journal of our services, from every host that runs them."""

from __future__ import annotations

import io
import re

from fabric import task
from invoke.exceptions import Exit

from tasks import cli
from tasks.fleet import finish, run_on_hosts
from tasks.ops.steps import Step
from tasks.report import console
from tasks.values import check_model_name

# the transient units of `fab run-project` (tasks/training.py new_unit_name)
RUN_UNIT = re.compile(r"mlflow-run-[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}")


class PrefixedLines(io.TextIOBase):
    """An out_stream that prints each complete line at once, prefixed with its host."""

    def __init__(self, host: str):
        self.host, self.buffer = host, ""

    def write(self, text: str) -> int:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            console.out(f"{self.host} | {line}", highlight=False)
        return len(text)


def unit_and_role(service: str) -> tuple[str, str]:
    if service == "tracking":
        return "mlflow-tracking", "tracking"
    kind, _, name = service.partition(":")
    if kind == "run":
        if not RUN_UNIT.fullmatch(name):
            raise Exit(f"error: --service {service!r}: give the unit run-project printed, run:mlflow-run-...", code=2)
        return name, "train"
    if kind != "model":
        raise Exit(f"error: --service {service!r}: use tracking, model:NAME or run:UNIT", code=2)
    try:
        check_model_name(name)
    except ValueError as error:
        raise Exit(f"error: --service {service!r}: the model name {error}", code=2) from None
    return f"mlflow-model@{name}", "models"


@task(help={"service": "tracking (default), model:NAME or run:UNIT (a run-project run)", "number": "lines per host (default 100)", "follow": "keep printing new lines until Ctrl-C"})
def logs(c, service="tracking", number=100, follow=False):
    """The journal of the tracking server or of a model service, from every host that runs it (or -H)."""
    unit, role = unit_and_role(service)
    hosts = cli.hosts_for(c, role=role)
    command = f"journalctl -u {unit} -n {int(number)} --no-pager -o short-iso" + (" -f" if follow else "")

    def read(remote, report):
        result = remote.run_script(command, step="journal", out_stream=PrefixedLines(remote.host.name))
        report.steps.append(Step.ok("journal", unit) if result.exited == 0 or follow else Step.failure("journal", result.stdout[-300:]))

    try:
        finish(run_on_hosts(c.config, hosts, read))
    except KeyboardInterrupt:
        console.print("\nstopped following")
