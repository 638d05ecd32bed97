"""Benchmark a rolling deploy behind nginx under load: tracking mlt6, lb mlt7, model hosts mlt3-5.

    .venv/bin/python bench/rolling.py [--runs 3]

A load generator on the tracking host POSTs predictions through nginx during each rolling deploy
(batch size 1) of a new run; prints requests sent and failed, p50/p99 latency and deploy time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import timed_fab

from tests.integration.fabrun import PLAIN_HTTP, PLAIN_LB, host_entry, write_inventory
from tests.integration.load import LoadGenerator
from tests.integration.test_rolling import ROW
from tests.testbed import Testbed
from tests.wine import log_wine_model

NAMES = ("mlt6", "mlt7", "mlt3", "mlt4", "mlt5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    testbed = Testbed()
    testbed.prepare()
    hosts = {name: testbed.start(name) for name in NAMES}
    rows = []
    try:
        entries = {"mlt6": host_entry(hosts["mlt6"], ["tracking"]), "mlt7": host_entry(hosts["mlt7"], ["lb"])}
        entries |= {name: host_entry(hosts[name], ["models"]) for name in NAMES[2:]}
        inventory = write_inventory(Path(tempfile.mkdtemp()) / "hosts.toml", entries, tracking={"workers": 1, **PLAIN_HTTP}, lb=PLAIN_LB)
        timed_fab(inventory, "setup-tracking")
        timed_fab(inventory, "setup-lb")
        tracking_uri = f"http://{hosts['mlt6'].address}:5000"
        timed_fab(inventory, "deploy-model", "--run-id", log_wine_model(tracking_uri), "--batch-size", "100%")
        for run in range(args.runs):
            run_id = log_wine_model(tracking_uri, alpha=0.1 + run / 10)
            load = LoadGenerator(hosts["mlt6"], "http://mlt7:5001/invocations", json.dumps(ROW))
            load.start()
            try:
                seconds, _, _ = timed_fab(inventory, "deploy-model", "--run-id", run_id, "--batch-size", "1")
            finally:
                counts = load.stop()
            rows.append((seconds, counts))
            print(f"rolling deploy {run + 1}: {seconds:.1f} s, {counts}", flush=True)
    finally:
        for host in hosts.values():
            host.stop()
    print()
    for seconds, counts in rows:
        print(f"3 hosts, batch 1: deploy {seconds:6.1f} s   requests {counts['sent']:6d}   failed {counts['failed']}"
              f"   p50 {counts['p50_ms']} ms   p99 {counts['p99_ms']} ms")
    print(f"median deploy time {statistics.median(s for s, _ in rows):.1f} s, failed requests in all: {sum(c['failed'] for _, c in rows)}")


if __name__ == "__main__":
    main()
