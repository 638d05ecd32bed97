"""A cgroup tree of its own for each test host.

systemd-nspawn --keep-unit builds the container's tree (payload/, beside its own supervisor/) inside the cgroup it was
started in: hosts started from one process all got one tree, so one host's systemd stopped services in a tree the
others used too (systemd logged "Failed to kill control group ...: Input/output error", called the unit stopped
anyway, and the old server kept answering on the port). Started from a cgroup of its own, each host's systemd sees only its own services.
"""

from __future__ import annotations

from pathlib import Path

from .proc import TestbedError

TREE = "mlflow-fab-testbed"


def cgroup2_mount() -> Path:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, fs = line.partition(" - ")
        if fs.split(" ", 1)[0] == "cgroup2":
            return Path(fields.split(" ")[4])
    raise TestbedError("no cgroup2 file system is mounted: the test hosts' systemd needs one (mount -t cgroup2 none /sys/fs/cgroup/unified)")


def host_cgroup(name: str) -> Path:
    return cgroup2_mount() / TREE / name


def prepare(name: str) -> Path:
    """The host's empty cgroup, made if missing; its cgroup.procs moves a process in."""
    path = host_cgroup(name)
    remove(name)
    path.mkdir(parents=True, exist_ok=True)
    return path / "cgroup.procs"


def remove(name: str) -> None:
    """The host's cgroups, deepest first; one still holding a process stays (its host still runs)."""
    path = host_cgroup(name)
    if not path.is_dir():
        return
    for directory in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True) + [path]:
        try:
            directory.rmdir()
        except OSError:
            pass
