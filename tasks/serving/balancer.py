"""nginx in front of the model hosts: one upstream and one port per model, each model in its own config file,
drained host by host during deploys (a drain rewrites only its own model's file).

Runbook this replaces: apt-get install nginx; write an upstream per model; `nginx -t`; reload;
comment a server out before touching its host, reload again, and hope nothing was in flight.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.converge import converge_host
from tasks.inventory import Inventory, LbSettings
from tasks.ops import facts as f
from tasks.ops.files import ensure_secret_file, unified_diff
from tasks.ops.nginx import install_config_script, install_configs_script, reload_step
from tasks.ops.remote import Remote
from tasks.ops.steps import Step, apply
from tasks.ops.system import ensure_packages
from tasks.ops.systemd import ensure_enabled
from tasks.report import HostReport, show_note
from tasks.templates import render
from tasks.tracking.frontdoor import FrontDoor, TlsFiles, apply_with_key, certificate_steps, learn_certificate, tls_fact
from tasks.values import address_port

NGINX_CONF_D = "/etc/nginx/conf.d"
# Where setup-lb once wrote every model in one file; it now writes one file per model and removes this one.
SINGLE_CONFIG = f"{NGINX_CONF_D}/mlflow-models.conf"
CERTIFICATE = "/etc/ssl/certs/mlflow-models.pem"
KEY = "/etc/ssl/private/mlflow-models.key"
# `name:$6$...` lines (SHA-512 crypt) written by `fab model-user`; nginx's workers (www-data) read it.
USERS = "/etc/nginx/mlflow-models.users"
# logrotate: nginx logs every prediction twice here, and Debian's nginx ships its rotation but not the tool
BALANCER_PACKAGES = ["nginx", "openssl", "logrotate"]
# One line per answer of every model (its format in each model's file): what mtail turns into request metrics.
REQUESTS_LOG = "/var/log/nginx/mlflow-models.log"


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
    weight: int | None = None  # set while a canary bakes with its own share of the traffic


@dataclass(frozen=True)
class Upstream:
    name: str
    port: int
    servers: tuple[Server, ...]


def model_names(inventory: Inventory) -> list[str]:
    """The models the balancer fronts: every [models.NAME] of the inventory, else the default name."""
    return sorted(name for name in inventory.models if name) or ["model"]


def not_fronted(inventory: Inventory, name: str) -> str:
    """Why a deploy of model `name` can't be drained on the balancer ('' when it can, or when there is no balancer)."""
    if not inventory.with_role("lb") or name in model_names(inventory):
        return ""
    return (f"the balancer (lb hosts {', '.join(host.name for host in inventory.with_role('lb'))}) does not front model {name!r}, "
            f"only {', '.join(model_names(inventory))}: add [models.{name}] with its own port to {inventory.path}, "
            "run `fab setup-lb`, then deploy")


def config_path(model: str) -> str:
    return f"{NGINX_CONF_D}/mlflow-model-{model}.conf"


def upstream(inventory: Inventory, name: str, drained: frozenset[str] = frozenset(), weights: dict[str, int] | None = None) -> Upstream:
    """Model `name` over every models host, each on its own port for the model; drained holds host names to mark down,
    weights the nginx weight of each host (a canary's share of the traffic while it bakes)."""
    return Upstream(
        name,
        inventory.models.get(name, inventory.models[""]).port,
        tuple(Server(h.name, h.address, h.model(name).port, h.name in drained, (weights or {}).get(h.name))
              for h in inventory.with_role("models")),
    )


def upstreams(inventory: Inventory) -> list[Upstream]:
    return [upstream(inventory, name) for name in model_names(inventory)]


def render_config(model: Upstream, lb: LbSettings) -> str:
    return render("nginx-mlflow-model.conf.j2", model=model, tls=lb.tls, auth=lb.auth, certificate=CERTIFICATE, key=KEY, users=USERS,
                  requests_log=REQUESTS_LOG)


INSTALLED_PACKAGES = f.installed_packages(BALANCER_PACKAGES)
MODEL_CONFIGS = f.Fact("model_configs", f"ls -1 {config_path('*')}", f.words)
SINGLE_CONFIG_STAT = f.path_stat(SINGLE_CONFIG)
NGINX_STATE = f.service_state("nginx")
TLS_STATE = tls_fact(TlsFiles(CERTIFICATE, KEY))
USERS_STAT = f.path_stat(USERS)


def lb_facts(models: list[Upstream]) -> list[f.Fact]:
    return [f.os_release(), INSTALLED_PACKAGES, *[f.file_content(config_path(model.name)) for model in models],
            MODEL_CONFIGS, SINGLE_CONFIG_STAT, NGINX_STATE, TLS_STATE, USERS_STAT]


def configs_step(models: list[Upstream], lb: LbSettings, facts: f.Facts, reload_for: str = "") -> Step:
    """Every model's own file, the files of models no longer in the inventory and the old single file removed:
    written together, validated with one `nginx -t`, reloaded once."""
    wanted = {config_path(model.name): render_config(model, lb) for model in models}
    current = {path: facts[f.file_content(path)] for path in wanted}
    writes = {path: content for path, content in wanted.items() if not (current[path].exists and current[path].content == content)}
    stale = [path for path in facts[MODEL_CONFIGS] if path not in wanted]
    stale += [SINGLE_CONFIG] if facts[SINGLE_CONFIG_STAT] else []
    if not writes and not stale:
        return reload_step("nginx config", reload_for) if reload_for else Step.ok("nginx config", f"{', '.join(wanted)} up to date")
    summary = "; ".join(part for part in (
        f"write {', '.join(writes)}" if writes else "",
        f"remove {', '.join(stale)} (no longer in the inventory, or the single file of earlier versions)" if stale else "",
    ) if part) + ", validate with nginx -t, reload"
    diff = "".join(unified_diff(path, current[path].content, content) for path, content in writes.items())
    script = install_configs_script({**writes, **dict.fromkeys(stale)})
    return Step.change("nginx config", summary, script, diff)


def plan_lb(door: BalancerDoor, models: list[Upstream], facts: f.Facts) -> list[Step]:
    """Packages, the certificate (tls), the users file (auth), then the configs, validated and reloaded."""
    lb = door.lb
    steps = [ensure_packages(BALANCER_PACKAGES, facts[INSTALLED_PACKAGES])]
    tls_steps = certificate_steps(door, facts[TLS_STATE]) if lb.tls else []
    steps += tls_steps
    if lb.auth:
        steps.append(ensure_secret_file(USERS, "www-data", facts[USERS_STAT], f"install -o root -g www-data -m 640 /dev/null {USERS}"))
    new_certificate = any(step.changed for step in tls_steps)
    steps.append(configs_step(models, lb, facts, "certificate changed" if new_certificate else ""))
    steps.append(ensure_enabled("nginx", facts[NGINX_STATE]))
    return steps


def converge_lb(remote: Remote, report: HostReport, inventory: Inventory) -> None:
    lb = inventory.lb
    door = BalancerDoor(remote.host, remote.connection.host, lb=lb)
    models = upstreams(inventory)

    converged = converge_host(remote, report, lambda: f.gather(remote, lb_facts(models)), lambda facts: plan_lb(door, models, facts),
                              apply_with_key(remote, report, lb.tls_key))
    facts, steps = converged.facts, converged.steps
    if not converged.done:
        return
    address = remote.connection.host
    for model in models:
        note = f"model {model.name}: {'https' if lb.tls else 'http'}://{address_port(address, model.port)}/invocations -> {len(model.servers)} hosts"
        if lb.tls and not lb.tls_certificate:
            path, fingerprint = learn_certificate(remote, address, model.port, steps, facts[TLS_STATE], certificate=CERTIFICATE)
            note += f"; self-signed certificate, sha256 fingerprint {fingerprint}, saved to {path}"
        show_note(report, note + ("; sign-in required: `fab model-user --add NAME`" if lb.auth else ""))


def drain(remote: Remote, inventory: Inventory, model: str, drained: frozenset[str], summary: str, weights: dict[str, int] | None = None) -> Step:
    """Rewrite this model's own config with these hosts down (or none) and these weights, reload, wait for in-flight requests."""
    path = config_path(model)
    set_up = f"[ -f {path} ] || {{ echo 'model {model} is not set up on this balancer: run fab setup-lb first'; exit 1; }}\n"
    config = render_config(upstream(inventory, model, drained, weights), inventory.lb)
    step = Step.change("balancer", summary, set_up + install_config_script(path, config))
    apply(remote, [step], lambda done: None)
    return step
