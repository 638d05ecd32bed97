"""The one precondition every task checks first: a Debian/Ubuntu host with systemd as init."""

from tasks.ops.steps import Step


def check_platform(os_fact: str) -> Step:
    """Debian/Ubuntu with systemd as init, or nothing is touched."""
    first, _, rest = os_fact.partition("\n")
    os_id, _, remainder = first.partition("|")
    id_like, _, pretty = remainder.partition("|")
    family = {os_id, *id_like.split()}
    if not family & {"debian", "ubuntu"}:
        return Step.failure("platform", f"{pretty or 'unknown OS'} is not Debian/Ubuntu: nothing was changed")
    if "systemd" not in rest:
        return Step.failure("platform", f"{pretty} does not run systemd as init: nothing was changed")
    return Step.ok("platform", f"{pretty}, systemd")
