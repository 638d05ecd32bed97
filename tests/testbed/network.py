"""The bridge, NAT and firewall shared by all hosts, and each host's network namespace and veth pair."""

import shlex
import socket
import threading
from pathlib import Path

from .addresses import BRIDGE, GATEWAY, PREFIX_LENGTH, SUBNET, mac_of
from .proc import TestbedError, run

TAG = "mlflow-fab-testbed"
FORWARD_CHAIN = "MLFAB-FORWARD"
INPUT_CHAIN = "MLFAB-INPUT"
REGISTRY_HOSTS = ["deb.debian.org", "pypi.org", "files.pythonhosted.org"]
OPTIONAL_REGISTRY_HOSTS = ["repo.anaconda.com", "conda.anaconda.org", "github.com"]
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")

# `ip netns add` mounts /run/netns on first use; two threads doing that at once stack two mounts.
_namespace_lock = threading.Lock()


# ---- shared: bridge, forwarding, iptables ------------------------------------------------------

def prepare_network(state_dir: Path) -> None:
    _ensure_bridge()
    saved = state_dir / "ip_forward.before"
    if not saved.exists():
        saved.write_text(IP_FORWARD.read_text())
    IP_FORWARD.write_text("1\n")
    _install_rules()


def teardown_network(state_dir: Path) -> None:
    _remove_rules()
    if _link_exists(BRIDGE):
        run(["ip", "link", "del", BRIDGE])
    saved = state_dir / "ip_forward.before"
    if saved.exists():
        IP_FORWARD.write_text(saved.read_text())
        saved.unlink()


def network_prepared() -> bool:
    return _link_exists(BRIDGE) and bool(_tagged_rules("filter"))


def _ensure_bridge() -> None:
    if not _link_exists(BRIDGE):
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    # A bridge otherwise takes the lowest port MAC, which changes as hosts come and go.
    run(["ip", "link", "set", BRIDGE, "address", mac_of(GATEWAY)])
    _disable_ipv6(BRIDGE)
    run(["ip", "addr", "replace", f"{GATEWAY}/{PREFIX_LENGTH}", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])


def _disable_ipv6(interface: str) -> None:
    # Hosts must not reach this machine by IPv6 link-local, which the IPv4 rules don't cover.
    Path(f"/proc/sys/net/ipv6/conf/{interface}/disable_ipv6").write_text("1\n")


def _link_exists(name: str) -> bool:
    return run(["ip", "link", "show", name], check=False).returncode == 0


def default_route_interface() -> str:
    fields = run(["ip", "-4", "route", "show", "default"]).stdout.split()
    if "dev" not in fields:
        raise TestbedError("this machine has no IPv4 default route: hosts could not reach the package registries")
    return fields[fields.index("dev") + 1]


def resolvers() -> list[str]:
    found = []
    for line in Path("/etc/resolv.conf").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver" and "." in fields[1]:
            found.append(fields[1])
    if not found:
        raise TestbedError("no IPv4 nameserver in /etc/resolv.conf: hosts could not resolve the registries")
    return found


def registry_addresses() -> list[str]:
    found = set()
    for host in REGISTRY_HOSTS + OPTIONAL_REGISTRY_HOSTS:
        result = run(["getent", "ahostsv4", host], check=False)
        found.update(line.split()[0] for line in result.stdout.splitlines() if line.strip())
    if not found:
        raise TestbedError(f"none of {', '.join(REGISTRY_HOSTS)} resolves: hosts could not install packages")
    return sorted(found, key=socket.inet_aton)


def _rule(*spec: str) -> str:
    return " ".join(spec + ("-m", "comment", "--comment", TAG))


def _filter_rules() -> list[str]:
    forward = [
        _rule("-A", FORWARD_CHAIN, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"),
        _rule("-A", FORWARD_CHAIN, "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"),
    ]
    for resolver in resolvers():
        for protocol in ("udp", "tcp"):
            forward.append(_rule("-A", FORWARD_CHAIN, "-i", BRIDGE, "-s", SUBNET, "-d", resolver,
                                 "-p", protocol, "--dport", "53", "-j", "ACCEPT"))
    for registry in registry_addresses():
        forward.append(_rule("-A", FORWARD_CHAIN, "-i", BRIDGE, "-s", SUBNET, "-d", registry,
                             "-p", "tcp", "-m", "multiport", "--dports", "80,443", "-j", "ACCEPT"))
    forward += [
        _rule("-A", FORWARD_CHAIN, "-i", BRIDGE, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"),
        _rule("-A", FORWARD_CHAIN, "-i", BRIDGE, "-j", "REJECT", "--reject-with", "icmp-admin-prohibited"),
        _rule("-A", FORWARD_CHAIN, "-o", BRIDGE, "-j", "DROP"),
    ]
    # This machine itself answers hosts only on connections it opened (the tests' SSH sessions).
    to_this_machine = [
        _rule("-A", INPUT_CHAIN, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"),
        _rule("-A", INPUT_CHAIN, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"),
        _rule("-A", INPUT_CHAIN, "-j", "REJECT", "--reject-with", "icmp-admin-prohibited"),
    ]
    jumps = [
        _rule("-I", "FORWARD", "1", "-i", BRIDGE, "-j", FORWARD_CHAIN),
        _rule("-I", "FORWARD", "1", "-o", BRIDGE, "-j", FORWARD_CHAIN),
        _rule("-I", "INPUT", "1", "-i", BRIDGE, "-j", INPUT_CHAIN),
    ]
    return jumps + forward + to_this_machine


def _tagged_rules(table: str) -> list[str]:
    """Our rules in the built-in chains of `table`, as `iptables -S` prints them."""
    listing = run(["iptables", "-t", table, "-S"]).stdout.splitlines()
    return [line for line in listing if line.startswith("-A ") and f"--comment {TAG}" in line
            and line.split()[1] not in (FORWARD_CHAIN, INPUT_CHAIN)]


def _install_rules() -> None:
    """Replace all our rules in one iptables-restore transaction: idempotent, and never a moment unfiltered."""
    deletions = {table: ["-D" + line[2:] for line in _tagged_rules(table)] for table in ("filter", "nat")}
    masquerade = _rule("-A", "POSTROUTING", "-s", SUBNET, "!", "-d", SUBNET,
                       "-o", default_route_interface(), "-j", "MASQUERADE")
    script = "\n".join([
        "*filter",
        f":{FORWARD_CHAIN} - [0:0]",  # declaring our chains under --noflush empties them
        f":{INPUT_CHAIN} - [0:0]",
        *deletions["filter"],
        *_filter_rules(),
        "COMMIT",
        "*nat",
        *deletions["nat"],
        masquerade,
        "COMMIT",
        "",
    ])
    run(["iptables-restore", "--noflush"], input=script)


def _remove_rules() -> None:
    for table in ("filter", "nat"):
        for line in _tagged_rules(table):
            run(["iptables", "-t", table, "-D", *shlex.split(line)[1:]])
    for chain in (FORWARD_CHAIN, INPUT_CHAIN):
        if run(["iptables", "-S", chain], check=False).returncode == 0:
            run(["iptables", "-F", chain])
            run(["iptables", "-X", chain])


# ---- per host: namespace and veth ---------------------------------------------------------------

def host_link(name: str) -> str:
    return f"mlfv-{name}"


def namespace_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def create_host_network(name: str, address: str) -> None:
    delete_host_network(name, address)
    inside = ["ip", "-n", name]
    with _namespace_lock:
        run(["ip", "netns", "add", name])
    run(["ip", "link", "add", host_link(name), "type", "veth", "peer", "name", "eth0", "netns", name])
    run([*inside, "link", "set", "eth0", "address", mac_of(address)])
    run([*inside, "addr", "add", f"{address}/{PREFIX_LENGTH}", "dev", "eth0"])
    run([*inside, "link", "set", "lo", "up"])
    run([*inside, "link", "set", "eth0", "up"])
    run([*inside, "route", "add", "default", "via", GATEWAY])
    _disable_ipv6(host_link(name))
    run(["ip", "link", "set", host_link(name), "master", BRIDGE, "up"])


def delete_host_network(name: str, address: str) -> None:
    # Delete the veth explicitly: the kernel frees a deleted namespace's devices asynchronously.
    if _link_exists(host_link(name)):
        run(["ip", "link", "del", host_link(name)])
    if namespace_exists(name):
        run(["ip", "netns", "del", name])
    if _link_exists(BRIDGE):
        run(["ip", "neigh", "flush", "to", address, "dev", BRIDGE])
