"""nginx in front of the model hosts: one upstream and one port per model, drained host by host during deploys.

Runbook this replaces: apt-get install nginx; write an upstream per model; `nginx -t`; reload;
comment a server out before touching its host, reload again, and hope nothing was in flight.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from tasks.frontdoor import FrontDoor, TlsFiles, certificate_steps, key_upload_path, learn_certificate, tls_fact
from tasks.inventory import Inventory, LbSettings
from tasks.ops import facts as f
from tasks.ops.files import ensure_secret_file
from tasks.ops.nginx import config_step, install_config_script
from tasks.ops.platform import check_platform
from tasks.ops.remote import Remote
from tasks.ops.steps import Step, apply
from tasks.ops.system import ensure_packages
from tasks.ops.systemd import ensure_enabled
from tasks.report import HostReport, show_note, show_step
from tasks.templates import render

CONFIG = "/etc/nginx/conf.d/mlflow-models.conf"
CERTIFICATE = "/etc/ssl/certs/mlflow-models.pem"
KEY = "/etc/ssl/private/mlflow-models.key"
# `name:$6$...` lines (SHA-512 crypt) written by `fab model-user`; nginx's workers (www-data) read it.
USERS = "/etc/nginx/mlflow-models.users"
PACKAGES = ["nginx", "openssl"]


@dataclass(frozen=True)
class BalancerDoor(FrontDoor):
    """The tracking front door's certificate handling, with the balancer's own files and [lb] settings."""

    lb: LbSettings = LbSettings()

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(CERTIFICATE, KEY, self.lb.tls_certificate, self.lb.tls_key)


@dataclass(frozen=True)
class Server:
    host: str
    address: str
    port: int
    down: bool = False


@dataclass(frozen=True)
class Upstream:
    name: str
    port: int
    servers: tuple[Server, ...]


def model_names(inventory: Inventory) -> list[str]:
    """The models the balancer fronts: every [models.NAME] of the inventory, else the default name."""
    return sorted(name for name in inventory.models if name) or ["model"]


def upstreams(inventory: Inventory, drained: frozenset[tuple[str, str]] = frozenset()) -> list[Upstream]:
    """drained holds (model name, host name) pairs to mark down."""
    hosts = inventory.with_role("models")
    return [
        Upstream(
            name,
            inventory.models.get(name, inventory.models[""]).port,
            tuple(Server(h.name, h.address, h.model(name).port, (name, h.name) in drained) for h in hosts),
        )
        for name in model_names(inventory)
    ]


def render_config(models: list[Upstream], lb: LbSettings) -> str:
    return render("nginx-mlflow-models.conf.j2", models=models, tls=lb.tls, auth=lb.auth, certificate=CERTIFICATE, key=KEY, users=USERS)


def lb_facts() -> list[f.Fact]:
    return [f.os_release(), f.installed_packages(PACKAGES), f.file_content(CONFIG), f.service_state("nginx"),
            tls_fact(TlsFiles(CERTIFICATE, KEY)), f.path_stat(USERS)]


def plan_lb(door: BalancerDoor, models: list[Upstream], facts: dict[str, str]) -> list[Step]:
    """Packages, the certificate (tls), the users file (auth), then the config, validated and reloaded."""
    lb = door.lb
    steps = [ensure_packages(PACKAGES, f.parse_installed(facts.get("packages", "")))]
    tls_steps = certificate_steps(door, facts.get("tls", "")) if lb.tls else []
    steps += tls_steps
    if lb.auth:
        steps.append(ensure_secret_file(USERS, "www-data", facts.get(f"stat:{USERS}", ""), f"install -o root -g www-data -m 640 /dev/null {USERS}"))
    new_certificate = any(step.changed for step in tls_steps)
    steps.append(config_step(CONFIG, render_config(models, lb), f.parse_file(facts.get(f"file:{CONFIG}", "")),
                             "certificate changed" if new_certificate else ""))
    steps.append(ensure_enabled("nginx", f.parse_properties(facts.get("service:nginx", ""))))
    return steps


def converge_lb(remote: Remote, report: HostReport, inventory: Inventory) -> None:
    lb = inventory.lb
    door = BalancerDoor(remote.host, remote.connection.host, lb=lb)
    facts = f.gather(remote, lb_facts())
    steps = [check_platform(facts.get("os", ""))]
    models = upstreams(inventory)
    if not steps[0].failed:
        steps += plan_lb(door, models, facts)
    report.steps += steps
    if report.check or steps[0].failed:
        for step in steps:
            show_step(report, step)
        return
    key = any(step.name == "tls key" and step.changed for step in steps)
    with remote.private_upload(Path(lb.tls_key), key_upload_path()) if key else nullcontext():
        applied = apply(remote, steps, lambda step: show_step(report, step))
    if not applied:
        return
    address = remote.connection.host
    for model in models:
        note = f"model {model.name}: {'https' if lb.tls else 'http'}://{address}:{model.port}/invocations -> {len(model.servers)} hosts"
        if lb.tls and not lb.tls_certificate:
            path, fingerprint = learn_certificate(remote, address, model.port, steps, facts.get("tls", ""), certificate=CERTIFICATE)
            note += f"; self-signed certificate, sha256 fingerprint {fingerprint}, saved to {path}"
        show_note(report, note + ("; sign-in required: `fab model-user --add NAME`" if lb.auth else ""))


def drain(remote: Remote, inventory: Inventory, drained: frozenset[tuple[str, str]], summary: str) -> Step:
    """Rewrite the balancer's config with these servers down (or none), reload, wait for in-flight requests."""
    set_up = f"[ -f {CONFIG} ] || {{ echo 'nginx is not set up for our models on this host: run fab setup-lb first'; exit 1; }}\n"
    config = render_config(upstreams(inventory, drained), inventory.lb)
    step = Step.change("balancer", summary, set_up + install_config_script(CONFIG, config))
    apply(remote, [step], lambda done: None)
    return step
