"""A fake host for orchestration tests, as Fabric's MockRemote and Invoke's MockContext are: it answers facts from a
dict, records every script it was sent, and plays back the step markers of apply scripts and model switches, so the
real orchestration (plans, rolling, balancer, locks) runs in milliseconds without a host.

Scripted per host: a step whose script contains `fail` fails, one containing a key of `prints` prints its text, `unreachable` refuses every command, `hang` blocks
the command whose step label starts with it until the host is abandoned, `lock_held` refuses the lock.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

from tasks.ops.facts import MARKER, Fact
from tasks.ops.lock import HELD, Lock
from tasks.ops.remote import HostError
from tasks.ops.steps import BEGIN, END
from tasks.serving.switch import OUTCOME

FACT = re.compile(rf"printf '\\n{MARKER}%s\\n' (.+?); cat ")
STEP = re.compile(rf"printf '\\n{BEGIN}(\d+)\\n'\n\s*\( set -e\n(.*?)\n\s*\)(?: </dev/null)?\n\s*rc=\$\?", re.DOTALL)
EMBEDDED = re.compile(r"echo ([A-Za-z0-9+/=]+) \| base64 -d > \"\$tmp\"\ninstall -D -o root -g root -m 700 \"\$tmp\" (\S+/switch\.sh)")
FINISH = re.compile(r"^\s*finish (.*)$", re.MULTILINE)


@dataclass
class Sent:
    step: str
    script: str
    stdin: str | None = None


@dataclass
class FakeHost:
    """What one host answers and how it misbehaves; facts keyed by fact object or by its name on the wire."""

    facts: dict[Fact | str, str] = field(default_factory=dict)
    fail: str = ""
    # what a step prints when its script contains the key
    prints: dict[str, str] = field(default_factory=dict)
    unreachable: bool = False
    hang: str = ""
    lock_held: bool = False
    # called with (remote, step, script) before a command is answered: a test's hook into the middle of a run
    on_command: Callable[["FakeRemote", str, str], None] | None = None
    sent: list[Sent] = field(default_factory=list)
    uploads: list[str] = field(default_factory=list)
    let_go: threading.Event = field(default_factory=threading.Event)
    # set when the hung command has returned (raised, since only an abandon lets it go)
    hang_ended: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self):
        self.facts = wire_names(self.facts)


def wire_names(facts: dict[Fact | str, str]) -> dict[str, str]:
    """{fact: output} as the gather script names them: the plan tests build facts by object, the fake answers by name."""
    return {key.name if isinstance(key, Fact) else key: output for key, output in facts.items()}


class FakeFleet:
    """The factory the orchestration takes for its remotes: FakeFleet(hosts)(host, config) -> FakeRemote."""

    def __init__(self, hosts: dict[str, FakeHost]):
        self.hosts = hosts
        self.remotes: list[FakeRemote] = []
        # (host, step label) of every command in the order the hosts got them
        self.log: list[tuple[str, str]] = []

    def __call__(self, host, config=None) -> "FakeRemote":
        remote = FakeRemote(host, self.hosts.setdefault(host.name, FakeHost()), self.log)
        self.remotes.append(remote)
        return remote

    def sent(self, name: str) -> list[Sent]:
        """Every script NAME was sent, over any of its connections (none when it was never connected to)."""
        return self.hosts[name].sent if name in self.hosts else []

    def steps(self, name: str) -> list[str]:
        return [each.step for each in self.sent(name)]

    def first(self, name: str, step: str) -> int:
        """Where in the log NAME first got a command labelled STEP (a ValueError when it never did)."""
        return self.log.index((name, step))


class FakeRemote:
    """The tasks.ops.remote.Remote interface over a FakeHost; after abandon() nothing goes out, as with Remote."""

    def __init__(self, host, fake: FakeHost, log: list[tuple[str, str]]):
        self.host, self.fake, self.log = host, fake, log
        self.connection = SimpleNamespace(host=host.address, user=host.user, port=host.port, is_connected=True)
        self.commands_run = 0
        self.abandoned = self.closed = False

    @property
    def target(self) -> str:
        return f"{self.host.user}@{self.host.address}:{self.host.port}"

    def run_script(self, script: str, step: str, out_stream=None, stdin: str | None = None):
        if self.abandoned:
            raise HostError("deadline", f"gave up on {self.target} after its deadline: no further command is sent", unreachable=True)
        if self.fake.unreachable:
            raise HostError(step, f"connection to {self.target} lost: is the host down?", unreachable=True)
        self.fake.sent.append(Sent(step, script, stdin))
        self.log.append((self.host.name, step))
        self.commands_run += 1
        if self.fake.on_command:
            self.fake.on_command(self, step, script)
        if self.fake.hang and step.startswith(self.fake.hang):
            try:
                self.fake.let_go.wait(10)
                raise HostError(step, f"connection to {self.target} lost: closed after its deadline", unreachable=True)
            finally:
                self.fake.hang_ended.set()
        exited, stdout = self._answer(script, step)
        if out_stream is not None:
            out_stream.write(stdout)
        return SimpleNamespace(exited=exited, stdout=stdout, stderr="", ok=exited == 0)

    def _answer(self, script: str, step: str) -> tuple[int, str]:
        if MARKER in script:
            return 0, "".join(f"\n{MARKER}{name}\n{self.fake.facts.get(name, '')}\n" for name in fact_names(script))
        if step == "lock" and self.fake.lock_held:
            holder = Lock(id="other", by="bob@desk", pid=7, what="deploy runs:/other/model as wine", at=time.time())
            return 3, f"{HELD}{holder.to_json()}\n"
        embedded = EMBEDDED.search(script)
        if embedded:
            return self._switch(base64.b64decode(embedded.group(1)).decode())
        if BEGIN in script:
            return self._steps(script)
        return 0, ""

    def _steps(self, script: str) -> tuple[int, str]:
        """Each step in order, markers as the host prints them; the first failing step ends the script."""
        output = []
        for index, body in STEP.findall(script):
            rc = 1 if self.fake.fail and self.fake.fail in body else 0
            printed = "".join(f"{text}\n" for key, text in self.fake.prints.items() if key in body)
            output.append(f"\n{BEGIN}{index}\n{printed}{'failed' if rc else 'done'}\n{END}{index} {rc}\n")
            if rc:
                return rc, "".join(output)
        return 0, "".join(output)

    def _switch(self, switch_sh: str) -> tuple[int, str]:
        """A model switch as the host runs it: forward steps; if one fails, the back steps; the outcome line last."""
        forward, _, after = switch_sh.partition("finish updated ")
        forward_rc, forward_out = self._steps(forward)
        if forward_rc == 0:
            return 0, forward_out + outcome_line("updated", shlex.split(after.splitlines()[0])[0])
        if not STEP.search(after):
            return 0, forward_out + outcome_line("failed", "")
        back_rc, back_out = self._steps(after)
        outcome, serving = (shlex.split(FINISH.findall(after)[0]) + [""])[:2] if back_rc == 0 else ("failed", "")
        return 0, forward_out + back_out + outcome_line(outcome, serving)

    @contextmanager
    def private_upload(self, data, path: str):
        self.fake.uploads.append(path)
        yield path

    def close(self) -> None:
        self.closed = True

    def abandon(self) -> None:
        self.abandoned = True
        self.close()
        self.fake.let_go.set()


def fact_names(script: str) -> list[str]:
    return [shlex.split(quoted)[0] for quoted in FACT.findall(script)]


def outcome_line(outcome: str, serving: str) -> str:
    return f"\n{OUTCOME}{json.dumps({'outcome': outcome, 'serving': serving})}\n"
