"""Model hosts answer the model ports only to the balancer."""

from __future__ import annotations

from tasks.inventory import Inventory
from tasks.ops.firewall import FirewallPolicy, Wall

MODEL_WALL = Wall("model ports", "the lb hosts", "inet mlflow_fab", "/etc/mlflow/firewall.nft", "mlflow-fab-firewall.service",
                  "deploy-model")


def policy(inventory: Inventory) -> FirewallPolicy:
    """On when the inventory has lb hosts and [lb] firewall is true (the default)."""
    if not inventory.lb.firewall:
        return FirewallPolicy(MODEL_WALL, off_because="[lb] firewall = false")
    sources = tuple(host.address for host in inventory.with_role("lb"))
    return FirewallPolicy(MODEL_WALL, sources, off_because="no lb hosts")
