"""How `fab` hands hosts to our tasks: -H becomes a list the task runs concurrently, not one call per host."""

from __future__ import annotations

import dataclasses
import os

import fabric
from invoke.exceptions import Exit

from tasks.inventory import Host, InventoryError, load_inventory, select_hosts


class HostsExecutor(fabric.Executor):
    """Fabric's executor, except that -H is stored in the config (target_hosts) for the task to fan out itself.

    That lets a task connect to every host in parallel, report per host, and print one recap.
    """

    def expand_calls(self, calls, apply_hosts=True):
        if self.core.remainder:  # `fab -H h -- cmd` keeps Fabric's own behaviour
            return super().expand_calls(calls, apply_hosts)
        host_string = self.core[0].args.hosts.value
        self.config.target_hosts = host_string.split(",") if host_string else []
        return super().expand_calls(calls, apply_hosts=False)


def inventory(c):
    try:
        return load_inventory(c.config.inventory)
    except InventoryError as error:
        raise Exit(f"error: {error}", code=2) from None


def hosts_for(c, role: str | None, targets: list[str] | None = None) -> list[Host]:
    """TARGETS (default: -H) if given, else the inventory hosts with this role; bad input exits before any connection."""
    ssh_config = getattr(c.config, "base_ssh_config", None)
    aliases = ssh_config.get_hostnames() if ssh_config is not None else ()
    try:
        return select_hosts(inventory(c), targets or c.config.get("target_hosts") or [], role, aliases)
    except InventoryError as error:
        raise Exit(f"error: {error}", code=2) from None


def tracking_uri(c) -> str:
    """MLFLOW_TRACKING_URI when set, else the inventory's tracking service: its first balancer when balancers front
    replicas, else its first tracking host."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    from tasks.tracking.server import TrackingTarget
    from tasks.tracking.service import TrackingService

    service = TrackingService.of(inventory(c))
    hosts = list(service.balancers if service.fronted else service.replicas)
    if not hosts:
        raise Exit("error: no tracking server: set MLFLOW_TRACKING_URI or give a host roles = [\"tracking\"] in the inventory", code=2)
    target = TrackingTarget(dataclasses.replace(hosts[0], tracking=service.settings) if service.fronted else hosts[0], hosts[0].address)
    if target.settings.tls and not target.settings.tls_certificate:
        from tasks.tracking.frontdoor import laptop_certificate_path

        learned = laptop_certificate_path(target.address, target.settings.port)
        if learned.exists():
            os.environ.setdefault("MLFLOW_TRACKING_SERVER_CERT_PATH", str(learned))
    return target.url
