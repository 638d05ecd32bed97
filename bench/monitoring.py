"""What monitoring costs a host at rest: CPU and memory of the exporters setup-monitoring installs (the node exporter on
every host, mtail on lb and model hosts, the nginx exporter on lb hosts, the tracking server's metrics service and the
PostgreSQL exporter on a tracking host) and of Prometheus and the blackbox exporter on the monitor host, scraped every 15 s (the default).

    .venv/bin/python bench/monitoring.py [--windows 3] [--seconds 60]

Fresh testbed hosts: a monitor host, an lb host, a model host serving the wine model, and a tracking host (no TLS, no
sign-in). Each process is measured over windows of --seconds
(CPU from /proc/PID/stat, resident memory from /proc/PID/status); prints the median of the windows.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import timed_fab

from tests.integration.fabrun import host_entry, write_inventory
from tests.testbed import Testbed
from tests.wine import log_wine_model

MONITOR, LB, MODELS, TRACKING = "mlt55", "mlt56", "mlt57", "mlt59"
PROCESSES = {MODELS: ["prometheus-node-exporter", "mtail"],
             TRACKING: ["prometheus-node-exporter", "mlflow-tracking-metrics", "prometheus-postgres-exporter"], LB: ["prometheus-node-exporter", "mtail", "prometheus-nginx-exporter"],
             MONITOR: ["prometheus-node-exporter", "prometheus", "prometheus-blackbox-exporter"]}
# a unit's main process: /proc/PID/stat, its VmRSS line, and the clock ticks per second
SAMPLE = "pid=$(systemctl show -p MainPID --value {unit}); cat /proc/$pid/stat; grep '^VmRSS:' /proc/$pid/status; getconf CLK_TCK"


def sample(host, unit: str) -> tuple[int, int, int]:
    """(utime + stime in clock ticks, resident kB, ticks per second)."""
    stat, rss, ticks = host.run(SAMPLE.format(unit=unit)).stdout.splitlines()
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return int(fields[11]) + int(fields[12]), int(rss.split()[1]), int(ticks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    testbed = Testbed()
    testbed.prepare()
    hosts = {name: testbed.start(name) for name in (MONITOR, LB, MODELS, TRACKING)}
    try:
        inventory = Path(tempfile.mkdtemp()) / "hosts.toml"
        roles = {MONITOR: ["monitor"], LB: ["lb"], MODELS: ["models"], TRACKING: ["tracking"]}
        write_inventory(inventory, {name: host_entry(host, roles[name]) for name, host in hosts.items()},
                        tracking={"tls": False, "auth": False, "workers": 2})
        timed_fab(inventory, "setup-lb")  # nginx in front of the model host: what mtail and the nginx exporter read
        timed_fab(inventory, "setup-tracking")
        timed_fab(inventory, "deploy-model", "--run-id", log_wine_model(f"http://{hosts[TRACKING].address}:5000"))
        seconds, _, _ = timed_fab(inventory, "setup-monitoring")
        print(f"setup-monitoring on 4 hosts (fresh but for the tracking server, the balancer and the model): {seconds:.1f} s", flush=True)
        cpu: dict[tuple[str, str], list[float]] = {}
        memory: dict[tuple[str, str], list[float]] = {}
        for window in range(args.windows):
            before = {(name, unit): sample(hosts[name], unit) for name, units in PROCESSES.items() for unit in units}
            time.sleep(args.seconds)  # the processes at rest for one window: what is measured
            for key, (ticks_before, _, hz) in before.items():
                ticks_after, rss, _ = sample(hosts[key[0]], key[1])
                cpu.setdefault(key, []).append(100 * (ticks_after - ticks_before) / hz / args.seconds)
                memory.setdefault(key, []).append(rss / 1024)
            print(f"window {window + 1}/{args.windows} done", flush=True)
    finally:
        for host in hosts.values():
            host.stop()
    print()
    roles_of = {MONITOR: "monitor host", LB: "lb host", MODELS: "model host", TRACKING: "tracking host"}
    for (name, unit), values in cpu.items():
        print(f"{roles_of[name]:<13} {unit:<30} CPU {statistics.median(values):5.2f} % of one core   "
              f"RSS {statistics.median(memory[(name, unit)]):6.1f} MB   (median of {len(values)} windows of {args.seconds:g} s)")


if __name__ == "__main__":
    main()
