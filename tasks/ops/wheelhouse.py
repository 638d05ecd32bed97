"""The wheelhouse on the laptop: the wheels of one requirement set for one host platform, resolved and downloaded once.

pip download runs here, with the laptop's index and network, for the host's Python and platform (from its facts), so
hosts need no route to PyPI. Each set lives in its own directory under the cache, named by a hash of the requirements
and the target, and is complete once its manifest (file name -> sha256) is written; a later run reuses it offline.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"
OLDEST_GLIBC_MINOR = 5  # manylinux1 is manylinux_2_5
LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
NO_DISTRIBUTION = re.compile(r"No matching distribution found for (\S+)")
NETWORK_TROUBLE = ("NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution",
                   "Max retries exceeded", "ConnectTimeout", "ReadTimeoutError", "ProxyError", "Network is unreachable")
# name-version(-build)?-python-abi-platform.whl: a plain file name, never starting with "-" or "."
WHEEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.]*-[A-Za-z0-9_.+!]+(-[A-Za-z0-9_.+!]+){3,4}\.whl")
SHA256 = re.compile(r"[0-9a-f]{64}")
SOURCE_BUILD_ROUNDS = 10
PIP_TIMEOUT = 1800


class WheelhouseError(Exception):
    """The laptop could not make the wheelhouse; the message names the package and what to do."""


@dataclass(frozen=True)
class Target:
    """A host's Python and platform, as pip's tags name them."""

    python: str  # "3.11"
    machine: str  # "x86_64"
    glibc: str  # "2.36"

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")

    @property
    def platforms(self) -> list[str]:
        """Every manylinux tag a glibc of this version runs, newest first (pip does not expand manylinux_2_N itself)."""
        major, minor = (int(part) for part in self.glibc.split("."))
        tags = []
        for each in range(minor, OLDEST_GLIBC_MINOR - 1, -1) if major == 2 else ():
            tags.append(f"manylinux_2_{each}_{self.machine}")
            if each in LEGACY_MANYLINUX:
                tags.append(f"{LEGACY_MANYLINUX[each]}_{self.machine}")
        return tags

    @property
    def text(self) -> str:
        return f"CPython {self.python} on {self.machine} with glibc {self.glibc}"


def parse_target(fact: str) -> Target:
    """`3.11 x86_64 glibc 2.36` (the host's target fact) -> Target; an incomplete fact says what is missing."""
    parts = fact.split()
    if len(parts) != 4 or not re.fullmatch(r"3\.\d+", parts[0]) or parts[2] != "glibc" or not re.fullmatch(r"2\.\d+", parts[3]):
        raise WheelhouseError(f"cannot tell this host's Python and glibc for the wheelhouse (got {fact.strip()!r}): "
                              "it needs python3 or apt's candidate for it (apt-get update), and glibc; "
                              "or set wheelhouse = false for this host")
    if not re.fullmatch(r"[A-Za-z0-9_]+", parts[1]):
        raise WheelhouseError(f"unexpected machine type {parts[1]!r} on this host")
    return Target(parts[0], parts[1], parts[3])


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlflow-fab" / "wheelhouse"


def cache_key(requirements: tuple[str, ...], target: Target, allow_source_builds: bool) -> str:
    """The same requirements in any order, for the same target, share a wheelhouse."""
    text = "\n".join([*sorted(requirements), target.text, f"source-builds={allow_source_builds}"])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def download_command(dest: Path, requirements_file: Path, target: Target, find_links: tuple[Path, ...] = ()) -> list[str]:
    """pip download of binary wheels only, for the host's interpreter and platform rather than the laptop's."""
    command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
               "--dest", str(dest), "--only-binary=:all:", "--implementation", "cp", "--python-version", target.python,
               "--abi", target.abi]
    for platform in target.platforms:
        command += ["--platform", platform]
    for directory in find_links:
        command += ["--find-links", str(directory)]
    return command + ["-r", str(requirements_file)]


def source_wheel_command(dest: Path, requirement: str) -> list[str]:
    """A wheel built here from an sdist, for a requirement with no wheel for the target (used only when it is pure Python)."""
    return [sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
            "--no-deps", "--wheel-dir", str(dest), requirement]


def is_pure(wheel: str) -> bool:
    """py3-none-any and friends run on any platform."""
    return wheel.endswith("-none-any.whl")


@dataclass(frozen=True)
class Wheelhouse:
    """One complete requirement set on the laptop: its directory and each file's sha256."""

    directory: Path
    files: dict[str, str]

    def pins(self) -> tuple[str, ...]:
        """name==version of every wheel, so the host installs exactly what was resolved here."""
        return tuple(sorted(f"{name}=={version}" for name, version in (wheel_name_version(file) for file in self.files)))


def wheel_name_version(file: str) -> tuple[str, str]:
    name, version, *_ = file.split("-")
    return name, version


def read_manifest(directory: Path) -> Wheelhouse | None:
    """The cached wheelhouse, or None when absent or not as we write it (then it is fetched again)."""
    try:
        files = json.loads((directory / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return None
    if not isinstance(files, dict) or not all(
            isinstance(name, str) and WHEEL_NAME.fullmatch(name) and isinstance(digest, str) and SHA256.fullmatch(digest)
            and (directory / name).is_file() and not (directory / name).is_symlink() for name, digest in files.items()):
        return None
    return Wheelhouse(directory, files)


def pip_failure(output: str, target: Target, allow_source_builds: bool) -> tuple[str, WheelhouseError]:
    """What pip's failure means: (the requirement without a wheel, or '') and the error to give the user."""
    last = next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "pip failed")
    if any(sign in output for sign in NETWORK_TROUBLE):
        return "", WheelhouseError(f"this machine cannot reach the package index to fetch the wheelhouse (pip: {last}): "
                                   "no host was changed; fix this machine's network or index, or set wheelhouse = false in hosts.toml")
    missing = NO_DISTRIBUTION.findall(output)
    if missing:
        requirement = missing[-1]
        if allow_source_builds:
            return requirement, WheelhouseError(f"No matching distribution found for {requirement} for {target.text}")
        return requirement, WheelhouseError(
            f"No matching distribution found for {requirement}: it has no wheel for {target.text} (or no such version). "
            "No host was changed. Pick a version published as a wheel, or set allow_source_builds = true in hosts.toml "
            "to build it from source")
    return "", WheelhouseError(f"pip could not fetch the wheelhouse: {last}")


def run_pip(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT)


def build_pure_wheel(requirement: str, built: Path, target: Target) -> None:
    """The sdist of REQUIREMENT built into a wheel here; refused when the wheel is tied to this laptop's platform."""
    result = run_pip(source_wheel_command(built, requirement))
    if result.returncode != 0:
        last = next((line.strip() for line in reversed((result.stdout + result.stderr).splitlines()) if line.strip()), "pip wheel failed")
        raise WheelhouseError(f"building {requirement} from source on this machine failed ({last}): no host was changed")
    impure = [wheel.name for wheel in built.glob("*.whl") if not is_pure(wheel.name)]
    if impure:
        raise WheelhouseError(f"{requirement} has no wheel for {target.text} and its source builds platform code "
                              f"({impure[0]}): the wheelhouse can't carry it. Set wheelhouse = false for these hosts "
                              "(they build it themselves from PyPI with allow_source_builds), or use a version published as a wheel")


def download(requirements: tuple[str, ...], target: Target, allow_source_builds: bool, directory: Path) -> Wheelhouse:
    """Fetch the set into DIRECTORY (fresh); pure-Python sdists become wheels here when allow_source_builds says so."""
    requirements_file = directory / "requirements.txt"
    requirements_file.write_text("\n".join(requirements) + "\n")
    built = directory / "built"
    wheels = directory / "wheels"
    tried: set[str] = set()
    for _ in range(SOURCE_BUILD_ROUNDS):
        result = run_pip(download_command(wheels, requirements_file, target, (built,) if built.exists() else ()))
        if result.returncode == 0:
            break
        requirement, error = pip_failure(result.stdout + result.stderr, target, allow_source_builds)
        if not (requirement and allow_source_builds) or requirement in tried:
            raise error
        tried.add(requirement)
        build_pure_wheel(requirement, built, target)
    else:
        raise WheelhouseError(f"more than {SOURCE_BUILD_ROUNDS} requirements need building from source: no host was changed")
    files = {}
    for wheel in sorted(wheels.iterdir()):
        if not WHEEL_NAME.fullmatch(wheel.name) or wheel.is_symlink() or not wheel.is_file():
            raise WheelhouseError(f"pip fetched {wheel.name}, which is not a wheel file: no host was changed")
        files[wheel.name] = hashlib.sha256(wheel.read_bytes()).hexdigest()
    return Wheelhouse(wheels, files)


def prepare(requirements: tuple[str, ...], target: Target, allow_source_builds: bool, root: Path | None = None) -> Wheelhouse:
    """The set's wheelhouse from the cache, or fetched now; one fetch of a set at a time (threads and processes)."""
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(requirements, target, allow_source_builds)
    final = root / key
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cached = read_manifest(final)
        if cached:
            return cached
        shutil.rmtree(final, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        try:
            fetched = download(requirements, target, allow_source_builds, work)
            (work / "wheels" / MANIFEST).write_text(json.dumps({"requirements": list(requirements), "target": target.text,
                                                                "files": fetched.files}, indent=1))
            (work / "wheels").rename(final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return Wheelhouse(final, fetched.files)
