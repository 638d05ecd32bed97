"""A wrong-password flood run ON the attacker host (standard library only), for a bounded time.

    python3 wrong_password_flood.py HOST PORT SECONDS CONNECTIONS

Each connection sends `admin:wrong` to a tracking API call over TLS until SECONDS have passed, and prints
{"401": n, "refused": n, "other": {...}} as JSON: "refused" counts requests the front door turned away.
"""

import http.client
import json
import ssl
import sys
import threading
import time
from base64 import b64encode

API = "/api/2.0/mlflow/experiments/search?max_results=1"
HEADERS = {"Authorization": "Basic " + b64encode(b"admin:wrong-password").decode()}


def attack(host, port, deadline, counts, lock):
    context = ssl._create_unverified_context()
    while time.monotonic() < deadline:
        connection = http.client.HTTPSConnection(host, port, timeout=max(1.0, deadline - time.monotonic()), context=context)
        try:
            connection.request("GET", API, headers=HEADERS)
            outcome = str(connection.getresponse().status)
        except (ConnectionRefusedError, ConnectionResetError):
            outcome = "refused"
        except (OSError, http.client.HTTPException) as error:
            outcome = type(error).__name__
        finally:
            connection.close()
        with lock:
            counts[outcome] = counts.get(outcome, 0) + 1
        if outcome == "refused":
            time.sleep(0.05)  # a banned client retrying in a tight loop would only measure this host's CPU


def main():
    host, port, seconds, connections = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    deadline = time.monotonic() + seconds
    counts, lock = {}, threading.Lock()
    threads = [threading.Thread(target=attack, args=(host, port, deadline, counts, lock)) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
