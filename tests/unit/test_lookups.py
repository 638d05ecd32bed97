"""Nothing is found by its display label or position: facts are read by their object, steps by plan fields or kind."""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path

import pytest

from tasks.inventory import load_inventory
from tasks.ops import facts as f
from tasks.ops import firewall
from tasks.ops.facts import Fact, Facts, FileState, gather_script, read_facts
from tasks.ops.steps import Step
from tasks.serving import balancer
from tasks.serving.deploy import Deployment, plan_deploy, plan_rollback
from tasks.serving.firewall import MODEL_WALL
from tasks.tracking import frontdoor
from tasks.tracking import server as tracking
from tests.unit.test_models_plan import (  # noqa: F401  (artifact is a fixture)
    artifact,
    model_host,
    new_deployment,
    served_facts,
)
from tests.unit.test_tracking_plan import converged_facts, file_fact, target

TASKS = Path(__file__).resolve().parents[2] / "tasks"


def test_a_fact_reads_back_parsed_by_its_own_parser():
    facts = [f.installed_packages(["nginx", "curl"]), f.file_content("/etc/x"), f.service_state("nginx"), f.user_exists("mlflow"),
             Fact("plain", "printf 'a b\\n'")]
    output = ("\n@@fact packages\nnginx ii \ncurl un \n@@fact file:/etc/x\nroot root 644\n" + base64.b64encode(b"hi\n").decode()
              + "\n@@fact service:nginx\nActiveState=active\nMainPID=7\n@@fact user:mlflow\n998\n@@fact plain\na b\n")
    gathered = read_facts(facts, output)
    assert gathered[f.installed_packages(["nginx", "curl"])] == {"nginx"}
    assert gathered[f.file_content("/etc/x")] == FileState(True, "root", "root", "644", "hi\n")
    assert gathered[f.service_state("nginx")] == {"ActiveState": "active", "MainPID": "7"}
    assert gathered[f.user_exists("mlflow")] is True
    assert gathered[Fact("plain", "printf 'a b\\n'")] == "a b"


def test_a_fact_not_answered_reads_as_empty_output():
    nothing = Facts({})
    assert nothing[f.file_content("/etc/x")] == FileState(False)
    assert nothing[f.installed_packages(["nginx"])] == set() and nothing[f.user_exists("mlflow")] is False
    assert nothing[tracking.ENVS] == [] and nothing[tracking.POSTGRESQL_STATE] == ""


def test_two_facts_with_one_name_are_refused_before_anything_runs():
    with pytest.raises(ValueError, match="'tls'"):
        gather_script([frontdoor.TLS_STATE, balancer.TLS_STATE])
    assert gather_script([frontdoor.TLS_STATE, frontdoor.TLS_STATE])  # the same fact twice is one fact


def test_gathered_facts_arrive_parsed_from_a_real_shell(tmp_path):
    (tmp_path / "f").write_text("hello\n")
    facts = [f.file_content(str(tmp_path / "f")), f.file_content(str(tmp_path / "none")), Fact("words", "echo a; echo b", f.words)]
    result = subprocess.run(["bash", "-c", gather_script(facts)], capture_output=True, text=True, check=True)
    gathered = read_facts(facts, result.stdout)
    assert gathered[facts[0]].content == "hello\n" and not gathered[facts[1]].exists and gathered[facts[2]] == ["a", "b"]


class Recording(Facts):
    """Facts that remember which facts a plan read."""

    def __init__(self, outputs: dict):
        super().__init__(outputs)
        self.read: set[Fact] = set()

    def __getitem__(self, fact):
        self.read.add(fact)
        return super().__getitem__(fact)


@pytest.mark.parametrize("settings", [{}, {"tls": False, "auth": False}, {"backup_schedule": "daily"}])
def test_setup_tracking_reads_only_facts_it_gathers(settings):
    t = target(**settings)
    facts = Recording(converged_facts(t))
    tracking.plan(t, facts)
    assert facts.read and facts.read <= set(t.facts())


def test_deploys_and_the_balancer_read_only_facts_they_gather(artifact, tmp_path):  # noqa: F811
    model = model_host()
    policy = firewall.FirewallPolicy(MODEL_WALL, ("10.0.0.1", "lb.example"))
    facts = Recording(served_facts(model, Deployment("wine", artifact, sample="{}"), "r1"))
    plan_deploy(model, new_deployment(artifact), facts, policy)
    assert facts.read <= set(model.facts() + firewall.facts(policy))
    facts = Recording(served_facts(model, Deployment("wine", artifact, sample="{}"), "r1"))
    plan_rollback(model, facts, "", "me")
    assert facts.read <= set(model.facts())
    (tmp_path / "hosts.toml").write_text('[hosts.lb1]\naddress = "10.0.0.1"\nroles = ["lb"]\n[hosts.m1]\naddress = "10.0.1.1"\nroles = ["models"]\n')
    inventory = load_inventory(tmp_path / "hosts.toml")
    door = balancer.BalancerDoor(inventory.hosts["lb1"], "10.0.0.1", lb=inventory.lb)
    facts = Recording({})
    balancer.plan_lb(door, balancer.upstreams(inventory), facts)
    assert facts.read <= set(balancer.lb_facts(balancer.upstreams(inventory)))


@pytest.fixture
def reworded(monkeypatch):
    """Every step's displayed name reworded, as a later edit of the messages might."""
    original = Step.__init__

    def init(self, name, *args, **kwargs):
        original(self, f"reworded: {name[::-1]}", *args, **kwargs)

    def apply():
        monkeypatch.setattr(Step, "__init__", init)

    return apply


def decisions(steps: list[Step]) -> list[tuple]:
    return [(step.kind, step.changed, step.failed, step.summary, step.script, step.diff) for step in steps]


def tracking_scenarios() -> list[tuple]:
    """Plans whose decisions hang on one step among others: a new auth config restarts the server, a new certificate
    reloads nginx, new timer files restart the backup timer."""
    t, scheduled = target(), target(backup_schedule="daily")
    new_auth_config = converged_facts(t) | {frontdoor.AUTH_CONFIG_FILE: file_fact("old", group="mlflow", mode="640")}
    no_certificate = converged_facts(t) | {frontdoor.TLS_STATE: ""}
    old_timer = converged_facts(scheduled) | {f.file_content(tracking.BACKUP_TIMER): file_fact("[Timer]\n")}
    return [(t, new_auth_config), (t, no_certificate), (scheduled, converged_facts(t)), (scheduled, old_timer)]


def test_rewording_every_step_changes_no_decision_of_setup_tracking(reworded):
    before = [tracking.plan(t, Facts(facts)) for t, facts in tracking_scenarios()]
    restart, nginx, timer = f"restart {tracking.UNIT}", f"file {frontdoor.NGINX_CONFIG}", "backup timer"
    named = [{step.name: step for step in steps} for steps in before]
    assert named[0][restart].summary == "because auth config changed"
    assert named[1][nginx].changed and "certificate changed" in named[1][nginx].summary
    assert named[2][timer].changed and named[3][timer].changed and "restart mlflow-backup.timer" in named[3][timer].script
    reworded()
    after = [tracking.plan(t, Facts(facts)) for t, facts in tracking_scenarios()]
    assert after[0][0].name.startswith("reworded: ")
    assert [decisions(steps) for steps in after] == [decisions(steps) for steps in before]


def test_rewording_changes_no_decision_of_a_deploy_or_the_key_upload(artifact, reworded, tmp_path):  # noqa: F811
    model = model_host()
    facts = Facts(served_facts(model, Deployment("wine", artifact, sample="{}"), "r1"))
    (tmp_path / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    (tmp_path / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\nK\n-----END PRIVATE KEY-----\n")
    t = target(tls_certificate=str(tmp_path / "cert.pem"), tls_key=str(tmp_path / "key.pem"))
    door = frontdoor.FrontDoor(t.host, t.address)

    def decide():
        plan = plan_deploy(model, new_deployment(artifact), facts)
        return decisions(plan.steps), plan.upload is not None, frontdoor.key_to_upload(frontdoor.certificate_steps(door, ""))

    before = decide()
    assert before[1:] == (True, True)
    reworded()
    assert decide() == before


def test_no_code_finds_a_step_by_its_label_or_its_position():
    label = re.compile(r"\.name\s*(==|!=)\s*f?[\"']|\.name\.(startswith|endswith)\(|\b(step|each|made|failed)\.name\s+in\b")
    position = re.compile(r"\bsteps\[-?\d+\]|\bsteps\.index\([^)]*\)\s*[<>]")
    found = [f"{path.relative_to(TASKS)}:{number}: {line.strip()}" for path in sorted(TASKS.rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1) if label.search(line) or position.search(line)]
    assert found == []
