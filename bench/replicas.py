"""Benchmark setup-tracking of a service of replicas on fresh testbed hosts: a db host, a balancer and 1 or 2 replicas
(artifacts in a real S3 server on a host of its own, set up before the clock starts).

    .venv/bin/python bench/replicas.py [--runs 3]

Prints medians; wall time includes interpreter start, as a user feels it. The second replica should add little: the
replicas converge in parallel, after the db host and before the balancer.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import summary, timed_fab

from tests.integration.fabrun import host_entry, write_inventory
from tests.integration.s3server import start_s3_server
from tests.testbed import Testbed

S3_HOST, DB_HOST, LB_HOST = "mlt13", "mlt38", "mlt39"
REPLICAS = ["mlt42", "mlt43"]


def converge_once(testbed: Testbed, s3, replicas: int, inventory: Path) -> tuple[float, int]:
    hosts = {name: testbed.start(name) for name in [DB_HOST, LB_HOST, *REPLICAS[:replicas]]}
    try:
        inventory.with_name("known_hosts").unlink(missing_ok=True)  # fresh hosts have new host keys
        roles = {DB_HOST: ["db"], LB_HOST: ["lb"]}
        write_inventory(inventory, {name: host_entry(host, roles.get(name, ["tracking"])) for name, host in hosts.items()}, tracking={
            "database": "host", "artifacts": f"s3://{s3.bucket}/bench", "s3_endpoint_url": s3.endpoint_url,
            "s3_credentials_file": str(s3.credentials_file(inventory.with_name("s3.env")))})
        seconds, commands, _ = timed_fab(inventory, "setup-tracking")
        return seconds, commands
    finally:
        for host in hosts.values():
            host.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh services converged per number of replicas")
    args = parser.parse_args()
    testbed = Testbed()
    testbed.prepare()
    inventory = Path(tempfile.mkdtemp()) / "hosts.toml"
    s3_host = testbed.start(S3_HOST)
    times: dict[int, list[float]] = {1: [], 2: []}
    commands: dict[int, list[int]] = {1: [], 2: []}
    try:
        s3 = start_s3_server(s3_host)
        for run in range(args.runs):
            for replicas in (1, 2):
                seconds, count = converge_once(testbed, s3, replicas, inventory)
                times[replicas].append(seconds)
                commands[replicas].append(count)
                print(f"{replicas} replica(s), run {run + 1}: {seconds:.1f} s, {count} remote commands", flush=True)
    finally:
        s3_host.stop()
    print()
    for replicas in (1, 2):
        print(summary(f"setup-tracking, db + lb + {replicas} replica(s)", times[replicas], commands[replicas]))
    print(f"{'  2 replicas / 1 replica (medians)':<38} {statistics.median(times[2]) / statistics.median(times[1]):7.2f}x")


if __name__ == "__main__":
    main()
