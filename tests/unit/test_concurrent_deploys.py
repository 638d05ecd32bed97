"""Concurrent work on shared hosts: the env guard's scripts (run here on temporary directories), one nginx file per
model with each host's port, and the balancer putting lb hosts back when a drain fails on another."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from tasks.inventory import load_inventory
from tasks.ops import envguard
from tasks.ops import facts as f
from tasks.ops.facts import Facts
from tasks.ops.pyenv import EnvSpec
from tasks.ops.remote import HostError
from tasks.serving import balancer as lb
from tasks.serving.deploy import ENV_MARKERS, ENVS, Deployment, plan_deploy, prune_steps
from tasks.serving.rolling import Balancer
from tests.unit.test_models_plan import artifact, model_host, served_facts  # noqa: F401  (artifact is a fixture)

INVENTORY = """
[lb]
tls = false
auth = false
[models.wine]
port = 5001
[models.red]
port = 5002
[hosts.lb1]
address = "10.0.0.1"
roles = ["lb"]
[hosts.lb2]
address = "10.0.0.2"
roles = ["lb"]
[hosts.m1]
address = "10.0.1.1"
roles = ["models"]
[hosts.m2]
address = "10.0.1.2"
roles = ["models"]
[hosts.m2.models.wine]
port = 6000
"""


@pytest.fixture
def inventory(tmp_path):
    path = tmp_path / "hosts.toml"
    path.write_text(INVENTORY)
    return load_inventory(path)


def test_each_host_gets_its_own_port_for_a_model(inventory):
    wine = lb.render_config(lb.upstream(inventory, "wine"), inventory.lb)
    assert "server 10.0.1.1:5001 " in wine and "server 10.0.1.2:6000 " in wine and "listen 5001;" in wine
    red = lb.render_config(lb.upstream(inventory, "red", frozenset({"m2"})), inventory.lb)
    assert "server 10.0.1.1:5002 max_fails=1 fail_timeout=5s;" in red and "server 10.0.1.2:5002 max_fails=1 fail_timeout=5s down;" in red
    assert "mlflow_model_wine" not in red


def file_fact(content: str) -> str:
    return "root root 644\n" + base64.b64encode(content.encode()).decode()


def test_setup_lb_writes_one_file_per_model_and_removes_the_single_file_and_dropped_models(inventory):
    models = lb.upstreams(inventory)
    facts = Facts({lb.MODEL_CONFIGS: lb.config_path("iris"), lb.SINGLE_CONFIG_STAT: "root root 644"})
    step = lb.configs_step(models, inventory.lb, facts)
    assert step.changed and lb.config_path("red") in step.summary and lb.config_path("wine") in step.summary
    assert f"rm -f {lb.config_path('iris')}" in step.script and f"rm -f {lb.SINGLE_CONFIG}" in step.script
    # every file is written before the one `nginx -t`, and every one is put back if it refuses
    assert step.script.index(f"rm -f {lb.SINGLE_CONFIG}\n") < step.script.index("if ! nginx -t -q")
    assert step.script.count(".previous ") >= 6 and "flock -w" in step.script
    done = {f.file_content(lb.config_path(m.name)): file_fact(lb.render_config(m, inventory.lb)) for m in models}
    done[lb.MODEL_CONFIGS] = "\n".join(lb.config_path(m.name) for m in models)
    assert not lb.configs_step(models, inventory.lb, Facts(done)).changed
    assert lb.configs_step(models, inventory.lb, Facts(done), "certificate changed").script.count("nginx -t -q") == 1


def test_a_name_the_balancer_does_not_front_is_named(inventory, tmp_path):
    assert lb.not_fronted(inventory, "wine") == ""
    problem = lb.not_fronted(inventory, "blue")
    assert "does not front model 'blue', only red, wine: add [models.blue]" in problem and "fab setup-lb" in problem
    path = tmp_path / "no-lb.toml"
    path.write_text('[hosts.m1]\naddress = "10.0.1.1"\nroles = ["models"]\n')
    assert lb.not_fronted(load_inventory(path), "blue") == ""


class FakeDrains:
    """Stands in for tasks.serving.balancer.drain: records what each lb host was told, fails on the hosts given."""

    def __init__(self, failing: set[str]):
        self.failing, self.calls = failing, []

    def __call__(self, remote, inventory, model, drained, summary, weights=None):
        self.calls.append((remote.host.name, model, set(drained)))
        failed = remote.host.name in self.failing
        return SimpleNamespace(failed=failed, output="nginx -t refused the new config" if failed else "")


def balancer(inventory, monkeypatch, failing: set[str]) -> tuple[Balancer, FakeDrains]:
    drains = FakeDrains(failing)
    monkeypatch.setattr(lb, "drain", drains)
    instance = Balancer.__new__(Balancer)
    instance.inventory, instance.model, instance.drained, instance.weights = inventory, "wine", set(), {}
    instance.remotes = [SimpleNamespace(host=inventory.hosts[name]) for name in ("lb1", "lb2")]
    return instance, drains


def test_a_drain_failing_on_one_lb_host_undrains_the_others(inventory, monkeypatch):
    balancer_, drains = balancer(inventory, monkeypatch, failing={"lb2"})
    with pytest.raises(HostError, match=r"lb2: nginx -t refused the new config; lb1 put back \(drained there: none\)"):
        balancer_.set_drained({"m1"}, "drained m1")
    assert drains.calls == [("lb1", "wine", {"m1"}), ("lb2", "wine", {"m1"}), ("lb1", "wine", set())]
    assert balancer_.drained == set()


def test_an_undrain_failing_leaves_the_others_undrained(inventory, monkeypatch):
    balancer_, drains = balancer(inventory, monkeypatch, failing=set())
    balancer_.set_drained({"m1"}, "drained m1")
    drains.failing = {"lb2"}
    with pytest.raises(HostError) as error:
        balancer_.set_drained(set(), "back")
    assert "put back" not in str(error.value) and drains.calls[-1] == ("lb2", "wine", set())


def run_here(script: str, root: Path) -> subprocess.CompletedProcess:
    """As a step runs it on a host: bash with set -e."""
    return subprocess.run(["bash", "-c", f"set -e\n{script}"], capture_output=True, text=True, cwd=root)


@pytest.fixture
def guard(tmp_path, monkeypatch):
    """The guard's lock files under tmp_path instead of /run/lock."""
    locks = tmp_path / "lock"
    monkeypatch.setattr(envguard, "LOCK_DIR", str(locks))
    monkeypatch.setattr(envguard, "GUARD", str(locks / "envs.lock"))
    monkeypatch.setattr(envguard, "PINS", str(locks / "env-pins"))
    monkeypatch.setattr(envguard, "BUILD_LOCKS", str(locks / "env-builds"))
    return tmp_path


def make_env(root: Path, name: str) -> Path:
    env = root / "envs" / name
    env.mkdir(parents=True)
    (env / ".complete").write_text("done\n")
    return env


def test_prune_keeps_what_is_linked_pinned_or_staged_and_removes_the_rest(guard):
    envs = {name: make_env(guard, name) for name in ("model-linked", "model-pinned", "model-staged", "model-unused", "tracking-x")}
    release = guard / "models" / "wine" / "releases" / "r1"
    staging = guard / "models" / "red" / "releases" / ".r2.tmp"
    for directory, env in ((release, "model-linked"), (staging, "model-staged")):
        directory.mkdir(parents=True)
        (directory / "env").symlink_to(envs[env])
    (guard / "lock" / "env-pins").mkdir(parents=True)
    (guard / "lock" / "env-pins" / "red").write_text("model-pinned\n")
    result = run_here(envguard.prune_script(str(guard / "envs"), str(guard / "models"), "model-"), guard)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "removed model-unused"
    assert sorted(path.name for path in (guard / "envs").iterdir()) == ["model-linked", "model-pinned", "model-staged", "tracking-x"]
    again = run_here(envguard.prune_script(str(guard / "envs"), str(guard / "models"), "model-"), guard)
    assert again.stdout.strip() == "removed nothing: every env is in use"


def test_a_prune_waits_for_no_one_forever(guard, monkeypatch):
    monkeypatch.setattr(envguard, "PRUNE_WAIT", 1)
    make_env(guard, "model-unused")
    (guard / "lock").mkdir()
    holder = subprocess.Popen(["flock", "-s", str(guard / "lock" / "envs.lock"), "sleep", "5"])
    try:
        result = run_here(envguard.prune_script(str(guard / "envs"), str(guard / "models"), "model-"), guard)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 0 and "kept every env" in result.stdout
    assert (guard / "envs" / "model-unused").exists()


def test_a_complete_env_is_pinned_and_not_rebuilt(guard):
    spec = EnvSpec("venv", ("numpy==2.4.6",))
    env = guard / "envs" / "model-abc"
    env.mkdir(parents=True)
    (env / ".complete").write_text(spec.text + "\n")
    result = run_here(envguard.pinned_build_script(spec, str(env), "wine"), guard)
    assert result.returncode == 0, result.stderr
    assert "is complete" in result.stdout and (env / ".complete").exists()
    assert (guard / "lock" / "env-pins" / "wine").read_text() == "model-abc\n"
    assert run_here(envguard.unpin_script("wine"), guard).returncode == 0 and not (guard / "lock" / "env-pins" / "wine").exists()


def test_a_deploy_pins_its_env_before_building_it_and_again_before_linking_it(artifact):  # noqa: F811
    model = model_host()
    old = Deployment("wine", artifact, sample="{}")
    facts = served_facts(model, old, "r1")
    facts[ENV_MARKERS] = ""
    new = Deployment("wine", artifact, sample="{}", stamp="20261126T120000Z")
    facts[model.releases_fact] = "r1\t" + json.dumps({"digest": "other"})
    plan = plan_deploy(model, new, Facts(facts))
    env = next(step for step in plan.stage if step.name == "python env")
    release = plan.upload
    for step in (env, release):
        assert f"{envguard.PINS}/wine" in step.script and "flock -s 8" in step.script
    assert release.script.index(envguard.PINS) < release.script.index("ln -sfn")


def test_the_env_prune_is_decided_on_the_host(artifact):  # noqa: F811
    model = model_host()
    deployment = Deployment("wine", artifact, sample="{}")
    facts = served_facts(model, deployment, "r1")
    facts[ENVS] += "\nmodel-other"
    steps = prune_steps(model, Facts(facts), {}, current_after="r1", env_path="/opt/mlflow/envs/" + facts[ENVS].split()[0])
    prune = next(step for step in steps if step.name == "prune envs")
    assert "model-other" in prune.summary and "rm -rf /opt/mlflow/envs/model-other" not in prune.script
    assert f"flock -w {envguard.PRUNE_WAIT} -x 8" in prune.script and envguard.PINS in prune.script
