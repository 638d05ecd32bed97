"""Download a directory of artifacts through the tracking server (its proxied mlflow-artifacts endpoints).

The server is not trusted with our disk: every listed name must be one plain path component, so nothing lands
outside the target directory; the listing is bounded in entries, depth and bytes, the bytes must fit on the disk
before the first download, and each file must be exactly as long as listed.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tasks.serving.resolve import ModelError
from tasks.tracking.api import TrackingApi

MAX_ENTRIES = 10_000
MAX_DEPTH = 20
MAX_BYTES = 64 * 1024**3
FREE_SPACE_MARGIN = 256 * 1024**2
PARALLEL_DOWNLOADS = 4


@dataclass(frozen=True)
class RemoteFile:
    path: str  # relative to the listed root, "/"-separated, each part checked by safe_name
    size: int


def safe_name(name: object) -> str:
    """A listed name as one path component; ModelError for anything that could climb out or hide."""
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name
            or any(ord(char) < 32 or ord(char) == 127 for char in name) or len(name.encode()) > 255):
        raise ModelError(f"the tracking server listed an unsafe artifact name {name!r}: refused")
    return name


def listed_size(value: object) -> int | None:
    """file_size as the listing gives it: an int64, which JSON may carry as a string of digits."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def list_tree(api: TrackingApi, root: str) -> list[RemoteFile]:
    """Every file under root (a path below the server's artifact root), walked one listing per directory."""
    files: list[RemoteFile] = []
    seen: set[str] = set()
    pending = [("", 0)]
    total = 0
    while pending:
        directory, depth = pending.pop()
        for entry in api.artifact_listing("/".join(filter(None, (root, directory)))):
            if not isinstance(entry, dict):
                raise ModelError(f"the tracking server's listing of {root}/{directory} holds {entry!r}: refused")
            path = "/".join(filter(None, (directory, safe_name(entry.get("path")))))
            if path in seen:
                raise ModelError(f"the tracking server listed {root}/{path} twice: refused")
            seen.add(path)
            if len(seen) > MAX_ENTRIES:
                raise ModelError(f"{root} lists more than {MAX_ENTRIES} files and directories: refused")
            if entry.get("is_dir"):
                if depth + 1 > MAX_DEPTH:
                    raise ModelError(f"the tracking server lists artifacts more than {MAX_DEPTH} directories deep under {root}: refused")
                pending.append((path, depth + 1))
                continue
            size = listed_size(entry.get("file_size"))
            if size is None:
                raise ModelError(f"the tracking server listed {root}/{path} without a valid size ({entry.get('file_size')!r}): refused")
            total += size
            files.append(RemoteFile(path, size))
            if total > MAX_BYTES:
                raise ModelError(f"{root} holds more than {MAX_BYTES // 1024**3} GiB: refused")
    return sorted(files, key=lambda file: file.path)


def download_files(api: TrackingApi, root: str, files: list[RemoteFile], target: Path) -> None:
    """Download the listed files under root into target (made here: it must not exist yet)."""
    target.mkdir(mode=0o700)
    needed = sum(file.size for file in files) + FREE_SPACE_MARGIN
    if (free := shutil.disk_usage(target).free) < needed:
        raise ModelError(f"{target.parent} has {free // 1024**2} MiB free, the model needs {needed // 1024**2} MiB with a margin")
    base = target.resolve()
    places = []
    for file in files:
        local = target.joinpath(*file.path.split("/"))
        if base not in local.resolve().parents:
            raise ModelError(f"artifact {file.path} would land outside {target}: refused")
        local.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        places.append((file, local))

    def download(place: tuple[RemoteFile, Path]) -> None:
        file, local = place
        # O_EXCL | O_NOFOLLOW: nothing that is already there, a link included, is ever written through
        with os.fdopen(os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "wb") as out:
            api.download(f"{root}/{file.path}", file.size, out)

    # a model is a handful of files: a few at once halve the wait on round trips
    with ThreadPoolExecutor(max_workers=PARALLEL_DOWNLOADS) as pool:
        list(pool.map(download, places))
