"""`make demo`: a sandbox host, an MLflow tracking server on it, a run trained there, a deployed model, a prediction.

    python -m tests.testbed.demo        (make demo-down removes the sandbox)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from tasks.tracking.frontdoor import laptop_certificate_path
from tests.testbed import Testbed
from tasks.training.run import run_id_in

REPO = Path(__file__).resolve().parents[2]
SANDBOX = REPO / ".sandbox"
HOST = "demo1"
SAMPLE = {
    "dataframe_split": {
        "columns": ["fixed acidity", "volatile acidity", "citric acid", "residual sugar", "chlorides", "free sulfur dioxide",
                    "total sulfur dioxide", "density", "pH", "sulphates", "alcohol"],
        "data": [[7.0, 0.27, 0.36, 20.7, 0.045, 45, 170, 1.001, 3.0, 0.45, 8.8]],
    }
}


def fab(inventory: Path, *args: str) -> str:
    """Run fab as a user would, its output shown as it comes; return that output."""
    print(f"\n$ FABRIC_INVENTORY={inventory.relative_to(REPO)} fab {' '.join(args)}", flush=True)
    env = {**os.environ, "FABRIC_INVENTORY": str(inventory)}
    process = subprocess.Popen([str(Path(sys.executable).with_name("fab")), *args], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    lines = []
    for line in process.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    if process.wait() != 0:
        raise SystemExit(f"fab {args[0]} failed (exit {process.returncode})")
    return "".join(lines)


def main() -> None:
    testbed = Testbed()
    testbed.prepare()
    host = testbed.host(HOST)
    SANDBOX.mkdir(exist_ok=True)
    known_hosts = SANDBOX / "known_hosts"
    credentials = SANDBOX / "credentials"
    if not host.is_running():
        host = testbed.start(HOST)
        known_hosts.unlink(missing_ok=True)  # a fresh sandbox has new host keys
        credentials.unlink(missing_ok=True)  # and no users yet
    inventory = SANDBOX / "hosts.toml"
    inventory.write_text(
        "# The demo sandbox (make demo); make demo-down removes the host.\n"
        f'[defaults]\nknown_hosts = "{known_hosts}"\naccept_new_host_keys = true\n\n'
        f'[hosts.{HOST}]\naddress = "{host.address}"\nuser = "{host.user}"\nidentity = "{host.identity}"\n'
        'roles = ["tracking", "models", "train"]\n\n[tracking]\nworkers = 1\n'
    )
    fab(inventory, "setup-tracking")
    if not credentials.exists():
        fab(inventory, "tracking-user", "--add", "demo", "--credentials", str(credentials))
    # what a user exports after setup-tracking and tracking-user; fab deploy-model reads the same
    values = dict(line.split(" = ", 1) for line in credentials.read_text().splitlines() if " = " in line)
    os.environ["MLFLOW_TRACKING_USERNAME"] = values["mlflow_tracking_username"]
    os.environ["MLFLOW_TRACKING_PASSWORD"] = values["mlflow_tracking_password"]
    os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"] = str(laptop_certificate_path(host.address, 5000))
    tracking_uri = f"https://{host.address}:5000"
    trained = fab(inventory, "run-project", "examples/wine", "-P", "alpha=0.5", "-P", "l1_ratio=0.5",
                  "--experiment", "wine-quality", "--credentials", str(credentials))
    run_id = run_id_in(trained)
    fab(inventory, "deploy-model", "--run-id", run_id, "--name", "wine")
    request = urllib.request.Request(
        f"http://{host.address}:5001/invocations", data=json.dumps(SAMPLE).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        prediction = json.loads(response.read())["predictions"][0]
    print(f"\nMLflow tracking server: {tracking_uri} (user demo: {credentials}; certificate: {os.environ['MLFLOW_TRACKING_SERVER_CERT_PATH']})")
    print(f"model 'wine' (run {run_id}) serving at http://{host.address}:5001/invocations")
    print(f"predicted quality of one white wine: {prediction:.2f}")
    print(f"try: export FABRIC_INVENTORY={inventory}; fab status; fab releases --name wine")
    print("remove the sandbox with: make demo-down")


if __name__ == "__main__":
    main()
