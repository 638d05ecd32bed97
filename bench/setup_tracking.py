"""Benchmark setup-tracking on testbed hosts: first converge on a fresh host, the no-op re-run, and several fresh hosts at once.

    .venv/bin/python bench/setup_tracking.py [--first-runs 5] [--noop-runs 5] [--parallel-hosts 3] [--parallel-runs 3]

Prints medians; wall time includes interpreter start, as a user feels it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import summary, timed_fab

from tests.integration.fabrun import host_entry, write_inventory
from tests.testbed import Testbed

HOST = "mlt9"
# converged together, to compare with one host alone
PARALLEL_HOSTS = ["mlt9", "mlt13", "mlt38", "mlt39", "mlt42", "mlt43"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first-runs", type=int, default=5, help="fresh hosts to converge (at least 1)")
    parser.add_argument("--noop-runs", type=int, default=5)
    parser.add_argument("--parallel-hosts", type=int, default=3, help=f"fresh hosts converged by one setup-tracking (at most {len(PARALLEL_HOSTS)}; 0: skip)")
    parser.add_argument("--parallel-runs", type=int, default=3)
    args = parser.parse_args()
    if args.first_runs < 1:
        parser.error("--first-runs must be at least 1: the no-op runs need a converged host")

    testbed = Testbed()
    testbed.prepare()
    inventory = Path(tempfile.mkdtemp()) / "hosts.toml"
    first, first_commands, noop, noop_commands, together, together_commands = [], [], [], [], [], []
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
    names = PARALLEL_HOSTS[:args.parallel_hosts]
    for run in range(args.parallel_runs if names else 0):
        hosts = [testbed.start(name) for name in names]
        try:
            inventory.with_name("known_hosts").unlink(missing_ok=True)
            write_inventory(inventory, {host.name: host_entry(host, ["tracking"]) for host in hosts})
            seconds, commands, _ = timed_fab(inventory, "setup-tracking")
            together.append(seconds)
            together_commands.append(commands)
            print(f"{len(hosts)} hosts at once {run + 1}: {seconds:.1f} s", flush=True)
        finally:
            for each in hosts:
                each.stop()
    print()
    print(summary("setup-tracking, first converge", first, first_commands))
    print(summary("setup-tracking, no-op re-run", noop, noop_commands))
    if together:
        print(summary(f"setup-tracking, {len(names)} fresh hosts at once", together, together_commands))
        print(f"{'  ratio to one host (medians)':<38} {statistics.median(together) / statistics.median(first):7.2f}x")


if __name__ == "__main__":
    main()
