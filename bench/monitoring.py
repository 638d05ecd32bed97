"""What monitoring costs a host at rest: CPU and memory of the exporters setup-monitoring installs (the node exporter on
every host, mtail on lb and model hosts, the nginx exporter on lb hosts, the tracking server's metrics service and the
PostgreSQL exporter on a tracking host) and of Prometheus and the blackbox exporter on the monitor host, scraped every 15 s (the default);
then what the model host's answer log adds to each prediction: the model as deploy-model serves it, and the same model
served by MLflow's scoring app alone (as `mlflow models serve` runs it) on a spare port, sent the same predictions in
turns from the host itself.

    .venv/bin/python bench/monitoring.py [--windows 3] [--seconds 60] [--rounds 5] [--predictions 200]

Fresh testbed hosts: a monitor host, an lb host, a model host serving the wine model, and a tracking host (no TLS, no
sign-in). Each process is measured over windows of --seconds
(CPU from /proc/PID/stat, resident memory from /proc/PID/status); prints the median of the windows.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import tempfile
import time
from pathlib import Path

from common import timed_fab

from tasks.serving.deploy import MODEL_CONFIG_DIR, MODEL_HOME, MODEL_USER
from tasks.serving.history import MODELS_ROOT
from tests.integration.fabrun import host_entry, wait_for, write_inventory
from tests.integration.test_rolling import ROW
from tests.testbed import Testbed
from tests.wine import log_wine_model

MONITOR, LB, MODELS, TRACKING = "mlt55", "mlt56", "mlt57", "mlt59"
PROCESSES = {MODELS: ["prometheus-node-exporter", "mtail"],
             TRACKING: ["prometheus-node-exporter", "mlflow-tracking-metrics", "prometheus-postgres-exporter"], LB: ["prometheus-node-exporter", "mtail", "prometheus-nginx-exporter"],
             MONITOR: ["prometheus-node-exporter", "prometheus", "prometheus-blackbox-exporter"]}
# a unit's main process: /proc/PID/stat, its VmRSS line, and the clock ticks per second
SAMPLE = "pid=$(systemctl show -p MainPID --value {unit}); cat /proc/$pid/stat; grep '^VmRSS:' /proc/$pid/status; getconf CLK_TCK"
MODEL, PORT, PLAIN_PORT, PLAIN_UNIT = "model", 5001, 5999, "mlflow-bench-plain-scoring"
CURRENT = f"{MODELS_ROOT}/{MODEL}/current"
# MLflow's scoring app with no answer log, as `mlflow models serve --env-manager local` starts it, on PLAIN_PORT
PLAIN_SERVER = (f". {MODEL_CONFIG_DIR}/{MODEL}.env && systemd-run --quiet --unit {PLAIN_UNIT} --uid {MODEL_USER} --gid {MODEL_USER} "
                f"-p WorkingDirectory={CURRENT} --setenv=HOME={MODEL_HOME} --setenv=__pyfunc_model_path__={CURRENT}/model "
                f"{CURRENT}/env/bin/uvicorn --host 127.0.0.1 --port {PLAIN_PORT} --workers $WORKERS mlflow.pyfunc.scoring_server.app:app")
# the release's own Python on the host: ROUNDS turns of N predictions to each port, on one kept-alive connection each;
# prints each port's per-prediction latencies in ms
TIMING = """
import json, sys, time, requests
ports, rounds, n, row = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
sessions = {port: requests.Session() for port in ports}
seconds = {port: [] for port in ports}
for _ in range(rounds):
    for port in ports:
        for _ in range(n):
            started = time.perf_counter()
            answer = sessions[port].post("http://127.0.0.1:%d/invocations" % port, json=row, timeout=30)
            seconds[port].append(1000 * (time.perf_counter() - started))
            assert answer.status_code == 200, answer.text
print(json.dumps(seconds))
"""


def answer_log_cost(host, port: int, rounds: int, predictions: int) -> dict[int, list[float]]:
    """Per-prediction latencies (ms) of the deployed model on PORT and of the plain scoring app, in alternating turns."""
    host.run(PLAIN_SERVER)
    try:
        wait_for(lambda: host.run(f"curl -sf http://127.0.0.1:{PLAIN_PORT}/ping", check=False).returncode == 0, 120, "the plain scoring app")
        args = " ".join(shlex.quote(arg) for arg in (json.dumps([port, PLAIN_PORT]), str(rounds), str(predictions), json.dumps(ROW)))
        # as the model's user: the env was built from the model's requirements, whose code never runs as root
        timed = host.run(f"cd / && runuser -u {MODEL_USER} -- {CURRENT}/env/bin/python - {args}", input=TIMING).stdout
        return {int(key): value for key, value in json.loads(timed).items()}
    finally:
        host.run(f"systemctl stop {PLAIN_UNIT}", check=False)


def sample(host, unit: str) -> tuple[int, int, int]:
    """(utime + stime in clock ticks, resident kB, ticks per second)."""
    stat, rss, ticks = host.run(SAMPLE.format(unit=unit)).stdout.splitlines()
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return int(fields[11]) + int(fields[12]), int(rss.split()[1]), int(ticks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--predictions", type=int, default=200)
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
        latencies = answer_log_cost(hosts[MODELS], PORT, args.rounds, args.predictions)
    finally:
        for host in hosts.values():
            host.stop()
    print()
    roles_of = {MONITOR: "monitor host", LB: "lb host", MODELS: "model host", TRACKING: "tracking host"}
    for (name, unit), values in cpu.items():
        print(f"{roles_of[name]:<13} {unit:<30} CPU {statistics.median(values):5.2f} % of one core   "
              f"RSS {statistics.median(memory[(name, unit)]):6.1f} MB   (median of {len(values)} windows of {args.seconds:g} s)")
    print()
    for label, port in (("with the answer log (deployed)", PORT), ("MLflow's scoring app alone", PLAIN_PORT)):
        values = latencies[port]
        print(f"model host prediction, {label:<31} median {statistics.median(values):6.2f} ms   "
              f"p99 {statistics.quantiles(values, n=100)[98]:6.2f} ms   ({len(values)} predictions from the host itself)")
    difference = statistics.median(latencies[PORT]) - statistics.median(latencies[PLAIN_PORT])
    print(f"medians, with the answer log minus without: {difference:+.2f} ms (within the noise when it is negative)")


if __name__ == "__main__":
    main()
