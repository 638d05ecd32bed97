"""Model hosts answer the model ports only to the balancer: an nftables table of our own, loaded at boot.

Runbook this replaces: an iptables line typed on each model host, lost at the next reboot and
forgotten when a balancer was added; or, more often, model servers open to the whole network.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass

from tasks.inventory import Inventory
from tasks.ops import facts as f
from tasks.ops.files import ensure_file
from tasks.ops.steps import Step
from tasks.templates import render

TABLE = "inet mlflow_fab"
RULES = "/etc/mlflow/firewall.nft"
UNIT = "mlflow-fab-firewall.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT}"
FIREWALL_PACKAGES = ["nftables"]


@dataclass(frozen=True)
class FirewallPolicy:
    """The addresses (or names) of the lb hosts allowed on the model ports; none: no firewall of ours."""

    sources: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.sources)

    @property
    def packages(self) -> list[str]:
        return FIREWALL_PACKAGES if self.enabled else []


def policy(inventory: Inventory) -> FirewallPolicy:
    """On when the inventory has lb hosts and [lb] firewall is true (the default)."""
    if not inventory.lb.firewall:
        return FirewallPolicy()
    return FirewallPolicy(tuple(host.address for host in inventory.with_role("lb")))


def is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


RULES_FILE = f.file_content(RULES)
UNIT_FILE = f.file_content(UNIT_PATH)
TABLE_LOADED = f.Fact("firewall_table", f"nft list table {TABLE} >/dev/null && echo loaded")


def resolved(name: str) -> f.Fact[list[str]]:
    """The addresses a host name resolves to on this host."""
    return f.Fact(f"resolve:{name}", f"getent ahosts {shlex.quote(name)} | cut -d' ' -f1 | sort -u", f.words)


def facts(policy: FirewallPolicy) -> list[f.Fact]:
    """Our files, whether our table is loaded, and what each lb host name resolves to on this host."""
    names = [source for source in policy.sources if not is_address(source)]
    return [RULES_FILE, UNIT_FILE, TABLE_LOADED, *[resolved(name) for name in names]]


def render_rules(ports: list[int], addresses: list[str]) -> str:
    parsed = sorted({ipaddress.ip_address(address) for address in addresses}, key=lambda a: (a.version, a))
    return render("mlflow-fab-firewall.nft.j2", table=TABLE, ports=sorted(set(ports)),
                  ipv4=[str(a) for a in parsed if a.version == 4], ipv6=[str(a) for a in parsed if a.version == 6])


def render_unit() -> str:
    return render("mlflow-fab-firewall.service.j2", table=TABLE, rules=RULES)


def steps(policy: FirewallPolicy, ports: list[int], facts: f.Facts) -> list[Step]:
    """On: the rules file and its unit, loaded now and at every boot. Off: our table, file and unit removed."""
    loaded = facts[TABLE_LOADED].strip() == "loaded"
    if not policy.enabled:
        present = loaded or facts[RULES_FILE].exists or facts[UNIT_FILE].exists
        if not present:
            return [Step.ok("firewall", "off (no lb hosts, or [lb] firewall = false): model ports open to every address")]
        return [Step.change("firewall", f"off: remove table {TABLE}, {RULES} and {UNIT}",
                            f"systemctl disable --now --quiet {UNIT} 2>/dev/null || true\n"
                            f"nft delete table {TABLE} 2>/dev/null || true\n"
                            f"rm -f {RULES} {UNIT_PATH}\nsystemctl daemon-reload")]
    addresses = []
    for source in policy.sources:
        found = [source] if is_address(source) else facts[resolved(source)]
        if not found:
            return [Step.failure("firewall", f"lb host {source!r} does not resolve on this host: give its IP address as its address in hosts.toml")]
        addresses += found
    rules = ensure_file(RULES, render_rules(ports, addresses), facts[RULES_FILE])
    unit = ensure_file(UNIT_PATH, render_unit(), facts[UNIT_FILE])
    summary = f"model ports {', '.join(map(str, sorted(set(ports))))} only from {', '.join(addresses)} and loopback (table {TABLE})"
    if not (rules.changed or unit.changed or not loaded):
        return [rules, unit, Step.ok("firewall", summary)]
    load = f"nft -c -f {RULES}\nsystemctl daemon-reload\nsystemctl enable --quiet {UNIT}\nsystemctl reload-or-restart {UNIT}"
    return [rules, unit, Step.change("firewall", summary, load)]
