"""Benchmark the wheelhouse: setup-tracking's first converge on a fresh host, with and without it.

    .venv/bin/python bench/wheelhouse.py [--runs 3]

Each run boots a fresh host with an empty pip cache for the env builder, and converges it once with
`wheelhouse = false` (the host installs from PyPI) and once with `wheelhouse = true` (the laptop's cache is warm
after the first fetch, which is timed on its own: a fresh laptop cache with the host's).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from common import summary, timed_fab

from tests.integration.fabrun import host_entry, write_inventory
from tests.testbed import Testbed

HOST = "mlt45"


def first_converge(testbed: Testbed, inventory: Path, wheelhouse: bool) -> tuple[float, int]:
    host = testbed.start(HOST)
    try:
        host.run("rm -rf /var/cache/mlflow-build/pip/*")  # the shared testbed cache would make PyPI look warm
        inventory.with_name("known_hosts").unlink(missing_ok=True)  # a fresh host has new host keys
        write_inventory(inventory, {HOST: host_entry(host, ["tracking"], wheelhouse=wheelhouse)})
        seconds, commands, output = timed_fab(inventory, "setup-tracking")
        print("\n".join(line.strip() for line in output.splitlines() if " wheelhouse: " in line), flush=True)
        return seconds, commands
    finally:
        host.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh hosts converged each way")
    runs = parser.parse_args().runs
    work = Path(tempfile.mkdtemp())
    testbed = Testbed()
    testbed.prepare()
    inventory = work / "hosts.toml"
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")  # the laptop's wheelhouse starts cold
    cold = first_converge(testbed, inventory, wheelhouse=True)
    print(f"wheelhouse, cold laptop cache: {cold[0]:.1f} s", flush=True)
    results: dict[bool, list[tuple[float, int]]] = {False: [], True: []}
    for run in range(runs):
        for wheelhouse in (False, True):
            results[wheelhouse].append(first_converge(testbed, inventory, wheelhouse))
            print(f"run {run + 1}, wheelhouse = {str(wheelhouse).lower()}: {results[wheelhouse][-1][0]:.1f} s", flush=True)
    print()
    print(summary("first converge, cold laptop wheelhouse", [cold[0]], [cold[1]]))
    for wheelhouse, label in ((False, "first converge, wheelhouse = false"), (True, "first converge, wheelhouse = true")):
        print(summary(label, [seconds for seconds, _ in results[wheelhouse]], [commands for _, commands in results[wheelhouse]]))


if __name__ == "__main__":
    main()
