"""Running commands, waiting on conditions with a deadline, and looking at processes in /proc."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path


class TestbedError(RuntimeError):
    """The testbed could not do what was asked; the message says what and why."""


def run(argv, *, check=True, input=None, env=None, timeout=120) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(arg) for arg in argv],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        details = (result.stderr or result.stdout).strip()
        raise TestbedError(f"`{' '.join(map(str, argv))}` exited {result.returncode}: {details}")
    return result


def missing_tools(tools) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None]


def wait_until(condition, timeout: float, interval: float = 0.1):
    """Poll `condition` until it returns something truthy or the deadline passes; return the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name sits in parentheses and may contain spaces: split after its closing one.
    return text[text.rindex(")") + 2 :].split()


def is_running(pid: int) -> bool:
    fields = _stat_fields(pid)
    if fields is None:
        return False
    if fields[0] == "Z":
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


def start_time(pid: int) -> str | None:
    """When the process started (clock ticks since boot): with the PID, it names one process for good."""
    fields = _stat_fields(pid)
    return None if fields is None else fields[19]


def children(pid: int) -> list[int]:
    result = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                result.append(int(entry.name))
    return result


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants, parents first."""
    tree, index = [pid], 0
    while index < len(tree):
        tree.extend(children(tree[index]))
        index += 1
    return tree


def send_signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def kill_tree(pid: int) -> None:
    for member in process_tree(pid):
        send_signal(member, signal.SIGKILL)


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
