"""What each host is busy with, and since when: remote commands, the steps inside them and transfers announce
themselves here as they begin and end; the display (tasks.report) shows the ones that take a while.

Only names, times and byte counts are kept: never a command, its output or its input.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator


@dataclass(eq=False)
class Activity:
    host: str
    name: str
    since: float  # its start, or the end of the last activity inside it: what it does now began then
    done: int = 0
    total: int | None = None  # bytes, for a transfer

    def add(self, count: int) -> None:
        self.done += count


class Activities:
    """Per host, a stack of what it is doing: a command, and the step inside it that is running now."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self._stacks: dict[str, list[Activity]] = {}

    def begin(self, host: str, name: str, total: int | None = None) -> Activity:
        activity = Activity(host, name, self.clock(), total=total)
        with self._lock:
            self._stacks.setdefault(host, []).append(activity)
        return activity

    def end(self, activity: Activity) -> None:
        """Ends it and whatever began inside it (a step whose end marker never came, when its command died); the
        activity around it goes on with something new (a command between two of its steps)."""
        with self._lock:
            stack = self._stacks.get(activity.host, [])
            if activity in stack:
                del stack[stack.index(activity):]
                if stack:
                    stack[-1].since = self.clock()
            if not stack:
                self._stacks.pop(activity.host, None)

    @contextmanager
    def during(self, host: str, name: str, total: int | None = None) -> Iterator[Activity]:
        activity = self.begin(host, name, total)
        try:
            yield activity
        finally:
            self.end(activity)

    def running(self) -> list[Activity]:
        """The innermost activity of every busy host, by host name."""
        with self._lock:
            return [self._stacks[host][-1] for host in sorted(self._stacks)]


activities = Activities()
