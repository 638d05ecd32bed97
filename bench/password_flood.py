"""Benchmark a legitimate client's request time while another host floods the tracking server with wrong passwords.

    .venv/bin/python bench/password_flood.py [--runs 3] [--seconds 20] [--flood 200]

On fresh testbed hosts mlt15 (tracking server, hosts.toml defaults) and mlt16 (the attacker): the laptop, as
admin over one kept-alive connection, sends API calls back to back for --seconds while mlt16 runs --flood
parallel wrong-password connections, then the same without the flood; with the sign-in guard on (the default)
and off. Prints the median over the runs of each run's p50 and p99.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import ssl
import statistics
import tempfile
import threading
import time
from pathlib import Path

from common import timed_fab

from tests.integration.fabrun import host_entry, write_inventory
from tests.testbed import Testbed

SERVER, ATTACKER = "mlt15", "mlt16"
API = "/api/2.0/mlflow/experiments/search?max_results=1"
FLOOD_SCRIPT = Path(__file__).with_name("wrong_password_flood.py")


def client_latencies(address: str, password: str, seconds: float) -> list[float]:
    """Seconds per request of a client logging at full speed; a request may not outlive the flood by far."""
    connection = http.client.HTTPSConnection(address, 5000, timeout=300, context=ssl._create_unverified_context())
    headers = {"Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()}
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        connection.request("GET", API, headers=headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"the legitimate client got HTTP {response.status}")
        latencies.append(time.perf_counter() - started)
    connection.close()
    return sorted(latencies)


def percentile(values: list[float], share: float) -> float:
    return values[min(len(values) - 1, int(len(values) * share))]


def measure(server, attacker, password: str, seconds: float, flood: int) -> tuple[float, float, str]:
    """(p50, p99, what the flood got) of one run; flood = 0: no flood."""
    outcome = {}
    if flood:
        command = f"python3 /root/wrong_password_flood.py {server.address} 5000 {seconds + 2} {flood}"
        thread = threading.Thread(target=lambda: outcome.update(json.loads(attacker.run(command, timeout=seconds + 120).stdout)))
        thread.start()
        time.sleep(1)  # the flood's connections are open before the client starts
    latencies = client_latencies(server.address, password, seconds)
    if flood:
        thread.join()
    server.run("fail2ban-client unban --all >/dev/null 2>&1 || true")  # the next run's attacker starts unbanned
    return percentile(latencies, 0.5), percentile(latencies, 0.99), json.dumps(outcome, sort_keys=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20, help="length of each measurement (at most 120)")
    parser.add_argument("--flood", type=int, default=200, help="parallel wrong-password connections")
    args = parser.parse_args()
    if not (1 <= args.runs <= 20 and 1 <= args.seconds <= 120 and 1 <= args.flood <= 500):
        parser.error("--runs 1-20, --seconds 1-120, --flood 1-500")

    testbed = Testbed()
    testbed.prepare()
    inventory = Path(tempfile.mkdtemp()) / "hosts.toml"
    started = []
    try:
        server, attacker = testbed.start(SERVER), testbed.start(ATTACKER)
        started = [server, attacker]
        attacker.run("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3", timeout=600)
        attacker.run("cat > /root/wrong_password_flood.py", input=FLOOD_SCRIPT.read_text())
        results = []
        for guard in (True, False):
            write_inventory(inventory, {SERVER: host_entry(server, ["tracking"])}, tracking={"signin_guard": guard})
            timed_fab(inventory, "setup-tracking")
            password = server.run("sed -n 's/^MLFLOW_AUTH_ADMIN_PASSWORD=//p' /etc/mlflow/tracking.env").stdout.strip()
            for flood in (0, args.flood):
                runs = [measure(server, attacker, password, args.seconds, flood) for _ in range(args.runs)]
                for p50, p99, outcome in runs:
                    print(f"guard {'on ' if guard else 'off'} flood {flood:3}: p50 {p50 * 1000:8.1f} ms  p99 {p99 * 1000:8.1f} ms  {outcome}", flush=True)
                results.append((guard, flood, [p50 for p50, _, _ in runs], [p99 for _, p99, _ in runs]))
    finally:
        for host in started:
            host.stop()
    print()
    for guard, flood, p50s, p99s in results:
        label = f"guard {'on' if guard else 'off'}, {f'{flood} parallel wrong passwords' if flood else 'no flood'}"
        print(f"{label:<42} p50 median {statistics.median(p50s) * 1000:8.1f} ms   p99 median {statistics.median(p99s) * 1000:8.1f} ms   runs {len(p50s)}")


if __name__ == "__main__":
    main()
