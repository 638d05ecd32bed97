"""The wheelhouse on a host: the laptop's wheels for an env it must build, sent only where the host lacks them.

An env that is already complete needs nothing. For one that must be built, the host's Python and platform and the
wheels it holds (name and sha256, in an index written as each file arrives) come back in one command; the laptop
sends the files that are missing or differ in one archive, root checks each file's sha256 and moves it into the
host's cache, and the env is then installed from that directory alone (`pip install --no-index --find-links`).
"""

from __future__ import annotations

import dataclasses
import shlex
import tarfile
import tempfile
import time
from pathlib import Path

from tasks.ops import facts as f
from tasks.ops.pyenv import EnvSpec
from tasks.ops.remote import HostError, Remote, private_path
from tasks.ops.steps import Step
from tasks.ops.wheelhouse import Wheelhouse, WheelhouseError, parse_target, prepare

HOST_CACHE = "/var/cache/mlflow-fab"
WHEELS = f"{HOST_CACHE}/wheels"
INDEX = f"{HOST_CACHE}/wheels.sha256"  # "sha256 name" per file received; a file counts only while it is also there
UPLOAD = "wheels.tar"

TARGET = ("v=$(python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])' 2>/dev/null"
          " || apt-cache policy python3 | sed -n 's/^ *Candidate: \\([0-9]*\\.[0-9]*\\).*/\\1/p')\n"
          'echo "$v $(uname -m) $(getconf GNU_LIBC_VERSION)"')
HELD = f'cd {WHEELS} && while read -r sum name; do [ -f "$name" ] && echo "$sum $name"; done < {INDEX}'


def parse_held(text: str) -> dict[str, str]:
    """name -> sha256 of the wheels the host holds (the last line for a name wins: a file may have been replaced)."""
    return {name: digest for digest, name in (line.split() for line in text.splitlines() if len(line.split()) == 2)}


WHEEL_TARGET = f.Fact("wheel_target", TARGET, parse_target)
WHEELS_HELD = f.Fact("wheels_held", HELD, parse_held)


def missing_files(wanted: dict[str, str], held: dict[str, str]) -> list[str]:
    """The files to send: absent on the host, or there with another sha256."""
    return sorted(name for name, digest in wanted.items() if held.get(name) != digest)


def archive(house: Wheelhouse, names: list[str], path: Path) -> Path:
    """The missing wheels in one uncompressed tar on disk (wheels are compressed already), plain names only."""
    with tarfile.open(path, mode="w") as tar:
        for name in names:
            tar.add(house.directory / name, arcname=name, recursive=False)
    return path


def intake_script(house: Wheelhouse, names: list[str]) -> str:
    """Unpack the upload beside the cache, check every sha256, then move each file into place and index it."""
    sums = "".join(f"{house.files[name]}  {name}\n" for name in names)
    index_lines = "".join(f"{house.files[name]} {name}\n" for name in names)
    moves = "\n".join(f"mv -f \"$stage\"/{shlex.quote(name)} {WHEELS}/" for name in names)
    return f"""set -e
install -d -o root -g root -m 755 {HOST_CACHE} {WHEELS}
stage=$(mktemp -d {HOST_CACHE}/.incoming-XXXXXX)
trap 'rm -rf "$stage"' EXIT
tar -xf {private_path(UPLOAD)} -C "$stage" --no-same-owner --no-same-permissions
cd "$stage"
if [ -n "$(find . -mindepth 1 ! -type f)" ]; then echo 'the upload holds something other than plain files: nothing was installed from it' >&2; exit 1; fi
printf %s {shlex.quote(sums)} | sha256sum -c --quiet - || {{ echo 'a wheel changed on its way to this host: nothing was installed from it' >&2; exit 1; }}
chmod 644 -- *
{moves}
exec 9>>{INDEX}
flock 9
printf %s {shlex.quote(index_lines)} >> {INDEX}"""


def supply(remote: Remote, spec: EnvSpec, marker: str, check: bool) -> tuple[EnvSpec, list[Step]]:
    """The spec to build SPEC's env with, from the host's wheelhouse when it must be built and the host uses one,
    and the step that says what was sent.

    Unchanged when the env is complete (MARKER), in check mode, for conda, or with wheelhouse = false. A laptop-side
    failure raises HostError naming the package before anything reaches the host.
    """
    if check or not remote.host.wheelhouse or spec.manager != "venv" or marker.strip() == spec.text:
        return spec, []
    started = time.monotonic()
    gathered = f.gather(remote, [WHEEL_TARGET, WHEELS_HELD])
    try:
        target = gathered[WHEEL_TARGET]
        house = prepare(spec.packages, target, spec.allow_source_builds)
    except WheelhouseError as error:
        raise HostError("wheelhouse", str(error)) from None
    fetched = time.monotonic()
    missing = missing_files(house.files, gathered[WHEELS_HELD])
    if missing:
        with tempfile.TemporaryDirectory() as local, remote.private_upload(archive(house, missing, Path(local) / UPLOAD), private_path(UPLOAD)):
            result = remote.run_script(intake_script(house, missing), step="wheelhouse")
        if result.exited != 0:
            raise HostError("wheelhouse", result.stdout.strip()[-500:] or "receiving the wheels failed")
    size = sum((house.directory / name).stat().st_size for name in missing)
    summary = (f"{len(house.files)} wheels for {target.text}: {len(missing)} sent ({size / 1e6:.1f} MB), "
               f"{len(house.files) - len(missing)} already here (the laptop had them ready in {fetched - started:.1f} s, "
               f"sent in {time.monotonic() - fetched:.1f} s)")
    return dataclasses.replace(spec, find_links=WHEELS, pins=house.pins()), [Step("wheelhouse", summary, changed=bool(missing))]
