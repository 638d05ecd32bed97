"""Long steps show they are alive: plain lines at marks in logs, a live line per host on a terminal."""

import io
import sys
import threading

import pytest
from rich.console import Console

from tasks.ops import progress
from tasks.ops.progress import Activities
from tasks.ops.steps import Step, StepStream
from tasks.report import RunningSteps, StillRunningLines, running_steps_shown


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def captured_console(terminal: bool) -> Console:
    return Console(file=io.StringIO(), force_terminal=terminal, width=200, color_system=None, highlight=False)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def watched(clock):
    return Activities(clock)


def lines_at(clock, lines: StillRunningLines, out: Console, seconds: float) -> list[str]:
    """What one tick at SECONDS prints."""
    start = len(out.file.getvalue())
    clock.now = seconds
    lines.tick()
    return out.file.getvalue()[start:].splitlines()


def test_plain_lines_at_10_and_30_seconds_then_every_30(clock, watched):
    out = captured_console(terminal=False)
    lines = StillRunningLines(watched, out)
    watched.begin("prod1", "python env")
    printed = {seconds: lines_at(clock, lines, out, seconds) for seconds in (0.5, 5, 9.9, 10, 11, 29, 30, 31, 59, 60, 75, 90)}
    assert {seconds: text for seconds, text in printed.items() if text} == {
        10: ["     running prod1 python env: still running (10 s)"],
        30: ["     running prod1 python env: still running (30 s)"],
        60: ["     running prod1 python env: still running (60 s)"],
        90: ["     running prod1 python env: still running (90 s)"],
    }


def test_a_late_tick_prints_once_and_the_next_mark_follows_it(clock, watched):
    out = captured_console(terminal=False)
    lines = StillRunningLines(watched, out)
    watched.begin("prod1", "apt packages")
    assert lines_at(clock, lines, out, 200) == ["     running prod1 apt packages: still running (200 s)"]
    assert lines_at(clock, lines, out, 205) == []
    assert lines_at(clock, lines, out, 210) == ["     running prod1 apt packages: still running (210 s)"]


def test_each_host_and_each_new_step_has_its_own_clock(clock, watched):
    out = captured_console(terminal=False)
    lines = StillRunningLines(watched, out)
    first = watched.begin("prod1", "tracking env")
    clock.now = 4
    watched.begin("prod2", "tracking env")
    assert lines_at(clock, lines, out, 10) == ["     running prod1 tracking env: still running (10 s)"]
    watched.end(first)
    clock.now = 12
    watched.begin("prod1", "health gate")
    assert lines_at(clock, lines, out, 14) == ["     running prod2 tracking env: still running (10 s)"]
    assert lines_at(clock, lines, out, 22) == ["     running prod1 health gate: still running (10 s)"]


def test_a_step_that_ends_before_its_first_mark_prints_nothing(clock, watched):
    out = captured_console(terminal=False)
    lines = StillRunningLines(watched, out)
    with watched.during("prod1", "gather facts"):
        assert lines_at(clock, lines, out, 9) == []
    assert lines_at(clock, lines, out, 40) == []


def test_transfer_shows_how_much_is_sent(clock, watched):
    out = captured_console(terminal=False)
    lines = StillRunningLines(watched, out)
    with watched.during("prod1", "upload wheels", total=100_000_000) as transfer:
        transfer.add(25_000_000)
        assert lines_at(clock, lines, out, 10) == ["     running prod1 upload wheels: 25.0 of 100.0 MB (25%): still running (10 s)"]
        transfer.add(50_000_000)
        assert lines_at(clock, lines, out, 30) == ["     running prod1 upload wheels: 75.0 of 100.0 MB (75%): still running (30 s)"]


def test_begin_and_end_markers_start_and_stop_the_step_clock(clock, monkeypatch):
    monkeypatch.setattr(progress.activities, "clock", clock)
    steps = [Step.change("apt packages", "", "x"), Step.change("python env", "", "y")]
    stream = StepStream(steps, lambda step: None, "prod1")
    with progress.activities.during("prod1", "apt packages"):
        clock.now = 2
        stream.write("\n@@step-begin 0\n")
        assert [(a.host, a.name, a.since) for a in progress.activities.running()] == [("prod1", "apt packages", 2)]
        clock.now = 40
        stream.write("@@step-end 0 0\n\n@@step-begin 1\nCollecting mlflow\n")
        assert [(a.name, a.since) for a in progress.activities.running()] == [("python env", 40)]
        clock.now = 50
        stream.write("@@step-end 1 0\n")
        assert [(a.name, a.since) for a in progress.activities.running()] == [("apt packages", 50)]
    assert progress.activities.running() == []


def test_a_command_that_dies_mid_step_leaves_nothing_running(clock, monkeypatch):
    monkeypatch.setattr(progress.activities, "clock", clock)
    stream = StepStream([Step.change("python env", "", "y")], lambda step: None, "prod1")
    with progress.activities.during("prod1", "python env"):
        stream.write("\n@@step-begin 0\n")
    assert progress.activities.running() == []


def test_live_lines_show_steps_running_for_more_than_a_second(clock, watched):
    out = captured_console(terminal=True)
    watched.begin("prod1", "python env")
    clock.now = 0.5
    watched.begin("prod2", "gather facts")
    transfer = watched.begin("prod3", "upload r1.tgz", total=4_000_000)
    transfer.add(1_000_000)
    clock.now = 1.2
    out.print(RunningSteps(watched))
    assert out.file.getvalue().splitlines() == ["     running prod1 python env 1 s"]
    clock.now = 42.5
    out.print(RunningSteps(watched))
    assert out.file.getvalue().splitlines()[1:] == [
        "     running prod1 python env 42 s",
        "     running prod2 gather facts 42 s",
        "     running prod3 upload r1.tgz: 1.0 of 4.0 MB (25%) 42 s",
    ]


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_live_display_stops_and_lets_the_error_through(watched, error):
    out = captured_console(terminal=True)
    stdout = sys.stdout
    with pytest.raises(error):
        with running_steps_shown(watched, out):
            assert out._live_stack and out.file.getvalue().endswith("\x1b[?25h")  # even a kill leaves the cursor shown
            out.print("     changed prod1 apt packages: installed curl")
            raise error("boom")
    assert out._live_stack == [] and sys.stdout is stdout
    assert "changed prod1 apt packages: installed curl" in out.file.getvalue()
    assert out.file.getvalue().rstrip("\r").endswith("\x1b[?25h")  # the cursor is shown again
    with running_steps_shown(watched, out):  # and the next use shows again
        assert out._live_stack


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_plain_lines_stop_and_let_the_error_through(watched, error):
    out = captured_console(terminal=False)
    before = set(threading.enumerate())
    with pytest.raises(error):
        with running_steps_shown(watched, out):
            ticking = set(threading.enumerate()) - before
            assert len(ticking) == 1
            raise error("boom")
    assert not any(thread.is_alive() for thread in ticking) and out.file.getvalue() == ""
    with running_steps_shown(watched, out):
        with running_steps_shown(watched, out):  # nested: shown once
            assert len(set(threading.enumerate()) - before) == 1


def test_a_command_between_two_of_its_steps_starts_a_new_clock(clock, watched):
    out = captured_console(terminal=False)
    lines = StillRunningLines(watched, out)
    watched.begin("prod1", "apply")
    step = watched.begin("prod1", "python env")
    assert lines_at(clock, lines, out, 10) == ["     running prod1 python env: still running (10 s)"]
    clock.now = 40
    watched.end(step)
    assert lines_at(clock, lines, out, 40.5) == []
    assert lines_at(clock, lines, out, 50.5) == ["     running prod1 apply: still running (10 s)"]
