"""Directories and small files, compared by owner, mode and content."""

from __future__ import annotations

import base64
import difflib
import shlex

from tasks.ops.facts import FileState
from tasks.ops.steps import Step


def ensure_directory(path: str, owner: str, group: str, mode: str, current: str) -> Step:
    wanted = f"{owner} {group} {mode}"
    name = f"directory {path}"
    if current.strip() == wanted:
        return Step.ok(name, wanted)
    quoted = shlex.quote(path)
    summary = f"create ({wanted})" if not current else f"fix {current.strip()} -> {wanted}"
    script = f"install -d -o {owner} -g {group} -m {mode} {quoted}\nchown {owner}:{group} {quoted}\nchmod {mode} {quoted}"
    return Step.change(name, summary, script)


def write_file_script(path: str, content: str, owner: str, group: str, mode: str) -> str:
    encoded = base64.b64encode(content.encode()).decode()
    quoted = shlex.quote(path)
    return (
        f'tmp=$(mktemp)\necho {encoded} | base64 -d > "$tmp"\n'
        f'install -D -o {owner} -g {group} -m {mode} "$tmp" {quoted}\nrm -f "$tmp"'
    )


def unified_diff(path: str, old: str, new: str) -> str:
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), f"{path} (on host)", f"{path} (wanted)"
    )
    return "".join(lines)


def ensure_file(path: str, content: str, current: FileState, owner="root", group="root", mode="644") -> Step:
    name = f"file {path}"
    same_content = current.exists and current.content == content
    same_metadata = current.exists and (current.owner, current.group, current.mode) == (owner, group, mode)
    if same_content and same_metadata:
        return Step.ok(name, "up to date")
    if not current.exists:
        summary = "create"
    elif not same_content:
        summary = "update content"
    else:
        summary = f"fix {current.owner}:{current.group} {current.mode} -> {owner}:{group} {mode}"
    diff = "" if same_content else unified_diff(path, current.content, content)
    return Step.change(name, summary, write_file_script(path, content, owner, group, mode), diff)


def ensure_secret_file(path: str, group: str, current: str, generate_script: str) -> Step:
    """A file generated on the host (never read back by us), root:GROUP 0640."""
    name = f"secrets {path}"
    wanted = f"root {group} 640"
    if not current:
        return Step.change(name, "generate on the host (never shown)", generate_script)
    if current.strip() != wanted:
        quoted = shlex.quote(path)
        return Step.change(name, f"fix {current.strip()} -> {wanted}", f"chown root:{group} {quoted}\nchmod 640 {quoted}")
    return Step.ok(name, "kept (never shown)")
