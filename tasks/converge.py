"""One host brought to its plan, in the order every task runs it: gather facts, check the platform, plan, then show
the plan (check mode, or a plan that cannot run) or apply it."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tasks.ops import facts as f
from tasks.ops.platform import check_platform
from tasks.ops.remote import Remote
from tasks.ops.steps import Step, apply
from tasks.report import HostReport, record, show_step

FAILED, CHECKED, UNCHANGED, APPLIED = "failed", "checked", "unchanged", "applied"


@dataclass
class Converged:
    """How one host's converge ended (failed, checked, unchanged or applied), from which facts, with which steps."""

    outcome: str
    facts: f.Facts
    steps: list[Step]

    @property
    def done(self) -> bool:
        """The host now matches its plan."""
        return self.outcome in (UNCHANGED, APPLIED)


def converge_host(remote: Remote, report: HostReport, gather: Callable[[], f.Facts],
                  plan: Callable[[f.Facts], list[Step]],
                  apply_plan: Callable[[f.Facts, list[Step]], bool] | None = None) -> Converged:
    """gather() the facts; on Debian/Ubuntu with systemd, plan(facts); show the steps when the plan can't run, changes
    nothing, or in check mode; else apply_plan(facts, steps) (default: apply them in one remote script)."""
    facts = gather()
    platform = check_platform(facts[f.os_release()])
    record(report, [platform])
    if platform.failed:
        return Converged(FAILED, facts, [platform])
    steps = plan(facts)
    report.steps += steps
    failed = any(step.failed for step in steps)
    if report.check or failed or not any(step.changed for step in steps):
        for step in steps:
            show_step(report, step)
        return Converged(FAILED if failed else CHECKED if report.check else UNCHANGED, facts, steps)
    applied = apply_plan(facts, steps) if apply_plan else apply_shown(remote, report, steps)
    return Converged(APPLIED if applied else FAILED, facts, steps)


def apply_shown(remote: Remote, report: HostReport, steps: list[Step], upload: tuple[bytes | Path, str] | None = None) -> bool:
    """Apply the steps, each shown as it ends; UPLOAD (data, its path on the host) is there only while they run."""
    with remote.private_upload(*upload) if upload else nullcontext():
        return apply(remote, steps, lambda step: show_step(report, step))
