"""Model servers: one systemd instance per model name, deployed as releases with a health gate and rollback.

Runbook this replaces: find the run's artifact path, copy it to the server, build an env from its
requirements.txt, `mlflow models serve`, curl /invocations, and pray; go back by hand when it fails.
"""

from __future__ import annotations

import io
import tarfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from tasks.converge import APPLIED, apply_shown, converge_host
from tasks.inventory import ModelSettings
from tasks.ops import facts as f
from tasks.ops import firewall, wheelsync
from tasks.ops.audit import AUDIT_LOG, operator
from tasks.ops.audit import append_script as append_audit
from tasks.ops.audit import parse as parse_audit
from tasks.ops.envguard import pinned_build_script, prune_script, unpin_script
from tasks.ops.files import ensure_directory, ensure_file, write_file_script
from tasks.ops.health import HttpCheck, gate_script, probe_command, probe_healthy
from tasks.ops.lock import Lock, acquire_script, holder_message, release_script
from tasks.ops.pyenv import ENVS_ROOT, EnvSpec, ensure_env
from tasks.ops.remote import HostError, Remote, private_path
from tasks.ops.steps import Step, apply
from tasks.ops.system import ensure_packages, ensure_system_user
from tasks.ops.systemd import (
    daemon_reload,
    ensure_enabled,
    ensure_running,
    restart_script,
)
from tasks.report import HostReport, record, show_note, show_step
from tasks.serving import switch as model_switch
from tasks.serving.firewall import MODEL_WALL
from tasks.serving.history import (
    MODELS_ROOT,
    history_entry,
    model_dir,
    parse_history,
    parse_releases,
    previous_release,
    recorded_release,
    release_name,
    releases_to_prune,
)
from tasks.serving.source import ModelArtifact, manifest
from tasks.serving.switch import Transaction
from tasks.templates import TEMPLATES, render

MODEL_USER = "mlflow-model"
MODEL_HOME = "/var/lib/mlflow-model"
MODEL_CONFIG_DIR = "/etc/mlflow/models"
ENV_PREFIX = "model"
UNIT_TEMPLATE = "/etc/systemd/system/mlflow-model@.service"
MODEL_PACKAGES = ["python3-venv", "curl", "ca-certificates", "iproute2", "logrotate"]
# Each model's answers, one line each (templates/mlflow_fab_answers.py writes them, mtail reads them):
# ANSWERS_DIR/NAME.log, ANSWERS_DIRECTORY being the units' LogsDirectory
ANSWERS_DIRECTORY = "mlflow-models"
ANSWERS_DIR = f"/var/log/{ANSWERS_DIRECTORY}"
ANSWERS_LOGS = f"{ANSWERS_DIR}/*.log"
ANSWERS_SCRIPT = "/usr/local/lib/mlflow-fab/serving/mlflow_fab_answers.py"
ANSWERS_LOGROTATE = "/etc/logrotate.d/mlflow-models"
SAMPLE = "sample.json"


def env_markers(output: str) -> dict[str, str]:
    """env directory name -> its .complete marker."""
    return dict(line.split("\t", 1) for line in output.splitlines() if "\t" in line)


def env_links(output: str) -> list[list[str]]:
    """[release's env link, the env it points to] for every release of every model."""
    return [line.split() for line in output.splitlines() if len(line.split()) == 2]


# What a deploy reads on the host besides the facts of its model (ModelHost).
INSTALLED_PACKAGES = f.installed_packages(MODEL_PACKAGES + firewall.FIREWALL_PACKAGES)
MODEL_USER_EXISTS = f.user_exists(MODEL_USER)
HOST_PYTHON = f.python_version()
ENV_MARKERS = f.Fact("env_markers", f"cd {ENVS_ROOT} && for m in */.complete; do printf '%s\\t%s\\n' \"${{m%/.complete}}\" \"$(cat \"$m\")\"; done",
                     env_markers)
ENVS = f.Fact("envs", f"ls -1 {ENVS_ROOT}", f.words)
ENV_LINKS = f.Fact("env_links", f"for l in {MODELS_ROOT}/*/releases/*/env; do printf '%s %s\\n' \"$l\" \"$(readlink \"$l\")\"; done", env_links)
# `PATH:PORT=N` per model configured on the host
PORTS = f.Fact("ports", f"grep -H '^PORT=' {MODEL_CONFIG_DIR}/*.env")
UNIT_TEMPLATE_FILE = f.file_content(UNIT_TEMPLATE)
ANSWERS_SCRIPT_FILE = f.file_content(ANSWERS_SCRIPT)
ANSWERS_LOGROTATE_FILE = f.file_content(ANSWERS_LOGROTATE)
AUDIT_TAIL = f.Fact("audit", f"tail -n 200 {AUDIT_LOG}")


def unit_name(name: str) -> str:
    return f"mlflow-model@{name}"


@dataclass(frozen=True)
class Deployment:
    """What deploy-model ships to every host: one fetched model, one release name, one tarball."""

    name: str
    artifact: ModelArtifact
    sample: str
    stamp: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    by: str = field(default_factory=operator)

    @property
    def release(self) -> str:
        return release_name(self.stamp, self.artifact.digest)

    def tarball(self) -> bytes:
        """model/ plus the gate's sample request, packed once for every host."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            archive.add(self.artifact.local_dir, arcname="model")
            if self.sample:
                data = self.sample.encode()
                info = tarfile.TarInfo(SAMPLE)
                info.size, info.mode = len(data), 0o644
                archive.addfile(info, io.BytesIO(data))
        return buffer.getvalue()


class ModelHost:
    """One model name on one host: its paths, facts and checks."""

    def __init__(self, remote: Remote, name: str):
        self.remote = remote
        self.name = name
        self.settings: ModelSettings = remote.host.model(name)
        self.dir = model_dir(name)
        self.releases_dir = f"{self.dir}/releases"
        self.current = f"{self.dir}/current"
        self.history = f"{self.dir}/history.jsonl"
        self.unit = unit_name(name)
        self.env_file = f"{MODEL_CONFIG_DIR}/{name}.env"
        releases = (
            f"cd {self.releases_dir} && for r in */; do r=${{r%/}}; "
            "printf '%s\\t%s\\n' \"$r\" \"$(tr -d '\\n' < \"$r/manifest.json\")\"; done"
        )
        # this model's facts
        self.releases_fact = f.Fact("releases", releases, parse_releases)
        self.current_fact = f.Fact("current", f"basename \"$(readlink {self.current})\"")
        self.history_fact = f.Fact("history", f"cat {self.history}", parse_history)
        self.env_file_fact = f.file_content(self.env_file)
        self.service_fact = f.service_state(self.unit)
        self.running_fact = f.Fact("running", running_release_command(self.unit))
        self.probe_fact = f.Fact("probe", probe_command(self.settings.port, self.health_checks))

    @property
    def health_checks(self) -> list[HttpCheck]:
        sample = f"{self.current}/{SAMPLE}"
        post = f"-X POST -H 'Content-Type: application/json' --data-binary @{sample}"
        # a release shipped without a sample request (the model has no input example, no --sample) is gated on /ping alone
        return [HttpCheck("/ping"), HttpCheck("/invocations", curl_args=post, expect="predictions", needs_file=sample)]

    def facts(self) -> list[f.Fact]:
        return [
            f.os_release(),
            INSTALLED_PACKAGES,
            MODEL_USER_EXISTS,
            *[f.path_stat(path) for path, *_ in self.directories()],
            HOST_PYTHON,
            self.releases_fact,
            self.current_fact,
            self.history_fact,
            ENV_MARKERS,
            ENVS,
            ENV_LINKS,
            PORTS,
            UNIT_TEMPLATE_FILE,
            ANSWERS_SCRIPT_FILE,
            ANSWERS_LOGROTATE_FILE,
            self.env_file_fact,
            self.service_fact,
            self.running_fact,
            self.probe_fact,
        ]

    def directories(self) -> list[tuple[str, str, str, str]]:
        return [
            (MODEL_HOME, MODEL_USER, MODEL_USER, "750"),
            (MODEL_CONFIG_DIR, "root", "root", "755"),
            (ENVS_ROOT, "root", "root", "755"),
            (MODELS_ROOT, "root", "root", "755"),
            (self.dir, "root", "root", "755"),
            (self.releases_dir, "root", MODEL_USER, "750"),
        ]

    def gate(self, after_restart: bool) -> Step:
        timeout = self.settings.health_timeout
        script = gate_script(self.unit, self.settings.port, self.health_checks, timeout, after_restart)
        return Step.change("health gate", f"wait up to {timeout} s for /ping and a real prediction", script)

    @property
    def restart_command(self) -> str:
        return restart_script(self.unit, self.settings.port)

    def switch_script(self, release: str) -> str:
        """Flip `current` atomically (ln -s + mv -T); the history records it only once the gate passed."""
        return f"ln -sfn releases/{release} {self.dir}/.current.tmp\nmv -T {self.dir}/.current.tmp {self.current}"

    def restore_script(self, release: str) -> str:
        """`current` back to what it was: RELEASE, or no link at all."""
        return self.switch_script(release) if release else f"rm -f {self.current}"


def running_release_command(unit: str) -> str:
    """The release the unit's process really runs: its working directory is `current`, resolved when it started."""
    return (
        f"pid=$(systemctl show -p MainPID --value {unit}); [ \"${{pid:-0}}\" -gt 0 ] || exit 0\n"
        'cwd=$(readlink "/proc/$pid/cwd"); case "$cwd" in */releases/*) basename "$cwd" ;; esac'
    )


def served_release(model: ModelHost, facts: f.Facts, releases: dict) -> str:
    """The release answering now: the running process's ('' when the unit is not active)."""
    if facts[model.service_fact].get("ActiveState") != "active":
        return ""
    running = facts[model.running_fact]
    # a unit started before its WorkingDirectory was `current` can't tell: trust the link
    return running if running in releases else facts[model.current_fact]


def switch_back_steps(model: ModelHost, release: str, served: str, current: str) -> list[Step]:
    """What the host does when a switch to RELEASE fails: serve what served before, or with nothing, start nothing."""
    if served and served != release:
        script = f"{model.switch_script(served)}\n{model.restart_command}"
        return [Step.change("roll back", f"{release} -> {served}", script), model.gate(after_restart=True)]
    restore = "" if current == release else model.restore_script(current)
    script = f"systemctl disable --now --quiet {model.unit}\nsystemctl reset-failed {model.unit} 2>/dev/null || true\n{restore}"
    link = f", current back to {current}" if current and restore else ", no current link" if restore else ""
    return [Step.change("stop", f"nothing served before: stop and disable {model.unit}{link}", script.strip())]


def switch_transaction(model: ModelHost, release: str, served: str, current: str, recorded: str, forward: list[Step],
                       action: str, by: str, reason: str = "") -> Transaction:
    """The switch to RELEASE as the host runs it; RECORDED is what the history says serves (a line only when that changes)."""
    at = "@@at@@"  # stamped on the host when the gate has passed
    forward_record = history_entry(action, release, served, by, at, reason) if release != recorded else ""
    back_record = history_entry("rollback", served, release, by, at, "switch failed") if served and served != recorded else ""
    return Transaction(model.name, release, served, forward, switch_back_steps(model, release, served, current), model.history,
                       forward_record, back_record, deadline=2 * model.settings.health_timeout + model_switch.DEADLINE_MARGIN)


def render_unit() -> str:
    return render("mlflow-model@.service.j2", user=MODEL_USER, home=MODEL_HOME, models_root=MODELS_ROOT, config_dir=MODEL_CONFIG_DIR,
                  answers_script=ANSWERS_SCRIPT, answers_directory=ANSWERS_DIRECTORY, answers_dir=ANSWERS_DIR, writable=[MODEL_HOME])


def answers_script() -> str:
    return (TEMPLATES / "mlflow_fab_answers.py").read_text()


def answers_logrotate() -> str:
    return render("logrotate-mlflow-models.j2", answers_dir=ANSWERS_DIR, user=MODEL_USER)


def port_conflict(name: str, port: int, ports_fact: str) -> str:
    """Another model on the host already configured on this port ('' when none)."""
    for line in ports_fact.splitlines():
        path, _, value = line.partition(":PORT=")
        other = Path(path).stem
        if other != name and value.strip() == str(port):
            return other
    return ""


def model_ports(port: int, ports_fact: str) -> list[int]:
    """This model's port and every port configured for a model on the host."""
    values = (line.partition(":PORT=")[2].strip() for line in ports_fact.splitlines())
    return sorted({port, *(int(value) for value in values if value.isdigit())})


def env_spec(settings: ModelSettings, artifact: ModelArtifact, host_python: str) -> EnvSpec:
    """The model's requirements on the host's Python (venv) or on the model's own Python (conda)."""
    python = artifact.python_version if settings.env_manager == "conda" else host_python
    return EnvSpec(settings.env_manager, tuple(artifact.requirements), python=python, allow_source_builds=settings.allow_source_builds)


@dataclass
class DeployPlan:
    """One host's steps in the order a rolling deploy runs them."""

    release: str
    stage: list[Step] = field(default_factory=list)  # touches no running service
    switch: list[Step] = field(default_factory=list)  # switch current, restart, health gate
    prune: list[Step] = field(default_factory=list)
    # the stage step that unpacks the uploaded tarball, when the release is not on the host yet
    upload: Step | None = None
    # the release answering before the switch, and the switch as the host runs it
    served: str = ""
    transaction: Transaction | None = None

    @property
    def steps(self) -> list[Step]:
        return self.stage + self.switch + self.prune

    @property
    def failed(self) -> bool:
        return any(step.failed for step in self.steps)

    @property
    def changes_anything(self) -> bool:
        return any(step.changed for step in self.steps)

    @property
    def touches_service(self) -> bool:
        return any(step.changed for step in self.switch)


def plan_deploy(model: ModelHost, deployment: Deployment, facts: f.Facts,
                firewall_policy: firewall.FirewallPolicy = firewall.FirewallPolicy(MODEL_WALL), spec: EnvSpec | None = None) -> DeployPlan:
    """The release this host will serve (an existing one when the digest is already there) and the steps to get there.

    SPEC, when given, is the model's env as it will be built (from the host's wheelhouse)."""
    settings = model.settings
    releases = facts[model.releases_fact]
    current = facts[model.current_fact]
    same_digest = sorted(name for name, release in releases.items() if release.digest == deployment.artifact.digest)
    release = current if current in same_digest else (same_digest[-1] if same_digest else deployment.release)
    plan = DeployPlan(release)

    conflict = port_conflict(model.name, settings.port, facts[PORTS])
    if conflict:
        plan.stage.append(Step.failure("port", f"model {conflict} already uses port {settings.port} on this host: give [models.{model.name}] its own port"))
        return plan

    spec = spec or env_spec(settings, deployment.artifact, facts[HOST_PYTHON])
    env_path = spec.path(ENVS_ROOT, ENV_PREFIX)
    plan.stage.append(ensure_packages(MODEL_PACKAGES + firewall_policy.packages, facts[INSTALLED_PACKAGES]))
    plan.stage += firewall.steps(firewall_policy, model_ports(settings.port, facts[PORTS]), facts)
    plan.stage.append(ensure_system_user(MODEL_USER, MODEL_HOME, facts[MODEL_USER_EXISTS]))
    plan.stage += [ensure_directory(path, owner, group, mode, facts[f.path_stat(path)]) for path, owner, group, mode in model.directories()]
    env_step = ensure_env(spec, env_path, facts[ENV_MARKERS].get(Path(env_path).name, ""), name="python env")
    plan.stage.append(replace(env_step, script=pinned_build_script(spec, env_path, model.name)) if env_step.changed else env_step)

    if release in releases:
        plan.stage.append(Step.ok(f"release {release}", "already on the host (same digest): no upload"))
    else:
        plan.upload = upload_step(model, deployment, release, spec, env_path)
        plan.stage.append(plan.upload)

    env_file = render("model.env.j2", name=model.name, port=settings.port, workers=settings.workers)
    env_file_step = ensure_file(model.env_file, env_file, facts[model.env_file_fact])
    unit_step = ensure_file(UNIT_TEMPLATE, render_unit(), facts[UNIT_TEMPLATE_FILE])
    script_step = ensure_file(ANSWERS_SCRIPT, answers_script(), facts[ANSWERS_SCRIPT_FILE])
    logrotate_step = ensure_file(ANSWERS_LOGROTATE, answers_logrotate(), facts[ANSWERS_LOGROTATE_FILE])
    plan.stage += [env_file_step, unit_step, script_step, logrotate_step, daemon_reload(unit_step.changed)]

    plan.served = served_release(model, facts, releases)
    plan.switch = switch_steps(model, facts, release, current, plan.served, settings_changed=env_file_step.changed,
                               unit_changed=unit_step.changed or script_step.changed)
    recorded = recorded_release(facts[model.history_fact])
    plan.transaction = switch_transaction(model, release, plan.served, current, recorded, plan.switch, "deploy", deployment.by)
    plan.prune = prune_steps(model, facts, releases, current_after=release, env_path=env_path)
    return plan


def upload_step(model: ModelHost, deployment: Deployment, release: str, spec: EnvSpec, env_path: str) -> Step:
    """The uploaded model unpacked beside the other releases, with its manifest and its env, readable by the model service only."""
    manifest_text = manifest(deployment.artifact, spec.digest, deployment.stamp, deployment.by)
    staging = f"{model.releases_dir}/.{release}.tmp"
    script = "\n".join(
        [
            # the env may have been pruned since preflight: pinned now, rebuilt if it went
            pinned_build_script(spec, env_path, model.name),
            f"rm -rf {staging} && mkdir -m 700 {staging}",
            f"tar -xzf {upload_path(release)} -C {staging} --no-same-owner",
            write_file_script(f"{staging}/manifest.json", manifest_text, "root", "root", "644"),
            f"ln -sfn {env_path} {staging}/env",
            # the model is data: root and the model service read it, nobody else
            f"chown -R root:{MODEL_USER} {staging} && chmod -R u=rwX,g=rX,o= {staging}",
            f"mv -T {staging} {model.releases_dir}/{release}",
        ]
    )
    return Step.change(f"release {release}", f"upload {deployment.artifact.uri} (digest {deployment.artifact.digest[:12]})", script)


def switch_steps(model: ModelHost, facts: f.Facts, release: str, current: str, served: str, settings_changed: bool, unit_changed: bool) -> list[Step]:
    """Point `current` at the release, keep the unit enabled, restart when anything it runs changed, and gate."""
    if current == release:
        switch = Step.ok("switch current", f"already {release}")
    else:
        switch = Step.change("switch current", f"{current or 'nothing'} -> {release}", model.switch_script(release))
    service = facts[model.service_fact]
    # `current` can name another release than the process runs (a switch cut short before this version): restart it
    inputs = {"release": switch.changed or served not in ("", release), "settings": settings_changed, "unit": unit_changed}
    restart = ensure_running(model.unit, model.settings.port, service, [name for name, changed in inputs.items() if changed])
    if restart.changed or not probe_healthy(facts[model.probe_fact], model.health_checks):
        gate = model.gate(after_restart=restart.changed)
    else:
        gate = Step.ok("health gate", "/ping and a prediction answer 200")
    return [switch, ensure_enabled(model.unit, service), restart, gate]


def plan_rollback(model: ModelHost, facts: f.Facts, to: str, by: str) -> DeployPlan:
    releases = facts[model.releases_fact]
    history = facts[model.history_fact]
    current = facts[model.current_fact]
    target = to or previous_release(history)
    plan = DeployPlan(target, served=served_release(model, facts, releases))
    if not target:
        plan.stage.append(Step.failure("rollback", f"no earlier release of {model.name} in this host's history"))
    elif target not in releases:
        kept = ", ".join(sorted(releases)) or "none"
        plan.stage.append(Step.failure("rollback", f"release {target} is not on this host (kept: {kept})"))
    elif target == current == plan.served:
        plan.switch.append(Step.ok("switch current", f"already {target}"))
    else:
        service = facts[model.service_fact]
        plan.switch += [
            Step.change("switch current", f"{plan.served or current or 'nothing'} -> {target}",
                        f"{model.switch_script(target)}\n{model.restart_command}"),
            ensure_enabled(model.unit, service),
            model.gate(after_restart=True),
        ]
        plan.transaction = switch_transaction(model, target, plan.served, current, recorded_release(history), plan.switch, "rollback", by)
    return plan


def prune_steps(model: ModelHost, facts: f.Facts, releases: dict, current_after: str, env_path: str) -> list[Step]:
    """Releases beyond keep_releases, then envs that no remaining release of any model links to."""
    history = facts[model.history_fact]
    doomed = releases_to_prune(sorted(set(releases) | {current_after}), history, current_after, model.settings.keep_releases)
    steps = []
    if doomed:
        paths = " ".join(f"{model.releases_dir}/{name}" for name in doomed)
        steps.append(Step.change("prune releases", f"keep {model.settings.keep_releases}, remove {', '.join(doomed)}", f"rm -rf {paths}"))
    doomed_dirs = {f"{model.releases_dir}/{name}" for name in doomed}
    in_use = {Path(target).name for link, target in facts[ENV_LINKS] if str(Path(link).parent) not in doomed_dirs}
    in_use.add(Path(env_path).name)
    unused = [name for name in facts[ENVS] if name.startswith(f"{ENV_PREFIX}-") and name not in in_use]
    if unused:
        # what goes is decided on the host, under the env guard: other models' deploys may have pinned or linked envs since
        summary = f"remove the envs no release links and no deploy pinned (unused at preflight: {', '.join(unused)})"
        steps.append(Step.change("prune envs", summary, prune_script(ENVS_ROOT, MODELS_ROOT, f"{ENV_PREFIX}-")))
    return steps


def upload_path(release: str) -> str:
    return private_path(f"{release}.tgz")


def python_mismatch(artifact: ModelArtifact, host_python: str) -> str:
    model_python = artifact.python_version
    if model_python and host_python and model_python != host_python:
        return f"warning: the model was trained on Python {model_python}, this host runs {host_python}"
    return ""


class HostRollout(ABC):
    """One model on one host, in the phases a rolling deploy or rollback interleaves: preflight (facts, lock, stage:
    touches no service), switch (restart + gate, rolled back on failure), finish."""

    action = ""  # what the audit log calls it

    def __init__(self, remote: Remote, report: HostReport, name: str, lock: Lock, break_lock: bool = False):
        self.remote, self.report = remote, report
        self.model = ModelHost(remote, name)
        self.lock, self.break_lock = lock, break_lock
        self.plan = DeployPlan("")
        self.previous = ""
        # what the history says this host serves, and the switch directories to remove when done
        self.recorded = ""
        self.switches: list[Transaction] = []
        self.locked = False
        self.outcome = "untouched"
        # what the host serves, as far as we know: the deploy table's column
        self.serving = "unknown"

    @property
    def name(self) -> str:
        return self.report.host

    def _show(self, step: Step) -> None:
        show_step(self.report, step)

    def gather(self) -> f.Facts:
        return f.gather(self.remote, self.model.facts())

    @abstractmethod
    def plan_for(self, facts: f.Facts) -> DeployPlan:
        """This host's plan from its facts."""

    def upload(self) -> tuple[bytes, str] | None:
        """What the stage needs on the host while it runs (data, path), if anything."""
        return None

    def preflight(self) -> None:
        """The converge sequence up to the stage: facts, plan, then (unless checking, or nothing changes) the stage under
        this deploy's lock."""

        def planned(facts: f.Facts) -> list[Step]:
            self.plan = self.plan_for(facts)
            return self.plan.steps

        converged = converge_host(self.remote, self.report, self.gather, planned, lambda facts, steps: self._stage())
        self.recorded = recorded_release(converged.facts[self.model.history_fact])
        self.previous = self.plan.served
        self.serving = self.plan.served or "nothing"
        self.outcome = "staged" if converged.outcome == APPLIED else converged.outcome

    def _stage(self) -> bool:
        """Under this deploy's lock, the steps that touch no running service."""
        self._acquire_lock()
        return apply_shown(self.remote, self.report, self.plan.stage, self.upload())

    def _acquire_lock(self) -> None:
        result = self.remote.run_script(acquire_script(self.model.name, self.lock, self.break_lock), step="lock")
        if result.exited != 0:
            raise HostError("lock", holder_message(result.stdout, self.model.name) or result.stdout[-500:])
        self.locked = True

    def switch(self) -> None:
        """Serve the staged release: the host switches, restarts and gates it, and on any failure goes back by itself."""
        self.outcome = self._transact(self.plan.transaction, self.plan.release)
        if self.outcome == "updated" and not self.plan.touches_service:
            self.outcome = "unchanged"

    def return_to_previous(self, reason: str) -> None:
        """Back to the release that served before this deploy (--rollback-all), as a switch of its own."""
        model, release = self.model, self.plan.release
        if not self.previous or self.previous == release:
            show_note(self.report, f"{reason}: nothing served before {release} here, it stays")
            return
        forward = [Step.change("roll back", f"{release} -> {self.previous} ({reason})",
                               f"{model.switch_script(self.previous)}\n{model.restart_command}"),
                   model.gate(after_restart=True)]
        self.report.steps += forward
        transaction = switch_transaction(model, self.previous, release, release, self.recorded, forward, "rollback", self.lock.by, reason)
        self.outcome = "rolled back" if self._transact(transaction, self.previous) == "updated" else "failed"
        self.report.error = self.report.error or reason

    def _transact(self, transaction: Transaction, release: str) -> str:
        """Run one switch on the host; report the steps it ran and what the host serves afterwards."""
        self.switches.append(transaction)
        self.serving = "unknown"
        ran: list[Step] = []

        def done(step: Step) -> None:
            ran.append(step)
            self._show(step)

        outcome = model_switch.run(self.remote, transaction, done, lambda note: show_note(self.report, note))
        if outcome.result in ("updated", "rolled back", "stopped"):
            self.serving = outcome.serving or "nothing"
        self.report.steps += [step for step in transaction.back if any(step is other for other in ran)]
        for step in transaction.steps:
            step.skipped = step.changed and not any(step is other for other in ran)
        failed = next((step.name for step in transaction.forward if step.failed), "switch")
        if outcome.result == "updated":
            self.recorded = release if transaction.forward_record else self.recorded
            return "updated"
        if outcome.result == "rolled back":
            self.report.error = f"{failed} of {release} failed: back to {outcome.serving}, which passed its gate"
        elif outcome.result == "stopped":
            self.report.error = f"{failed} of {release} failed and nothing served before: {self.model.unit} is stopped and disabled"
        elif outcome.result == "lost":
            self.report.error = (f"{transaction.unit} gave no outcome (it did not start, was killed at its {transaction.deadline} s "
                                 "deadline, or the host rebooted): see `fab releases` and `fab status` for what it serves")
        else:
            self.report.error = f"{failed} of {release} failed, and going back failed too: see the output above and `fab status`"
        return outcome.result if outcome.result in ("rolled back", "stopped") else "failed"

    def finish(self) -> None:
        """Prune after a good switch, write the audit line, remove the switches' directories, and release our lock."""
        steps = self.plan.prune if self.outcome == "updated" else []
        script = [model_switch.remove_script(transaction) for transaction in self.switches]
        if self.outcome in ("updated", "rolled back", "stopped", "failed") and self.locked:
            script.append(append_audit(self.audit_record()))
        if self.locked:
            script += [unpin_script(self.model.name), release_script(self.model.name, self.lock)]
        if steps:
            apply(self.remote, steps, self._show_pruned)
        if script:
            self.remote.run_script("\n".join(script), step="unlock")
            self.locked = False

    def _show_pruned(self, step: Step) -> None:
        """A prune decided on the host says what it removed."""
        if step.output and not step.failed:
            step.summary = step.output.splitlines()[-1]
        self._show(step)

    def audit_record(self) -> dict:
        return {"model": self.model.name, "action": self.action, "from": self.previous, "to": self.plan.release,
                "model_uri": self.model_uri, "result": self.outcome, "by": self.lock.by}

    @property
    def model_uri(self) -> str:
        return ""


class HostDeploy(HostRollout):
    """deploy-model on one host: the fetched model staged as a release (or one already there with its digest), then served."""

    action = "deploy"

    def __init__(self, remote: Remote, report: HostReport, name: str, lock: Lock, deployment: Deployment, tarball: bytes = b"",
                 break_lock: bool = False, firewall_policy: firewall.FirewallPolicy = firewall.FirewallPolicy(MODEL_WALL)):
        super().__init__(remote, report, name, lock, break_lock)
        self.deployment, self.tarball, self.firewall = deployment, tarball, firewall_policy

    @property
    def model_uri(self) -> str:
        return self.deployment.artifact.uri

    def gather(self) -> f.Facts:
        wanted = self.model.facts() + firewall.facts(self.firewall)
        facts = f.gather(self.remote, wanted)
        if not facts[HOST_PYTHON] and not self.report.check:
            # The env's name depends on the host's Python: install it first on a fresh host, then look again.
            packages = ensure_packages(MODEL_PACKAGES, facts[INSTALLED_PACKAGES])
            if not apply(self.remote, [packages], self._show):
                raise HostError("packages", packages.output[-500:] or "apt-get failed")
            facts = f.gather(self.remote, wanted)
        return facts

    def plan_for(self, facts: f.Facts) -> DeployPlan:
        spec = env_spec(self.model.settings, self.deployment.artifact, facts[HOST_PYTHON])
        marker = facts[ENV_MARKERS].get(Path(spec.path(ENVS_ROOT, ENV_PREFIX)).name, "")
        spec, wheels = wheelsync.supply(self.remote, spec, marker, self.report.check)
        record(self.report, wheels)
        plan = plan_deploy(self.model, self.deployment, facts, self.firewall, spec)
        warning = python_mismatch(self.deployment.artifact, facts[HOST_PYTHON])
        if warning:
            show_note(self.report, warning)
        return plan

    def upload(self) -> tuple[bytes, str] | None:
        uploads = self.plan.upload is not None
        return (self.tarball, upload_path(self.plan.release)) if uploads else None


class HostRollback(HostRollout):
    """rollback-model on one host: serve an earlier release still there again (the previous one, or TO)."""

    action = "rollback"

    def __init__(self, remote: Remote, report: HostReport, name: str, lock: Lock, to: str = "", break_lock: bool = False):
        super().__init__(remote, report, name, lock, break_lock)
        self.to = to

    def plan_for(self, facts: f.Facts) -> DeployPlan:
        return plan_rollback(self.model, facts, self.to, self.lock.by)


def release_state(name: str, served: str, current: str, previous: str) -> str:
    if name == served:
        return "current"
    if name == current:
        return "linked, not serving"
    return "previous" if name == previous else "kept"


def serving_note(model: ModelHost, served: str, current: str) -> str:
    if not served:
        return f"nothing serves: {model.unit} is not active"
    if served != current:
        return f"{served} serves, but current links {current or 'nothing'}: deploy again to repair"
    return f"{served} serves"


def list_releases_on(remote: Remote, report: HostReport, name: str) -> None:
    model = ModelHost(remote, name)
    facts = f.gather(remote, [*model.facts(), AUDIT_TAIL])
    releases = facts[model.releases_fact]
    current, previous = facts[model.current_fact], previous_release(facts[model.history_fact])
    served = served_release(model, facts, releases)
    report.details["serving"] = serving_note(model, served, current)
    report.details["rows"] = [
        (
            release.name,
            release_state(release.name, served, current, previous),
            release.manifest.get("run_id", ""),
            release.manifest.get("deployed_at", ""),
            release.manifest.get("deployed_by", ""),
        )
        for release in sorted(releases.values(), key=lambda r: r.name, reverse=True)
    ]
    report.details["audit"] = parse_audit(facts[AUDIT_TAIL], name)
    report.steps.append(Step.ok("releases", f"{len(releases)} kept"))
