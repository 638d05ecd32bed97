"""Benchmark deploy-model on testbed hosts (tracking on mlt7, the model host mlt8 unless told otherwise).

    .venv/bin/python bench/deploy_model.py [--first-runs 3] [--runs 5] [--noop-runs 7] [--list-runs 10]
                                           [--tracking-host mlt7] [--models-host mlt8] [--fleet-hosts 6]

Reports median, min and max of: the first deploy on a fresh host (env build included), a redeploy
of a new run with unchanged requirements (env reused; health gate included), a no-op redeploy (the
run already serving, deployed again), the same no-op over --fleet-hosts model hosts, and `fab -l`. Wall time includes interpreter start and
fetching the model from the tracking server.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
from pathlib import Path

from common import summary, timed_fab

from tests.integration.fabrun import PLAIN_HTTP, host_entry, write_inventory
from tests.testbed import Testbed
from tests.wine import log_wine_model


# the model hosts of the no-op over many hosts (with --models-host)
FLEET = ["mlt13", "mlt38", "mlt39", "mlt44", "mlt45"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first-runs", type=int, default=3, help="fresh model hosts to deploy to (at least 1)")
    parser.add_argument("--runs", type=int, default=5, help="redeploys of a new run to time")
    parser.add_argument("--noop-runs", type=int, default=7, help="no-op redeploys of the serving run to time (at least 1)")
    parser.add_argument("--list-runs", type=int, default=10, help="`fab -l` runs to time (at least 1)")
    parser.add_argument("--tracking-host", default="mlt7", help="testbed host for the tracking server")
    parser.add_argument("--models-host", default="mlt8", help="testbed host for the model server")
    parser.add_argument("--fleet-hosts", type=int, default=6, help=f"model hosts for the no-op over many hosts (at most {len(FLEET) + 1}; 0: skip)")
    args = parser.parse_args()
    if min(args.first_runs, args.noop_runs, args.list_runs) < 1:
        parser.error("--first-runs, --noop-runs and --list-runs must be at least 1")
    tracking_name, models_name = args.tracking_host, args.models_host

    testbed = Testbed()
    testbed.prepare()
    inventory = Path(tempfile.mkdtemp()) / "hosts.toml"
    started = []
    results = {"first": ([], []), "redeploy": ([], []), "noop": ([], []), "fleet": ([], []), "list": ([], [])}
    list_cpu = []
    try:
        tracking = testbed.start(tracking_name)
        started.append(tracking)
        write_inventory(inventory, {tracking_name: host_entry(tracking, ["tracking"])}, tracking={"workers": 1, **PLAIN_HTTP})
        timed_fab(inventory, "setup-tracking")
        tracking_uri = f"http://{tracking.address}:5000"
        run_id = log_wine_model(tracking_uri)
        for run in range(args.first_runs):
            models = testbed.start(models_name)
            started.append(models)
            known_hosts = inventory.with_name("known_hosts")
            known_hosts.write_text("".join(line for line in known_hosts.read_text().splitlines(True) if models.address not in line))
            write_inventory(
                inventory,
                {tracking_name: host_entry(tracking, ["tracking"]), models_name: host_entry(models, ["models"])},
                tracking={"workers": 1, **PLAIN_HTTP},
            )
            seconds, commands, _ = timed_fab(inventory, "deploy-model", "--run-id", run_id)
            results["first"][0].append(seconds)
            results["first"][1].append(commands)
            print(f"first deploy {run + 1}: {seconds:.1f} s", flush=True)
        for run in range(args.runs):
            run_id = log_wine_model(tracking_uri, alpha=0.1 + run / 10)
            seconds, commands, _ = timed_fab(inventory, "deploy-model", "--run-id", run_id)
            results["redeploy"][0].append(seconds)
            results["redeploy"][1].append(commands)
            print(f"redeploy {run + 1}: {seconds:.1f} s", flush=True)
        for run in range(args.noop_runs):
            seconds, commands, output = timed_fab(inventory, "deploy-model", "--run-id", run_id)
            assert f"{models_name} ok=" in output and "changed=0" in output, output
            results["noop"][0].append(seconds)
            results["noop"][1].append(commands)
            print(f"no-op {run + 1}: {seconds:.2f} s", flush=True)
        fleet = [models, *(testbed.start(name) for name in FLEET[:args.fleet_hosts - 1])] if args.fleet_hosts else []
        started += fleet[1:]
        if fleet:
            write_inventory(inventory, {tracking_name: host_entry(tracking, ["tracking"]),
                                        **{host.name: host_entry(host, ["models"]) for host in fleet}}, tracking={"workers": 1, **PLAIN_HTTP})
            timed_fab(inventory, "deploy-model", "--run-id", run_id, "--batch-size", "100%")
            for run in range(args.noop_runs):
                seconds, commands, output = timed_fab(inventory, "deploy-model", "--run-id", run_id)
                assert output.count("changed=0") == len(fleet), output
                results["fleet"][0].append(seconds)
                results["fleet"][1].append(commands)
        for _ in range(args.list_runs):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            seconds, commands, _ = timed_fab(inventory, "-l")
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            list_cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            results["list"][0].append(seconds)
            results["list"][1].append(commands)
    finally:
        for host in started:
            host.stop()
    print()
    print(summary("deploy-model, first deploy (env build)", *results["first"]))
    if args.runs:
        print(summary("deploy-model, new run, same requirements", *results["redeploy"]))
    print(summary("deploy-model, no-op redeploy", *results["noop"]))
    if results["fleet"][0]:
        print(summary(f"deploy-model, no-op over {len(fleet)} hosts", *results["fleet"]))
    print(summary("fab -l", *results["list"]))
    # on a busy machine the wall clock mostly measures the wait for a core
    print(f"{'fab -l, CPU (user + sys)':<38} median {statistics.median(list_cpu):7.2f} s   min {min(list_cpu):7.2f}   max {max(list_cpu):7.2f}")


if __name__ == "__main__":
    main()
