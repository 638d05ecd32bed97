"""The tracking server's own request metrics for the monitor hosts: `mlflow server --expose-prometheus DIR` has each
worker record its requests in a file of DIR (prometheus_client's multiprocess mode); this serves their sum on
ADDRESS:PORT, apart from the server and its sign-in, which guards the server's own /metrics. Run by
mlflow-tracking-metrics.service with the tracking server's env, as its user.

Usage: python tracking_metrics.py DIR ADDRESS PORT
"""

import sys
import threading

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

directory, address, port = sys.argv[1:]
registry = CollectorRegistry()
MultiProcessCollector(registry, path=directory)
start_http_server(int(port), addr=address, registry=registry)
threading.Event().wait()  # the server answers from its own thread until systemd stops the unit
