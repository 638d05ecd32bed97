"""What the user sees: a line per step as it happens, diffs, and a recap line per host."""

from __future__ import annotations

import io
import os
import sys
import threading
from dataclasses import dataclass, field
from functools import cache

from tasks.ops.steps import Step


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

    def __init__(self, host: str):
        self.host, self.buffer = host, ""

    def write(self, text: str) -> int:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            console.out(f"{self.host} | {line}", highlight=False)
        return len(text)
