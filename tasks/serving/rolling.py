"""Rolling a release across model hosts: parallel preflight, canary, batches drained from the balancer,
a failure budget counted over the whole deploy, rollback of the failing batch (and with --rollback-all,
of every updated host), and a per-host table at the end.
"""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from fabric import Config
from invoke.exceptions import Exit
from rich.table import Table

from tasks import fleet
from tasks.fleet import Connect, in_parallel
from tasks.inventory import Host, Inventory
from tasks.ops.lock import Lock, lock_path, release_script
from tasks.ops.remote import HostError, Remote
from tasks.report import HostReport, console, show_error, show_note, show_recap
from tasks.serving import switch as model_switch
from tasks.serving.bake import Bake, BakeLimits, Verdict, weights
from tasks.serving.deploy import HostRollout
from tasks.values import address_port

PREFLIGHT_TIMEOUT = 1800
UNLOCK_TIMEOUT = 120
SWITCH_MARGIN = 60


class PlanError(ValueError):
    """A bad --batch-size or --canary."""


class Interrupted(Exception):
    """Ctrl-C: the hosts' work in flight has settled (or the user stopped waiting for it)."""


def batch_size_of(text: str, total: int) -> int:
    """'2' or '25%' of the hosts; percentages round up, so '50%' always makes two batches."""
    text = str(text).strip()
    try:
        if text.endswith("%"):
            percent = float(text[:-1])
            if not 0 < percent <= 100:
                raise ValueError
            return max(1, math.ceil(total * percent / 100))
        size = int(text)
        if size < 1:
            raise ValueError
        return size
    except ValueError:
        raise PlanError(f"--batch-size {text!r}: give a number of hosts (2) or a percentage (25%)") from None


def plan_batches(names: list[str], batch_size: str = "1", canary: int = 0) -> list[list[str]]:
    """The canary hosts alone first, then the rest in batches of batch_size (a percentage of all hosts)."""
    if canary < 0:
        raise PlanError("--canary must be 0 or more")
    size = batch_size_of(batch_size, len(names))
    batches = [names[:canary]] if canary else []
    rest = names[canary:]
    batches += [rest[start:start + size] for start in range(0, len(rest), size)]
    return [batch for batch in batches if batch]


@dataclass(frozen=True)
class RollingOptions:
    batch_size: str = "1"
    canary: int = 0
    max_failures: int = 0
    pause: float = 0.0
    rollback_all: bool = False
    break_lock: bool = False
    # the canary watched under its live traffic before the other batches (None: no bake)
    bake: BakeLimits | None = None


def guarded(deploy: HostRollout, phase: Callable[[], None]) -> None:
    """Run one phase of one host; its failure is reported on that host and recorded as its outcome."""
    if not fleet.guarded(deploy.report, phase):
        deploy.outcome = "unreachable" if deploy.report.unreachable else "failed"


def timed_out(deploy: HostRollout, seconds: float) -> None:
    fleet.timed_out(deploy.report, deploy.remote, seconds)
    deploy.outcome = "unreachable"


def release_abandoned_locks(config: Config, deploys: list[HostRollout], connect: Connect = Remote) -> None:
    """A host that timed out or lost its connection may still hold this deploy's lock: release it over a new connection,
    or say which lock stays and how to remove it. Only a lock with this deploy's id is ever removed."""
    released: set[str] = set()

    def release(deploy: HostRollout) -> None:
        remote = connect(deploy.remote.host, config.clone())
        try:
            remote.run_script(release_script(deploy.model.name, deploy.lock), step="unlock")
            released.add(deploy.name)
        except HostError:
            pass
        finally:
            remote.close()

    in_parallel(deploys, release, UNLOCK_TIMEOUT, lambda deploy: None)
    for deploy in deploys:
        path = lock_path(deploy.model.name)
        if deploy.name in released:
            show_note(deploy.report, f"this deploy's lock {path} released over a new connection")
        else:
            deploy.report.error += (f"; this deploy's lock {path} may still be held there (id {deploy.lock.id}): when "
                                    f"{deploy.name} answers again, rerun with --break-lock, or run `rm -f {path}` on it")


def abandoned(deploy: HostRollout) -> None:
    """Ctrl-C twice: we stop waiting for this host; what it started on the host ends by itself, and keeps its lock until then."""
    deploy.outcome = "interrupted"
    deploy.report.error = ("interrupted while working: a switch started there finishes or rolls back by itself; "
                           "see `fab releases`, and rerun with --break-lock once it is done")
    show_error(deploy.report)


def settle(deploys: list[HostRollout], phase: Callable[[HostRollout], None], timeout: float) -> None:
    """phase(deploy) on every host in parallel; on Ctrl-C, wait for the hosts still working (a second Ctrl-C stops
    waiting), then raise Interrupted. Invoke turns SIGINT into KeyboardInterrupt in this thread only: the others go on."""
    settled = {id(deploy): threading.Event() for deploy in deploys}

    def run(deploy: HostRollout) -> None:
        try:
            guarded(deploy, lambda: phase(deploy))
        finally:
            settled[id(deploy)].set()

    deadline = time.monotonic() + timeout
    try:
        in_parallel(deploys, run, timeout, lambda d: timed_out(d, timeout))
        return
    except KeyboardInterrupt:
        working = [deploy for deploy in deploys if not settled[id(deploy)].is_set()]
    if working:
        console.print(f"[red]interrupted[/]: waiting up to {deadline - time.monotonic():.0f} s for {', '.join(d.name for d in working)} "
                      "to finish what they started (Ctrl-C again to stop waiting)")
    try:
        for deploy in working:
            if not settled[id(deploy)].wait(max(0.0, deadline - time.monotonic())):
                timed_out(deploy, timeout)
    except KeyboardInterrupt:
        for deploy in working:
            if not settled[id(deploy)].is_set():
                abandoned(deploy)
    raise Interrupted


class Balancer:
    """The lb hosts of the inventory; a drain rewrites this model's own nginx config on each of them (other models'
    drained hosts stay as their deploys set them) and waits for in-flight requests."""

    def __init__(self, inventory: Inventory, config: Config, model: str, connect: Connect = Remote):
        self.inventory, self.model = inventory, model
        self.remotes = [connect(host, config.clone()) for host in inventory.with_role("lb")]
        self.drained: set[str] = set()
        self.weights: dict[str, int] = {}  # a baking canary's share of the traffic; none: every host its plain share

    def set_drained(self, hosts: set[str], why: str) -> None:
        """Every lb host gets these hosts down; when one lb host fails, those already changed are put back."""
        self._set(set(hosts), self.weights, why)

    def set_weights(self, weights: dict[str, int], why: str) -> None:
        """Every lb host gets these nginx weights (none: even); when one lb host fails, those already changed are put back."""
        self._set(self.drained, weights, why)

    def _set(self, hosts: set[str], weights: dict[str, int], why: str) -> None:
        if not self.remotes or (hosts, weights) == (self.drained, self.weights):
            return
        changed: list[Remote] = []
        for remote in self.remotes:
            failure = self._drain(remote, hosts, weights, why)
            if failure:
                raise HostError("balancer", f"{remote.host.name}: {failure}{self._put_back(changed, hosts, weights)}")
            console.print(f"{'balancer':>12} [bold]{remote.host.name}[/] {why}")
            changed.append(remote)
        self.drained, self.weights = set(hosts), dict(weights)

    def _drain(self, remote: Remote, hosts: set[str], weights: dict[str, int], why: str) -> str:
        """'' when this lb host now has exactly these hosts down and these weights, else what went wrong."""
        from tasks.serving.balancer import drain

        try:
            step = drain(remote, self.inventory, self.model, frozenset(hosts), why, weights)
        except HostError as error:
            return error.message
        return (step.output[-500:].strip() or "failed") if step.failed else ""

    def _put_back(self, changed: list[Remote], hosts: set[str], weights: dict[str, int]) -> str:
        """The lb hosts already changed keep down only the hosts that were down before and are meant to be, with the
        weights they had: a failed drain undrains them again, a failed undrain leaves them undrained."""
        keep = self.drained & hosts
        if not changed or (keep, self.weights) == (hosts, weights):
            return ""
        results = []
        for remote in changed:
            failure = self._drain(remote, keep, self.weights, "put back")
            results.append(f"{remote.host.name} {'could not be put back: ' + failure if failure else 'put back'}")
        down = ", ".join(sorted(keep)) or "none"
        return f"; {'; '.join(results)} (drained there: {down})"

    def close(self) -> None:
        for remote in self.remotes:
            remote.close()


def new_lock(by: str, what: str) -> Lock:
    return Lock(id=uuid.uuid4().hex, by=by, pid=os.getpid(), what=what, at=time.time())


def rolling(config: Config, inventory: Inventory, hosts: list[Host], make_deploy: Callable[[Remote, HostReport], HostRollout],
            options: RollingOptions, check: bool, model: str, connect: Connect = Remote) -> list[HostReport]:
    deploys = [make_deploy(connect(host, config.clone()), HostReport(host.name, check=check)) for host in hosts]
    balancer = Balancer(inventory, config, model, connect) if not check else None
    interrupted = False
    try:
        console.rule("preflight: every host in parallel, no service touched")
        settle(deploys, lambda d: d.preflight(), PREFLIGHT_TIMEOUT)
        failures = None if check else _preflight_failures(deploys, options)
        if failures is None:
            return [deploy.report for deploy in deploys]
        bake = Bake(balancer.remotes, model, options.bake) if options.bake and balancer else None
        if bake and not _bake_can_read(bake, deploys):
            return [deploy.report for deploy in deploys]
        _roll_batches(deploys, failures, options, balancer, bake)
    except (Interrupted, KeyboardInterrupt):
        interrupted = True
        console.print("[red]interrupted (Ctrl-C): no further host is switched[/]")
    finally:
        _wind_up(config, deploys, balancer, connect)
    _show_outcomes(deploys)
    if interrupted:
        show_recap([deploy.report for deploy in deploys])
        raise Exit("interrupted (Ctrl-C): the table above says what each host serves", code=130)
    return [deploy.report for deploy in deploys]


def _preflight_failures(deploys: list[HostRollout], options: RollingOptions) -> list[HostRollout] | None:
    """The hosts that failed preflight, within the budget; None when over it (nothing is switched)."""
    failures = [d for d in deploys if d.outcome in ("failed", "unreachable")]
    if len(failures) > options.max_failures:
        console.print(f"[red]preflight failed on {', '.join(d.name for d in failures)}: stopping before any traffic moved[/]")
        return None
    for deploy in failures:
        show_note(deploy.report, "skipped: preflight failed (allowed by --max-failures)")
    return failures


def _bake_can_read(bake: Bake, deploys: list[HostRollout]) -> bool:
    """Before the first switch: a bake that could not read the balancers' logs would judge nothing."""
    try:
        bake.start()
    except HostError as error:
        console.print(f"[red]--bake: {error}: stopping before the first switch[/]")
        for deploy in deploys:
            deploy.report.error = f"not deployed: --bake can't read the balancer's log ({error})"
        return False
    return True


def _bake_canary(canary: list[HostRollout], bake: Bake, balancer: Balancer | None) -> bool:
    """The canary under its live traffic for the bake's seconds (with --canary-weight, that share of it); a breach (or
    logs that can't be read, or weights that can't be set) rolls it back."""
    upstreams = [address_port(d.remote.host.address, d.remote.host.model(bake.model).port) for d in canary]
    names = ", ".join(d.name for d in canary)
    console.rule(f"bake: {names} under live traffic for {bake.limits.seconds:g} s ({bake.limits.describe()})")
    share = bake.limits.canary_share
    weighted = weights({d.name for d in canary}, [h.name for h in balancer.inventory.with_role("models")], share) if share and balancer else {}
    try:
        if weighted:
            balancer.set_weights(weighted, f"{names} weighted to {float(share):.0%} of the traffic while it bakes")
        bake.start()
        time.sleep(bake.limits.seconds)  # the canary serves meanwhile: its answers are what is judged
        verdict = bake.verdict(upstreams)
    except HostError as error:
        why = "the bake could not read the balancer's log" if error.step.startswith("bake") else "the canary's weight could not be set"
        verdict = Verdict(False, f"{why} ({error})")
    finally:
        unweighted = _even_weights(balancer) if weighted else ""
    if unweighted:
        verdict = Verdict(False, f"{verdict.summary}; then {unweighted}")
    if verdict.passed:
        console.print(f"[green]{verdict.summary}[/]")
        return True
    console.print(f"[red]{verdict.summary}: rolling the canary back, stopping the deploy[/]")
    for deploy in canary:
        deploy.report.error = verdict.summary
    _roll_back_updated(canary, balancer, "the canary failed its bake")
    return False


def _even_weights(balancer: Balancer) -> str:
    """Every host back to its plain share after a bake; '' when done, else what went wrong."""
    try:
        balancer.set_weights({}, "weights back to even")
    except HostError as error:
        return f"the canary's weight could not be taken off the balancers ({error})"
    return ""


def _roll_batches(deploys: list[HostRollout], failures: list[HostRollout], options: RollingOptions, balancer: Balancer | None,
                  bake: Bake | None = None) -> None:
    """Canary (baked under live traffic with --bake), then batches, each drained and switched; stop once the failures are
    over the budget."""
    by_name = {deploy.name: deploy for deploy in deploys}
    ready = [d.name for d in deploys if d.outcome == "staged" and d.plan.touches_service]
    batches = plan_batches(ready, options.batch_size, options.canary)
    for number, batch in enumerate(batches, 1):
        label = "canary" if options.canary and number == 1 else f"batch {number}/{len(batches)}"
        console.rule(f"{label}: {', '.join(batch)}")
        try:
            _switch_batch([by_name[name] for name in batch], balancer)
        except HostError as error:
            console.print(f"[red]{error}: stopping the deploy[/]")
            for name in batch:
                by_name[name].report.error = by_name[name].report.error or str(error)
            return
        failures = failures + [by_name[name] for name in batch if by_name[name].outcome != "updated"]
        canary = [by_name[name] for name in batch]
        if bake and options.canary and number == 1 and all(d.outcome == "updated" for d in canary) and not _bake_canary(canary, bake, balancer):
            return
        if len(failures) > options.max_failures:
            console.print(f"[red]{len(failures)} host(s) failed (allowed: {options.max_failures}): stopping the deploy[/]")
            if options.rollback_all:
                _roll_back_updated([d for d in deploys if d.outcome == "updated"], balancer)
            return
        if options.pause and number < len(batches):
            console.print(f"pausing {options.pause:g} s before the next batch")
            time.sleep(options.pause)


def _wind_up(config: Config, deploys: list[HostRollout], balancer: Balancer | None, connect: Connect) -> None:
    """Whatever happened: staged hosts stay untouched, every lock this deploy holds is released, connections closed."""
    for deploy in deploys:
        if deploy.outcome == "staged":
            deploy.outcome = "untouched"
    reachable = [d for d in deploys if d.outcome not in ("unreachable", "interrupted") and d.locked]
    in_parallel(reachable, lambda d: guarded(d, d.finish), UNLOCK_TIMEOUT, lambda d: timed_out(d, UNLOCK_TIMEOUT))
    release_abandoned_locks(config, [d for d in deploys if d.outcome == "unreachable" and (d.locked or d.report.timed_out)], connect)
    if balancer:
        balancer.close()
    for deploy in deploys:
        deploy.report.remote_commands = deploy.remote.commands_run
        deploy.remote.close()


def _switch_batch(batch: list[HostRollout], balancer: Balancer | None) -> None:
    names = {deploy.name for deploy in batch}
    if balancer:
        balancer.set_drained(balancer.drained | names, f"drained {', '.join(sorted(names))}")
    timeout = max(deploy.plan.transaction.deadline for deploy in batch) + model_switch.DEADLINE_MARGIN + SWITCH_MARGIN
    try:
        settle(batch, lambda d: d.switch(), timeout)
    finally:
        if balancer:
            # an unreachable (or abandoned) host stays out of the balancer; the others serve again (new release or rolled back)
            keep_out = {deploy.name for deploy in batch if deploy.outcome in ("unreachable", "interrupted")}
            back = names - keep_out
            balancer.set_drained((balancer.drained - names) | keep_out, f"back in the balancer: {', '.join(sorted(back)) or 'none'}")


def _roll_back_updated(updated: list[HostRollout], balancer: Balancer | None, why: str = "--rollback-all after failures elsewhere") -> None:
    console.rule(f"{why}: roll back {', '.join(d.name for d in updated) or 'nothing'}")
    for deploy in updated:
        if balancer:
            balancer.set_drained(balancer.drained | {deploy.name}, f"drained {deploy.name}")
        try:
            settle([deploy], lambda d: d.return_to_previous(why),
                   deploy.model.settings.health_timeout * 2 + model_switch.DEADLINE_MARGIN + SWITCH_MARGIN)
        finally:
            if balancer and deploy.outcome not in ("unreachable", "interrupted"):
                balancer.set_drained(balancer.drained - {deploy.name}, f"back in the balancer: {deploy.name}")


def _show_outcomes(deploys: list[HostRollout]) -> None:
    table = Table("host", "outcome", "serves", "release", "from", "detail", title="deploy")
    for deploy in deploys:
        table.add_row(deploy.name, deploy.outcome, deploy.serving, deploy.plan.release or "-", deploy.previous or "-", deploy.report.error or "")
    console.print(table)

