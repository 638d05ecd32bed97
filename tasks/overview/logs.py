"""`fab logs`: the journal of our services, from every host that runs them."""

from __future__ import annotations

import re

from invoke.exceptions import Exit

from tasks.values import check_model_name

# the transient units of `fab run-project` (tasks/training/run.py new_unit_name)
RUN_UNIT = re.compile(r"mlflow-run-[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}")


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
