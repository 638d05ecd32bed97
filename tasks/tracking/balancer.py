"""The lb hosts in front of the tracking replicas: one address for the service, TLS with its certificate (the front door's
handling), a replica that fails skipped, a replica drained before its server restarts, and the sign-in guard here, where
the clients' addresses are seen.

Runbook this replaces: an nginx upstream of app servers pasted by hand; commenting one out before restarting it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from tasks.converge import converge_host
from tasks.inventory import Host
from tasks.ops import facts as f
from tasks.ops.firewall import FirewallPolicy, Wall
from tasks.ops.nginx import config_step, install_config_script
from tasks.ops.remote import Remote
from tasks.ops.steps import Step, apply
from tasks.ops.system import ensure_packages
from tasks.ops.systemd import ensure_enabled
from tasks.report import HostReport, record, show_note
from tasks.tracking import frontdoor, signin_guard
from tasks.tracking.frontdoor import FrontDoor, apply_with_key, certificate_steps, learn_certificate
from tasks.tracking.service import TrackingService
from tasks.values import address_port

# curl: `fab status` asks each replica from here; logrotate: nginx's logs (Debian ships their rotation, not the tool)
SERVICE_PACKAGES = ["nginx", "openssl", "curl", "logrotate"]
REPLICA_WALL = Wall("tracking port", "the lb hosts", "inet mlflow_fab_tracking", "/etc/mlflow/firewall-tracking.nft",
                    "mlflow-fab-firewall-tracking.service", "setup-tracking")


@dataclass(frozen=True)
class Replica:
    name: str
    address: str
    down: bool = False


def replicas(service: TrackingService, drained: frozenset[str] = frozenset()) -> tuple[Replica, ...]:
    return tuple(Replica(host.name, host.address, host.name in drained) for host in service.replicas)


def replica_host(host: Host, service: TrackingService) -> Host:
    """A replica as the balancer fronts it: it answers to the service's names, and the sign-in guard is the balancer's
    (behind it every request comes from the balancer's address)."""
    names = [f"{name}:{host.tracking.port}" for lb in service.balancers for name in (lb.name, lb.address)]
    allowed = list(host.tracking.allowed_hosts) + [name for name in names if name not in host.tracking.allowed_hosts]
    return dataclasses.replace(host, tracking=dataclasses.replace(host.tracking, signin_guard=False, allowed_hosts=allowed))


def replica_firewall(service: TrackingService) -> FirewallPolicy:
    """The replicas answer their port only to the balancers, when balancers front them and [lb] firewall is on."""
    if not service.fronted:
        return FirewallPolicy(REPLICA_WALL, off_because="no lb hosts in front of the replicas")
    if not service.firewall:
        return FirewallPolicy(REPLICA_WALL, off_because="[lb] firewall = false")
    return FirewallPolicy(REPLICA_WALL, tuple(lb.address for lb in service.balancers))


def door(lb: Host, service: TrackingService) -> FrontDoor:
    """The service's front door on a balancer: the [tracking] certificate settings, the balancer's own names."""
    return FrontDoor(dataclasses.replace(lb, tracking=service.settings), lb.address)


def drained_in(config_text: str, service: TrackingService) -> frozenset[str]:
    """The replicas a balancer's config (as config() writes it) has down."""
    return frozenset(host.name for host in service.replicas if host.address in upstream_addresses(config_text, down=True))


def config(lb: Host, service: TrackingService, drained: frozenset[str] = frozenset()) -> str:
    return door(lb, service).nginx_config(replicas(service, drained), service.settings.port)


INSTALLED = f.installed_packages(SERVICE_PACKAGES + signin_guard.SIGNIN_GUARD_PACKAGES)
NGINX_STATE = f.service_state("nginx")


def facts() -> list[f.Fact]:
    return [f.os_release(), INSTALLED, frontdoor.TLS_STATE, frontdoor.NGINX_FILE, NGINX_STATE, *signin_guard.facts()]


def plan(lb: Host, service: TrackingService, facts: f.Facts, drained: frozenset[str]) -> list[Step]:
    """Packages, the service's certificate (tls), nginx in front of the replicas, the sign-in guard."""
    s = service.settings
    front = door(lb, service)
    steps = [ensure_packages(SERVICE_PACKAGES + signin_guard.packages(s), facts[INSTALLED])]
    certificate = certificate_steps(front, facts[frontdoor.TLS_STATE]) if s.tls else []
    steps += certificate
    steps.append(config_step(frontdoor.NGINX_CONFIG, config(lb, service, drained), facts[frontdoor.NGINX_FILE],
                             "certificate changed" if any(step.changed for step in certificate) else ""))
    return steps + [ensure_enabled("nginx", facts[NGINX_STATE])] + signin_guard.steps(s, facts)


def converge(remote: Remote, report: HostReport, service: TrackingService, drained: frozenset[str] = frozenset()) -> None:
    lb = remote.host
    converged = converge_host(remote, report, lambda: f.gather(remote, facts()), lambda gathered: plan(lb, service, gathered, drained),
                              apply_with_key(remote, report, service.settings.tls_key))
    if not converged.done:
        return
    s = service.settings
    url = f"{'https' if s.tls else 'http'}://{address_port(lb.address, s.port)}"
    note = f"tracking service: {url} -> {', '.join(replica.name for replica in replicas(service))}"
    if s.tls and not s.tls_certificate:
        path, fingerprint = learn_certificate(remote, lb.address, s.port, converged.steps, converged.facts[frontdoor.TLS_STATE])
        note += f"; self-signed certificate, sha256 fingerprint {fingerprint}, saved to {path} (MLFLOW_TRACKING_SERVER_CERT_PATH)"
    show_note(report, note)


def upstream_addresses(config_text: str, down: bool = False) -> set[str]:
    """The replicas' addresses a balancer's config names (an IPv6 one without its brackets); with DOWN, those drained."""
    found = re.findall(r"^\s*server (\S+):\d+ " + (".* down;" if down else ""), config_text, re.MULTILINE)
    return {address.removeprefix("[").removesuffix("]") for address in found}


def stop_routing_to_removed(remote: Remote, report: HostReport, service: TrackingService) -> None:
    """Before the db host stops admitting a replica that left hosts.toml, the balancer stops sending it requests; a replica
    it does not route to yet (new in hosts.toml, not set up) is written down until the balancer's own converge."""
    routed = upstream_addresses(f.gather(remote, [frontdoor.NGINX_FILE])[frontdoor.NGINX_FILE].content)
    removed = routed - {host.address for host in service.replicas}
    if not removed:
        return
    new = frozenset(host.name for host in service.replicas if host.address not in routed)
    step = set_drained(remote, service, new, f"stop sending requests to {', '.join(sorted(removed))} (no longer in hosts.toml)")
    record(report, [step])


def set_drained(remote: Remote, service: TrackingService, drained: frozenset[str], summary: str) -> Step:
    """Rewrite the service's config with these replicas down (or none) and reload; the reload waits for in-flight requests.
    A balancer that does not front the service yet (its first setup-tracking) has nothing to drain."""
    path = frontdoor.NGINX_CONFIG
    script = f"[ -f {path} ] || {{ echo 'not fronting the service yet: nothing to drain'; exit 0; }}\n" + \
        install_config_script(path, config(remote.host, service, drained))
    step = Step.change("balancer", summary, script)
    apply(remote, [step], lambda done: None)
    return step
