"""A load generator run ON a test host (standard library only): POSTs predictions until a stop file appears.

    python3 loadgen.py URL BODY_FILE STOP_FILE RESULT_FILE [CONNECTIONS]

Writes {"sent", "failed", "errors": {...}, "p50_ms", "p99_ms", "seconds"} to RESULT_FILE.
Every non-2xx answer and every connection error counts as failed.
"""

import http.client
import json
import os
import sys
import threading
import time
import urllib.parse


def worker(url, body, stop_file, latencies, errors, lock):
    parsed = urllib.parse.urlsplit(url)
    connection = None
    while not os.path.exists(stop_file):
        started = time.perf_counter()
        try:
            if connection is None:
                connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
            connection.request("POST", parsed.path, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            outcome = None if 200 <= response.status < 300 else f"HTTP {response.status}"
        except (OSError, http.client.HTTPException) as error:
            outcome = type(error).__name__
            connection = None
        with lock:
            if outcome:
                errors[outcome] = errors.get(outcome, 0) + 1
            else:
                latencies.append((time.perf_counter() - started) * 1000)


def main():
    url, body_file, stop_file, result_file = sys.argv[1:5]
    connections = int(sys.argv[5]) if len(sys.argv) > 5 else 4
    body = open(body_file, "rb").read()
    latencies, errors, lock = [], {}, threading.Lock()
    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(url, body, stop_file, latencies, errors, lock)) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies.sort()

    def percentile(p):
        return round(latencies[min(len(latencies) - 1, int(len(latencies) * p))], 1) if latencies else None

    result = {
        "sent": len(latencies) + sum(errors.values()),
        "failed": sum(errors.values()),
        "errors": errors,
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "seconds": round(time.perf_counter() - started, 1),
    }
    with open(result_file + ".tmp", "w") as out:
        json.dump(result, out)
    os.replace(result_file + ".tmp", result_file)


if __name__ == "__main__":
    main()
