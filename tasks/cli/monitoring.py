"""Tasks of monitoring: `fab setup-monitoring` and `fab monitor`."""

from __future__ import annotations

import signal
import socket
import time

from fabric import task
from invoke.exceptions import Exit

from tasks.cli import arguments
from tasks.fleet import end_with_recap


@task(help={"check": "show what would change, with diffs, and change nothing"})
def setup_monitoring(c, check=False):
    """Node exporter on every host (answering the monitor hosts only), Prometheus on the "monitor" hosts with our alert rules."""
    from tasks.monitoring.setup import setup_monitoring as setup

    inventory = arguments.inventory(c)
    if not inventory.with_role("monitor"):
        raise Exit('error: no monitor host: give one host roles = ["monitor"] in the inventory', code=2)
    end_with_recap(setup(c.config, inventory, check))


def free_local_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening(port: int, timeout: float = 10) -> bool:
    """Whether 127.0.0.1:PORT takes connections within TIMEOUT seconds (Fabric's tunnel binds it in a thread of its own,
    after forward_local has returned)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


@task(help={"local-port": "the port on this machine (default: a free one)"})
def monitor(c, local_port=0):
    """Open Prometheus of the first monitor host (or -H) here, through an SSH tunnel, until Ctrl-C; nothing is exposed on the network."""
    from tasks.ops.remote import HostError, Remote

    inventory = arguments.inventory(c)
    hosts = arguments.hosts_for(c, role="monitor")
    if not hosts:
        raise Exit('error: no monitor host: give one host roles = ["monitor"] and run fab setup-monitoring', code=2)
    port = int(local_port) or free_local_port()
    remote = Remote(hosts[0], c.config.clone())
    try:
        remote.connect()
        with remote.connection.forward_local(port, remote_port=inventory.monitoring.prometheus_port, remote_host="127.0.0.1",
                                             local_host="127.0.0.1"):
            if not listening(port):
                raise Exit(f"error: the tunnel's local port 127.0.0.1:{port} did not open within 10 s (in use? try --local-port)", code=1)
            print(f"Prometheus of {hosts[0].name}: http://127.0.0.1:{port}/  (alerts: http://127.0.0.1:{port}/alerts; Ctrl-C closes the tunnel)",
                  flush=True)
            try:
                signal.pause()
            except KeyboardInterrupt:
                print("tunnel closed")
    except HostError as error:
        raise Exit(f"error: {hosts[0].name}: {error}", code=1) from None
    finally:
        remote.connection.close()
