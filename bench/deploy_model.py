"""Benchmark deploy-model on testbed hosts (tracking on mlt7, the model host mlt8).

    .venv/bin/python bench/deploy_model.py [--first-runs 3] [--runs 5]

Reports medians of: the first deploy on a fresh host (env build included), a redeploy of a new
run with unchanged requirements (env reused; health gate included), and a no-op redeploy.
Wall time includes interpreter start and fetching the model from the tracking server.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import summary, timed_fab

from tests.integration.fabrun import PLAIN_HTTP, host_entry, write_inventory
from tests.testbed import Testbed
from tests.wine import log_wine_model

TRACKING, MODELS = "mlt7", "mlt8"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first-runs", type=int, default=3, help="fresh model hosts to deploy to (at least 1)")
    parser.add_argument("--runs", type=int, default=5, help="redeploys and no-ops to time")
    args = parser.parse_args()
    if args.first_runs < 1:
        parser.error("--first-runs must be at least 1")

    testbed = Testbed()
    testbed.prepare()
    inventory = Path(tempfile.mkdtemp()) / "hosts.toml"
    started = []
    results = {"first": ([], []), "redeploy": ([], []), "noop": ([], [])}
    try:
        tracking = testbed.start(TRACKING)
        started.append(tracking)
        write_inventory(inventory, {TRACKING: host_entry(tracking, ["tracking"])}, tracking={"workers": 1, **PLAIN_HTTP})
        timed_fab(inventory, "setup-tracking")
        tracking_uri = f"http://{tracking.address}:5000"
        run_id = log_wine_model(tracking_uri)
        for run in range(args.first_runs):
            models = testbed.start(MODELS)
            started.append(models)
            known_hosts = inventory.with_name("known_hosts")
            known_hosts.write_text("".join(line for line in known_hosts.read_text().splitlines(True) if models.address not in line))
            write_inventory(
                inventory,
                {TRACKING: host_entry(tracking, ["tracking"]), MODELS: host_entry(models, ["models"])},
                tracking={"workers": 1, **PLAIN_HTTP},
            )
            seconds, commands, _ = timed_fab(inventory, "deploy-model", "--run-id", run_id)
            results["first"][0].append(seconds)
            results["first"][1].append(commands)
            print(f"first deploy {run + 1}: {seconds:.1f} s", flush=True)
        for run in range(args.runs):
            new_run = log_wine_model(tracking_uri, alpha=0.1 + run / 10)
            seconds, commands, _ = timed_fab(inventory, "deploy-model", "--run-id", new_run)
            results["redeploy"][0].append(seconds)
            results["redeploy"][1].append(commands)
            print(f"redeploy {run + 1}: {seconds:.1f} s", flush=True)
            seconds, commands, output = timed_fab(inventory, "deploy-model", "--run-id", new_run)
            assert f"{MODELS} ok=" in output and "changed=0" in output, output
            results["noop"][0].append(seconds)
            results["noop"][1].append(commands)
    finally:
        for host in started:
            host.stop()
    print()
    print(summary("deploy-model, first deploy (env build)", *results["first"]))
    print(summary("deploy-model, new run, same requirements", *results["redeploy"]))
    print(summary("deploy-model, no-op redeploy", *results["noop"]))


if __name__ == "__main__":
    main()
