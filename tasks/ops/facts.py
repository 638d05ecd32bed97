"""Facts: small read-only shell probes, all gathered in one remote command.

A fact is one object carrying its shell command and the parser of that command's output (as pyinfra's
FactBase.command()/process()); code reads a gathered fact by that object: `facts[SERVICE]` is the parsed value.
On the wire each output comes back under the fact's name, split by markers.
"""

from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

MARKER = "@@fact "

T = TypeVar("T")


def text(output: str) -> str:
    return output


def words(output: str) -> list[str]:
    return output.split()


@dataclass(frozen=True)
class Fact(Generic[T]):
    """`name` labels the output on the wire (unique among the facts gathered together); `parse` turns it into the value."""

    name: str
    command: str
    parse: Callable[[str], T] = field(default=text, compare=False)


class Facts:
    """Gathered facts: each fact's output, read back through the fact's own parser.

    A fact the host printed nothing for, or that was not gathered, reads as the parse of empty output.
    Tests build one from {fact: output} as a host would have answered.
    """

    def __init__(self, outputs: dict[Fact, str]):
        self.outputs = outputs

    def __getitem__(self, fact: Fact[T]) -> T:
        return fact.parse(self.outputs.get(fact, ""))


def gather_script(facts: list[Fact]) -> str:
    """Every fact runs at once (they only read: the slow health probe overlaps the rest); outputs come back in order."""
    commands: dict[str, str] = {}
    for fact in facts:
        if commands.setdefault(fact.name, fact.command) != fact.command:
            raise ValueError(f"two facts gathered together are both named {fact.name!r}: their outputs can't be told apart")
    parts = ['facts=$(mktemp -d)']
    for index, fact in enumerate(facts):
        parts.append(f'{{ {fact.command}\n}} >"$facts/{index}" 2>/dev/null &')
    parts.append("wait")
    for index, fact in enumerate(facts):
        parts.append(f"printf '\\n{MARKER}%s\\n' {shlex.quote(fact.name)}; cat \"$facts/{index}\"")
    parts.append('rm -rf "$facts"')
    return "\n".join(parts) + "\n"


def parse_facts(output: str) -> dict[str, str]:
    facts: dict[str, list[str]] = {}
    current = None
    for line in output.splitlines():
        if line.startswith(MARKER):
            current = line[len(MARKER):].strip()
            facts[current] = []
        elif current is not None:
            facts[current].append(line)
    return {name: "\n".join(lines).strip("\n") for name, lines in facts.items()}


def read_facts(facts: list[Fact], output: str) -> Facts:
    """The gather script's output, each fact's part under that fact."""
    outputs = parse_facts(output)
    return Facts({fact: outputs.get(fact.name, "") for fact in facts})


def gather(remote, facts: list[Fact]) -> Facts:
    result = remote.run_script(gather_script(facts), step="gather facts")
    return read_facts(facts, result.stdout)


# Fact builders shared by every capability.

def os_release() -> Fact[str]:
    """`ID|ID_LIKE|PRETTY_NAME`, then `systemd` when it is init: what check_platform reads."""
    return Fact("os", '. /etc/os-release; echo "$ID|$ID_LIKE|$PRETTY_NAME"; [ -d /run/systemd/system ] && echo systemd')


def node_name() -> Fact[str]:
    return Fact("node_name", "uname -n")


def python_version() -> Fact[str]:
    """The host's python3 as MAJOR.MINOR."""
    return Fact("python", "python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'")


def parse_installed(text: str) -> set[str]:
    return {line.split()[0] for line in text.splitlines() if len(line.split()) >= 2 and line.split()[1] == "ii"}


def installed_packages(names: list[str]) -> Fact[set[str]]:
    """Which of these packages are installed."""
    packages = " ".join(shlex.quote(name) for name in names)
    return Fact("packages", f"dpkg-query -W -f='${{Package}} ${{db:Status-Abbrev}}\\n' {packages}", parse_installed)


def user_exists(name: str) -> Fact[bool]:
    return Fact(f"user:{name}", f"id -u {shlex.quote(name)}", bool)


def path_stat(path: str) -> Fact[str]:
    """`owner group mode` of a path, empty when absent."""
    return Fact(f"stat:{path}", f"stat -c '%U %G %a' {shlex.quote(path)}")


@dataclass(frozen=True)
class FileState:
    exists: bool
    owner: str = ""
    group: str = ""
    mode: str = ""
    content: str = ""


def parse_file(text: str) -> FileState:
    lines = text.splitlines()
    if not lines:
        return FileState(exists=False)
    owner, group, mode = lines[0].split()
    content = base64.b64decode(lines[1]).decode() if len(lines) > 1 else ""
    return FileState(True, owner, group, mode, content)


def file_content(path: str) -> Fact[FileState]:
    """The file's owner, group, mode and content (sent as `owner group mode` then base64)."""
    quoted = shlex.quote(path)
    return Fact(f"file:{path}", f"stat -c '%U %G %a' {quoted} && base64 -w0 {quoted}", parse_file)


def parse_properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def service_state(unit: str) -> Fact[dict[str, str]]:
    """The unit's ActiveState, SubState, UnitFileState, MainPID and NRestarts."""
    return Fact(
        f"service:{unit}",
        f"systemctl show {shlex.quote(unit)} -p ActiveState -p SubState -p UnitFileState -p MainPID -p NRestarts",
        parse_properties,
    )
