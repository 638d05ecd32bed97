"""What the user sees: a line per step as it happens, diffs, the steps still running, and a recap line per host."""

from __future__ import annotations

import io
import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Iterator

from tasks.ops.progress import Activities, Activity, activities
from tasks.ops.steps import Step

SHOW_RUNNING_AFTER = 1.0
# Without a terminal, a step still running is mentioned at these seconds, then every STILL_RUNNING_EVERY.
STILL_RUNNING_FIRST = (10, 30)
STILL_RUNNING_EVERY = 30
LIVE_REFRESHES_PER_SECOND = 4
TICK_SECONDS = 0.25


@cache
def _rich_console():
    from rich.console import Console

    # Piped output (CI logs, tests) gets wide lines instead of rich's default of 80 columns.
    return Console(highlight=False, emoji=False, soft_wrap=True, width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200)


class _Console:
    """rich's Console, made at its first use: importing rich costs `fab -l` more than listing the tasks does."""

    def __getattr__(self, name):
        return getattr(_rich_console(), name)


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


console = _Console()
_lock = threading.Lock()


@dataclass
class HostReport:
    host: str
    check: bool = False
    steps: list[Step] = field(default_factory=list)
    error: str = ""
    unreachable: bool = False
    timed_out: bool = False  # its deadline passed: reported once, whatever its abandoned work raises later
    notes: list[str] = field(default_factory=list)
    details: dict[str, object] = field(default_factory=dict)
    remote_commands: int = 0

    @property
    def ok(self) -> int:
        return sum(1 for step in self.steps if not (step.changed or step.failed or step.skipped))

    @property
    def changed(self) -> int:
        return sum(1 for step in self.steps if step.changed and not (step.failed or step.skipped))

    @property
    def failed(self) -> int:
        return sum(1 for step in self.steps if step.failed) + (1 if self.error and not any(s.failed for s in self.steps) else 0)

    def recap(self) -> str:
        untouched = " (untouched)" if not self.steps and not self.error else ""
        return f"{self.host} ok={self.ok} changed={self.changed} failed={self.failed}{untouched}"


def show_step(report: HostReport, step: Step) -> None:
    if step.failed:
        label, style = "failed", "bold red"
    elif step.changed:
        label, style = ("would change" if report.check else "changed"), "yellow"
    else:
        label, style = "ok", "green"
    with _lock:
        console.print(f"[{style}]{label:>12}[/] [bold]{escape(report.host)}[/] {escape(step.name)}: {escape(step.summary)}")
        if step.diff:
            for line in step.diff.splitlines():
                colour = "green" if line.startswith("+") else "red" if line.startswith("-") else "dim"
                console.print(f"             [{colour}]{escape(line)}[/]")
        if step.failed and step.output:
            for line in step.output.splitlines()[-80:]:
                console.print(f"             {escape(line)}")


def record(report: HostReport, steps: list[Step]) -> None:
    """Steps decided and done outside a plan's apply: kept in the host's report and shown."""
    for step in steps:
        report.steps.append(step)
        show_step(report, step)


def show_error(report: HostReport) -> None:
    with _lock:
        kind = "unreachable" if report.unreachable else "failed"
        console.print(f"[bold red]{kind:>12}[/] [bold]{escape(report.host)}[/] {escape(report.error)}")


def show_warning(text: str) -> None:
    with _lock:
        console.print(f"[bold yellow]{'warning':>12}[/] {escape(text)}")


def show_note(report: HostReport, note: str) -> None:
    report.notes.append(note)
    with _lock:
        console.print(f"{'':>12} [bold]{escape(report.host)}[/] {escape(note)}")


def show_recap(reports: list[HostReport], show_commands: bool = False) -> None:
    console.print("\n[bold]RECAP[/]" + (" (check mode: nothing was changed)" if reports and reports[0].check else ""))
    for report in reports:
        style = "red" if report.failed else "yellow" if report.changed else "green"
        stats = f" remote_commands={report.remote_commands}" if show_commands else ""
        console.print(f"[{style}]{escape(report.recap())}[/]{stats}")


class PrefixedLines(io.TextIOBase):
    """An out_stream that prints each complete line at once, prefixed with its host."""

    shows_output = True  # the lines themselves show the command is alive: it is not listed as running

    def __init__(self, host: str):
        self.host, self.buffer = host, ""

    def write(self, text: str) -> int:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            console.out(f"{self.host} | {line}", highlight=False)
        return len(text)


def _doing(activity: Activity) -> str:
    if activity.total is None:
        return activity.name
    percent = f" ({100 * activity.done // activity.total}%)" if activity.total else ""
    return f"{activity.name}: {activity.done / 1e6:.1f} of {activity.total / 1e6:.1f} MB{percent}"


def next_still_running_mark(elapsed: float) -> float:
    """The first mark past ELAPSED seconds at which a step still running is mentioned again."""
    for mark in STILL_RUNNING_FIRST:
        if elapsed < mark:
            return mark
    return (elapsed // STILL_RUNNING_EVERY + 1) * STILL_RUNNING_EVERY


class StillRunningLines:
    """For logs and pipes: a plain line for each step still running as it passes a mark (10 s, 30 s, then every 30 s)."""

    def __init__(self, watched: Activities, out):
        self.watched, self.out = watched, out
        self.next_mark: dict[Activity, tuple[float, float]] = {}  # (its since, the next mark) per activity

    def tick(self) -> None:
        now, running = self.watched.clock(), self.watched.running()
        self.next_mark = {activity: marks for activity, marks in self.next_mark.items() if activity in running}
        for activity in running:
            since, mark = self.next_mark.get(activity, (None, 0))
            if since != activity.since:
                mark = STILL_RUNNING_FIRST[0]
            elapsed = now - activity.since
            if elapsed >= mark:
                mark = next_still_running_mark(elapsed)
                with _lock:
                    self.out.print(f"{'running':>12} [bold]{escape(activity.host)}[/] {escape(_doing(activity))}: "
                                   f"still running ({int(elapsed)} s)")
            self.next_mark[activity] = (activity.since, mark)


class RunningSteps:
    """For a terminal: a live line per host whose step has run for more than a second, under the step lines."""

    def __init__(self, watched: Activities):
        self.watched = watched

    def __rich__(self):
        from rich.console import Group
        from rich.text import Text

        now = self.watched.clock()
        return Group(*(
            Text.from_markup(f"[cyan]{'running':>12}[/] [bold]{escape(activity.host)}[/] {escape(_doing(activity))} "
                             f"[dim]{int(now - activity.since)} s[/]")
            for activity in self.watched.running() if now - activity.since >= SHOW_RUNNING_AFTER
        ))


_showing = threading.Event()


@contextmanager
def running_steps_shown(watched: Activities = activities, out=None) -> Iterator[None]:
    """While hosts work, show their running steps: rich's live display on a terminal, plain lines otherwise.
    Stops cleanly however the block ends (an error, Ctrl-C); nested uses show them once."""
    out = out or _rich_console()
    with _lock:
        nested = _showing.is_set()
        _showing.set()
    if nested:
        yield
        return
    try:
        if out.is_terminal and not out.is_dumb_terminal:
            from rich.live import Live

            with Live(RunningSteps(watched), console=out, refresh_per_second=LIVE_REFRESHES_PER_SECOND, transient=True):
                out.show_cursor(True)  # Live hides it: a kill it can't clean up after (SIGTERM, SIGKILL) would leave it hidden
                yield
        else:
            with _ticking(StillRunningLines(watched, out).tick, TICK_SECONDS):
                yield
    finally:
        _showing.clear()


@contextmanager
def _ticking(tick, seconds: float) -> Iterator[None]:
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(seconds):
            tick()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
