"""Steps: the decision an operation made from facts, and one remote script that acts on all of them.

An operation returns a Step saying whether the host already matches (ok) or what it will change.
Its name and summary are for people; code that must find one step among others matches its kind, never its text.
Check mode prints the steps; a real run sends every changed step in one script, stops at the first
failure, and reports each step as its markers come back.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from tasks.ops.progress import Activity, activities

BEGIN = "@@step-begin "
END = "@@step-end "


@dataclass
class Step:
    name: str
    summary: str
    changed: bool = False
    script: str = ""
    diff: str = ""
    failed: bool = False
    # Not run because an earlier step failed; counted neither ok nor changed.
    skipped: bool = False
    output: str = ""
    # What the step is, for code that acts on it (e.g. the key to upload first); never shown.
    kind: str = ""
    # A secret the step's script reads on its standard input (a script is a command line, visible in `ps`); never shown.
    stdin: str = field(default="", repr=False)

    @classmethod
    def ok(cls, name: str, summary: str, kind: str = "") -> "Step":
        return cls(name, summary, kind=kind)

    @classmethod
    def change(cls, name: str, summary: str, script: str, diff: str = "", kind: str = "") -> "Step":
        return cls(name, summary, changed=True, script=script, diff=diff, kind=kind)

    @classmethod
    def secret(cls, name: str, summary: str, script: str, stdin: str, kind: str = "") -> "Step":
        """A change whose script reads STDIN (one per plan): the other steps' scripts read nothing."""
        return cls(name, summary, changed=True, script=script, kind=kind, stdin=stdin)

    @classmethod
    def failure(cls, name: str, summary: str) -> "Step":
        return cls(name, summary, failed=True)


def apply_script(steps: list[Step]) -> str:
    parts = []
    for index, step in enumerate(steps):
        if not step.changed:
            continue
        parts.append(
            f"printf '\\n{BEGIN}{index}\\n'\n"
            f"( set -e\n{step.script}\n){'' if step.stdin else ' </dev/null'}\n"
            f"rc=$?; printf '\\n{END}{index} %s\\n' $rc; [ $rc -eq 0 ] || exit $rc"
        )
    return "\n".join(parts) + "\n"


class StepStream(io.TextIOBase):
    """Fabric out_stream that calls on_done(step, rc, output) as each step's end marker arrives; between its begin and
    end markers the step is HOST's running activity."""

    def __init__(self, steps: list[Step], on_done, host: str):
        self.steps = steps
        self.on_done = on_done
        self.host = host
        self.buffer = ""
        self.lines: list[str] = []
        self.finished: list[Step] = []
        self.running: Activity | None = None

    def write(self, text: str) -> int:
        self.buffer += text
        *complete, self.buffer = self.buffer.split("\n")
        for line in complete:
            self._line(line)
        return len(text)

    def _line(self, line: str) -> None:
        if line.startswith(BEGIN):
            self.lines = []
            self._stop_clock()
            self.running = activities.begin(self.host, self.steps[int(line[len(BEGIN):])].name)
        elif line.startswith(END):
            self._stop_clock()
            index, rc = line[len(END):].split()
            step = self.steps[int(index)]
            step.output = "\n".join(self.lines).strip("\n")
            step.failed = rc != "0"
            self.finished.append(step)
            self.on_done(step)
        else:
            self.lines.append(line)

    def _stop_clock(self) -> None:
        if self.running:
            activities.end(self.running)
            self.running = None

    def unfinished_output(self) -> str:
        return "\n".join(self.lines + [self.buffer]).strip("\n")


def apply(remote, steps: list[Step], on_done) -> bool:
    """Run every changed step in one remote command, reporting all steps in order; True if none failed."""
    reported = 0

    def report_until_next_change() -> None:
        nonlocal reported
        while reported < len(steps) and not steps[reported].changed:
            on_done(steps[reported])
            reported += 1

    def finished(step: Step) -> None:
        nonlocal reported
        on_done(step)
        reported = steps.index(step) + 1
        if not step.failed:
            report_until_next_change()

    report_until_next_change()
    pending = [step for step in steps if step.changed]
    if not pending:
        return not any(step.failed for step in steps)
    secrets = [step.stdin for step in pending if step.stdin]
    if len(secrets) > 1:
        raise ValueError("one step per plan may read standard input")
    stream = StepStream(steps, finished, remote.host.name)
    result = remote.run_script(apply_script(steps), step=pending[0].name, out_stream=stream, stdin=secrets[0] if secrets else None)
    if result.exited != 0 and not any(step.failed for step in pending):
        # The script died between markers (killed, connection dropped): blame the first unfinished step.
        unfinished = next((step for step in pending if step not in stream.finished), pending[-1])
        unfinished.failed = True
        unfinished.output = stream.unfinished_output() or result.stdout[-2000:]
        finished(unfinished)
    for step in steps[reported:]:
        step.skipped = True
    return result.exited == 0
