"""Benchmark setup-tracking on a testbed host: first converge on a fresh host, and the no-op re-run.

    .venv/bin/python bench/setup_tracking.py [--first-runs 5] [--noop-runs 5]

Prints medians; wall time includes interpreter start, as a user feels it.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import summary, timed_fab

from tests.integration.fabrun import host_entry, write_inventory
from tests.testbed import Testbed

HOST = "mlt9"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first-runs", type=int, default=5, help="fresh hosts to converge (at least 1)")
    parser.add_argument("--noop-runs", type=int, default=5)
    args = parser.parse_args()
    if args.first_runs < 1:
        parser.error("--first-runs must be at least 1: the no-op runs need a converged host")

    testbed = Testbed()
    testbed.prepare()
    inventory = Path(tempfile.mkdtemp()) / "hosts.toml"
    first, first_commands, noop, noop_commands = [], [], [], []
    host = None
    try:
        for run in range(args.first_runs):
            host = testbed.start(HOST)
            inventory.with_name("known_hosts").unlink(missing_ok=True)  # a fresh host has new host keys
            write_inventory(inventory, {HOST: host_entry(host, ["tracking"])})
            seconds, commands, _ = timed_fab(inventory, "setup-tracking")
            first.append(seconds)
            first_commands.append(commands)
            print(f"first converge {run + 1}: {seconds:.1f} s, {commands} remote commands", flush=True)
        for run in range(args.noop_runs):
            seconds, commands, output = timed_fab(inventory, "setup-tracking")
            assert f"{HOST} ok=" in output and "changed=0" in output, output
            noop.append(seconds)
            noop_commands.append(commands)
    finally:
        if host:
            host.stop()
    print()
    print(summary("setup-tracking, first converge", first, first_commands))
    print(summary("setup-tracking, no-op re-run", noop, noop_commands))


if __name__ == "__main__":
    main()
