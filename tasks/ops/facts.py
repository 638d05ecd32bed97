"""Facts: small read-only shell probes, all gathered in one remote command.

A fact is a name and a shell snippet; its output is handed back as text, split by markers.
"""

from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass

MARKER = "@@fact "


@dataclass(frozen=True)
class Fact:
    name: str
    command: str


def gather_script(facts: list[Fact]) -> str:
    """Every fact runs at once (they only read: the slow health probe overlaps the rest); outputs come back in order."""
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


def gather(remote, facts: list[Fact]) -> dict[str, str]:
    result = remote.run_script(gather_script(facts), step="gather facts")
    return parse_facts(result.stdout)


# Fact builders shared by every capability.

def os_release() -> Fact:
    return Fact("os", '. /etc/os-release; echo "$ID|$ID_LIKE|$PRETTY_NAME"; [ -d /run/systemd/system ] && echo systemd')


def node_name() -> Fact:
    return Fact("node_name", "uname -n")


def installed_packages(names: list[str]) -> Fact:
    packages = " ".join(shlex.quote(name) for name in names)
    return Fact("packages", f"dpkg-query -W -f='${{Package}} ${{db:Status-Abbrev}}\\n' {packages}")


def parse_installed(text: str) -> set[str]:
    return {line.split()[0] for line in text.splitlines() if len(line.split()) >= 2 and line.split()[1] == "ii"}


def user_exists(name: str) -> Fact:
    return Fact(f"user:{name}", f"id -u {shlex.quote(name)}")


def path_stat(path: str) -> Fact:
    """`owner group mode` of a path, empty when absent."""
    return Fact(f"stat:{path}", f"stat -c '%U %G %a' {shlex.quote(path)}")


def file_content(path: str) -> Fact:
    """`owner group mode` then the base64 content, empty when absent."""
    quoted = shlex.quote(path)
    return Fact(f"file:{path}", f"stat -c '%U %G %a' {quoted} && base64 -w0 {quoted}")


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


def service_state(unit: str) -> Fact:
    return Fact(
        f"service:{unit}",
        f"systemctl show {shlex.quote(unit)} -p ActiveState -p SubState -p UnitFileState -p MainPID -p NRestarts",
    )


def parse_properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
