"""nginx in front of the model hosts: one upstream and one port per model, drained host by host during deploys.

Runbook this replaces: apt-get install nginx; write an upstream per model; `nginx -t`; reload;
comment a server out before touching its host, reload again, and hope nothing was in flight.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.inventory import Inventory
from tasks.ops import facts as f
from tasks.ops.nginx import config_step, install_config_script
from tasks.ops.platform import check_platform
from tasks.ops.remote import Remote
from tasks.ops.steps import Step, apply
from tasks.ops.system import ensure_packages
from tasks.ops.systemd import ensure_enabled
from tasks.report import HostReport, show_note, show_step
from tasks.templates import render

CONFIG = "/etc/nginx/conf.d/mlflow-models.conf"
PACKAGES = ["nginx"]


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


def render_config(models: list[Upstream]) -> str:
    return render("nginx-mlflow-models.conf.j2", models=models)


def lb_facts() -> list[f.Fact]:
    return [f.os_release(), f.installed_packages(PACKAGES), f.file_content(CONFIG), f.service_state("nginx")]


def converge_lb(remote: Remote, report: HostReport, inventory: Inventory) -> None:
    facts = f.gather(remote, lb_facts())
    steps = [check_platform(facts.get("os", ""))]
    if not steps[0].failed:
        models = upstreams(inventory)
        service = f.parse_properties(facts.get("service:nginx", ""))
        steps += [
            ensure_packages(PACKAGES, f.parse_installed(facts.get("packages", ""))),
            config_step(CONFIG, render_config(models), f.parse_file(facts.get(f"file:{CONFIG}", ""))),
            ensure_enabled("nginx", service),
        ]
    report.steps += steps
    if report.check or steps[0].failed:
        for step in steps:
            show_step(report, step)
        return
    if apply(remote, steps, lambda step: show_step(report, step)):
        for model in models:
            show_note(report, f"model {model.name}: http://{remote.connection.host}:{model.port}/invocations -> {len(model.servers)} hosts")


def drain(remote: Remote, inventory: Inventory, drained: frozenset[tuple[str, str]], summary: str) -> Step:
    """Rewrite the balancer's config with these servers down (or none), reload, wait for in-flight requests."""
    set_up = f"[ -f {CONFIG} ] || {{ echo 'nginx is not set up for our models on this host: run fab setup-lb first'; exit 1; }}\n"
    step = Step.change("balancer", summary, set_up + install_config_script(CONFIG, render_config(upstreams(inventory, drained))))
    apply(remote, [step], lambda done: None)
    return step
