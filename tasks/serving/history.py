"""Release bookkeeping on a model host, as pure functions of what the host reports.

Each model NAME lives in /opt/mlflow/models/NAME: releases/<stamp>-<digest8>/ (model/, manifest.json,
sample.json, env -> its Python env), `current` -> the serving release, and history.jsonl, one line
per switch. Rollback walks the history (a stack: a deploy pushes, a rollback pops), never directory
order, so redeploying an old digest can't confuse it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

MODELS_ROOT = "/opt/mlflow/models"


def model_dir(name: str) -> str:
    return f"{MODELS_ROOT}/{name}"


def release_name(stamp: str, digest: str) -> str:
    return f"{stamp}-{digest[:8]}"


@dataclass(frozen=True)
class Release:
    name: str
    manifest: dict

    @property
    def digest(self) -> str:
        return self.manifest.get("digest", "")

    @property
    def env_hash(self) -> str:
        return self.manifest.get("env_hash", "")


def parse_releases(text: str) -> dict[str, Release]:
    """Lines of `NAME<TAB>manifest json`; a release without a readable manifest is left out."""
    releases = {}
    for line in text.splitlines():
        name, _, manifest = line.partition("\t")
        try:
            releases[name] = Release(name, json.loads(manifest))
        except json.JSONDecodeError:
            continue
    return releases


def parse_history(text: str) -> list[dict]:
    entries = []
    for line in text.splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def release_stack(history: list[dict]) -> list[str]:
    """Releases in the order they were made current; the last is current, the one before is previous."""
    stack: list[str] = []
    for entry in history:
        release = entry.get("release", "")
        if entry.get("action") == "deploy":
            stack.append(release)
        elif entry.get("action") == "rollback":
            while stack and stack[-1] != release:
                stack.pop()
            if not stack:
                stack.append(release)
    return stack


def recorded_release(history: list[dict]) -> str:
    """What the history says the host serves."""
    stack = release_stack(history)
    return stack[-1] if stack else ""


def previous_release(history: list[dict]) -> str:
    stack = release_stack(history)
    return stack[-2] if len(stack) >= 2 else ""


def releases_to_prune(releases: list[str], history: list[dict], current: str, keep: int) -> list[str]:
    """Keep the `keep` most recently used releases (current and previous always among them)."""
    recent: list[str] = []
    for name in [current, previous_release(history), *reversed(release_stack(history)), *sorted(releases, reverse=True)]:
        if name and name in releases and name not in recent:
            recent.append(name)
    return [name for name in sorted(releases) if name not in recent[: max(keep, 2)]]


def history_entry(action: str, release: str, previous: str, by: str, at: str, reason: str = "") -> str:
    entry = {"at": at, "action": action, "release": release, "from": previous, "by": by}
    return json.dumps(entry | ({"reason": reason} if reason else {}))
