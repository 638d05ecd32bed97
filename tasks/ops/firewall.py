"""Ports that answer only some hosts: an nftables table of our own per purpose, loaded now and at every boot.

Runbook this replaces: an iptables line typed on each server, lost at the next reboot and forgotten when a balancer was
added; or, more often, backends open to the whole network.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass

from tasks.ops import facts as f
from tasks.ops.files import ensure_file
from tasks.ops.steps import Step
from tasks.templates import render

FIREWALL_PACKAGES = ["nftables"]


@dataclass(frozen=True)
class Wall:
    """One table of ours, the file holding its rules and the unit loading them at boot; one per purpose, so a host that
    is both a model host and a tracking replica keeps both."""

    ports_name: str  # what it guards, for the messages: "model ports"
    sources_name: str  # who gets through: "the lb hosts"
    table: str
    rules: str
    unit: str
    task: str  # the task that manages it

    @property
    def unit_path(self) -> str:
        return f"/etc/systemd/system/{self.unit}"

    @property
    def rules_file(self) -> f.Fact:
        return f.file_content(self.rules)

    @property
    def unit_file(self) -> f.Fact:
        return f.file_content(self.unit_path)

    @property
    def table_loaded(self) -> f.Fact[str]:
        return f.Fact(f"firewall_table:{self.table}", f"nft list table {self.table} >/dev/null && echo loaded")


@dataclass(frozen=True)
class FirewallPolicy:
    """The addresses (or names) allowed on the wall's ports; none: no table of ours, the ports open to every address."""

    wall: Wall
    sources: tuple[str, ...] = ()
    off_because: str = ""  # why it is off, for the message

    @property
    def enabled(self) -> bool:
        return bool(self.sources)

    @property
    def packages(self) -> list[str]:
        return FIREWALL_PACKAGES if self.enabled else []


def is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def resolved(name: str) -> f.Fact[list[str]]:
    """The addresses a host name resolves to on this host."""
    return f.Fact(f"resolve:{name}", f"getent ahosts {shlex.quote(name)} | cut -d' ' -f1 | sort -u", f.words)


def facts(policy: FirewallPolicy) -> list[f.Fact]:
    """Our files, whether our table is loaded, and what each source host name resolves to on this host."""
    names = [source for source in policy.sources if not is_address(source)]
    wall = policy.wall
    return [wall.rules_file, wall.unit_file, wall.table_loaded, *[resolved(name) for name in names]]


def render_rules(wall: Wall, ports: list[int], addresses: list[str]) -> str:
    parsed = sorted({ipaddress.ip_address(address) for address in addresses}, key=lambda a: (a.version, a))
    return render("mlflow-fab-firewall.nft.j2", wall=wall, ports=sorted(set(ports)),
                  ipv4=[str(a) for a in parsed if a.version == 4], ipv6=[str(a) for a in parsed if a.version == 6])


def render_unit(wall: Wall) -> str:
    return render("mlflow-fab-firewall.service.j2", wall=wall)


def steps(policy: FirewallPolicy, ports: list[int], facts: f.Facts) -> list[Step]:
    """On: the rules file and its unit, loaded now and at every boot. Off: our table, file and unit removed."""
    wall = policy.wall
    loaded = facts[wall.table_loaded].strip() == "loaded"
    if not policy.enabled:
        present = loaded or facts[wall.rules_file].exists or facts[wall.unit_file].exists
        if not present:
            return [Step.ok("firewall", f"off ({policy.off_because}): {wall.ports_name} open to every address")]
        return [Step.change("firewall", f"off: remove table {wall.table}, {wall.rules} and {wall.unit}",
                            f"systemctl disable --now --quiet {wall.unit} 2>/dev/null || true\n"
                            f"nft delete table {wall.table} 2>/dev/null || true\n"
                            f"rm -f {wall.rules} {wall.unit_path}\nsystemctl daemon-reload")]
    addresses = []
    for source in policy.sources:
        found = [source] if is_address(source) else facts[resolved(source)]
        if not found:
            return [Step.failure("firewall", f"{source!r} ({wall.sources_name}) does not resolve on this host: "
                                             "give its IP address as its address in hosts.toml")]
        addresses += found
    rules = ensure_file(wall.rules, render_rules(wall, ports, addresses), facts[wall.rules_file])
    unit = ensure_file(wall.unit_path, render_unit(wall), facts[wall.unit_file])
    summary = f"{wall.ports_name} {', '.join(map(str, sorted(set(ports))))} only from {', '.join(addresses)} and loopback (table {wall.table})"
    if not (rules.changed or unit.changed or not loaded):
        return [rules, unit, Step.ok("firewall", summary)]
    load = f"nft -c -f {wall.rules}\nsystemctl daemon-reload\nsystemctl enable --quiet {wall.unit}\nsystemctl reload-or-restart {wall.unit}"
    return [rules, unit, Step.change("firewall", summary, load)]
