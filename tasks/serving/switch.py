"""A switch of a model's release as one unit of work on the host: a transient systemd unit runs switch, restart and
gate, and on any failure the way back, so it ends by itself within its deadline even when the laptop disconnects.

The laptop starts it, follows its log (step markers, like tasks.ops.steps.apply), reconnects when the connection
drops, and reads its outcome back.
"""

from __future__ import annotations

import json
import shlex
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

from tasks.ops.files import write_file_script
from tasks.ops.remote import HostError, Remote
from tasks.ops.steps import BEGIN, END, Step, StepStream
from tasks.templates import render

SWITCH_ROOT = "/run/mlflow-fab/switch"
OUTCOME = "@@switch-outcome "
# Restarts and the journal dump around the two gates (forward and back).
DEADLINE_MARGIN = 120
RECONNECT_PAUSE = 3
# How long a host may stay unreachable before we report it (a powered-off host never answers; a cut may heal).
RECONNECT_WINDOW = 90
# A switch directory older than this belongs to a laptop that never came back for it.
FORGOTTEN_AFTER_MINUTES = 1440


@dataclass
class Transaction:
    """What the host runs: forward steps; if any fails, back steps; the history line of whichever succeeded."""

    model: str
    release: str
    # what answered before the switch ('' when nothing did); the back steps return to it
    served: str
    forward: list[Step]
    back: list[Step]
    history: str
    forward_record: str = ""
    back_record: str = ""
    deadline: int = 300
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def unit(self) -> str:
        return f"mlflow-switch-{self.model}-{self.token}"

    @property
    def directory(self) -> str:
        return f"{SWITCH_ROOT}/{self.unit}"

    @property
    def steps(self) -> list[Step]:
        return self.forward + self.back

    @property
    def back_outcome(self) -> str:
        return "rolled back" if self.served and self.served != self.release else "stopped"

    @property
    def back_serving(self) -> str:
        return self.served if self.back_outcome == "rolled back" else ""


@dataclass(frozen=True)
class Outcome:
    """updated, rolled back, stopped (nothing to go back to), failed, or lost (no outcome came back)."""

    result: str
    serving: str = ""


def render_script(transaction: Transaction) -> str:
    numbered = list(enumerate(transaction.steps))
    changed = [(index, step.script) for index, step in numbered if step.changed]
    forward = [(index, script) for index, script in changed if index < len(transaction.forward)]
    back = [(index, script) for index, script in changed if index >= len(transaction.forward)]
    return render(
        "model-switch.sh.j2", unit=f"mlflow-model@{transaction.model}", release=transaction.release, served=transaction.served,
        switch_unit=transaction.unit, log=f"{transaction.directory}/log", outcome=f"{transaction.directory}/outcome.json",
        history=transaction.history, begin=BEGIN, end=END, outcome_marker=OUTCOME, forward=forward, back=back,
        forward_record=transaction.forward_record, back_record=transaction.back_record, back_outcome=transaction.back_outcome,
        back_serving=transaction.back_serving,
    )


def follow_script(transaction: Transaction) -> str:
    """Print the switch's log as it grows until its outcome file exists or its unit is gone (killed at its deadline)."""
    return render("switch-follow.sh.j2", directory=transaction.directory, unit=transaction.unit)


def start_script(transaction: Transaction) -> str:
    """Write the script where only root reads it and hand it to systemd; no --pipe or --pty: it must outlive us."""
    directory = transaction.directory
    command = [
        "systemd-run", f"--unit={transaction.unit}", "--collect", "--quiet", f"--description=switch {transaction.model} to {transaction.release}",
        "-p", f"RuntimeMaxSec={transaction.deadline}", "/bin/bash", f"{directory}/switch.sh",
    ]
    return "\n".join([
        f"mkdir -p -m 700 {SWITCH_ROOT}",
        f"find {SWITCH_ROOT} -mindepth 1 -maxdepth 1 -mmin +{FORGOTTEN_AFTER_MINUTES} -exec rm -rf {{}} +",
        f"mkdir -m 700 {directory} && touch {directory}/log",
        write_file_script(f"{directory}/switch.sh", render_script(transaction), "root", "root", "700"),
        " ".join(shlex.quote(part) for part in command) + ' || { echo "systemd-run failed: the switch did not start"; exit 1; }',
        follow_script(transaction),
    ])


def parse_outcome(output: str) -> Outcome:
    for line in reversed(output.splitlines()):
        if line.startswith(OUTCOME):
            try:
                data = json.loads(line[len(OUTCOME):])
            except json.JSONDecodeError:
                break
            return Outcome(data.get("outcome", "failed"), data.get("serving", ""))
    return Outcome("lost")


def remove_script(transaction: Transaction) -> str:
    return f"rm -rf {transaction.directory}"


def run(remote: Remote, transaction: Transaction, on_done: Callable[[Step], None], on_note: Callable[[str], None]) -> Outcome:
    """Start the switch and follow it to its outcome; a dropped connection is retried for a while (never past the
    switch's own deadline), then the host is reported unreachable, its switch still running to its end there."""
    reported: set[int] = set()

    def once(step: Step) -> None:
        if id(step) not in reported:
            reported.add(id(step))
            on_done(step)

    follow = follow_script(transaction)
    give_up_at = time.monotonic() + transaction.deadline + DEADLINE_MARGIN
    script = start_script(transaction)
    while True:
        try:
            result = remote.run_script(script, step="switch", out_stream=StepStream(transaction.steps, once, remote.host.name))
            return parse_outcome(result.stdout)
        except HostError as error:
            if not error.unreachable:
                raise
            if time.monotonic() > give_up_at:
                raise HostError(error.step, f"{error.message}; once started, the switch goes on by itself on the host "
                                f"({transaction.unit}): `fab releases` shows what it serves once it answers again", error.unreachable) from None
            if script != follow:
                on_note(f"{error.message}: once started, the switch goes on by itself on the host ({transaction.unit}); "
                        f"reconnecting for up to {RECONNECT_WINDOW} s to read its outcome")
                script = follow
                give_up_at = min(give_up_at, time.monotonic() + RECONNECT_WINDOW)
            time.sleep(RECONNECT_PAUSE)
            remote.close()
