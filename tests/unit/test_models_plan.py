import base64
import dataclasses
import json
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tasks.inventory import Host, ModelSettings
from tasks.ops import facts as f
from tasks.ops.facts import Facts
from tasks.ops.health import SKIPPED, HttpCheck, gate_script, probe_healthy
from tasks.ops.remote import PRIVATE_DIRECTORY
from tasks.serving import deploy
from tasks.serving.deploy import (
    MODEL_CONFIG_DIR,
    Deployment,
    ModelHost,
    answers_logrotate,
    answers_script,
    env_spec,
    port_conflict,
    python_mismatch,
    release_state,
    render_unit,
    serving_note,
)
from tasks.serving.history import history_entry
from tasks.serving.source import ModelArtifact, ModelError, content_digest, model_uri
from tasks.templates import render

REQUIREMENTS = "mlflow==3.17.2\nnumpy==2.4.6\nscikit-learn==1.9.1"


@pytest.fixture
def artifact(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "MLmodel").write_text("run_id: abc\n")
    (model / "requirements.txt").write_text(REQUIREMENTS)
    (model / "python_env.yaml").write_text("python: 3.11.7\nbuild_dependencies: [pip]\n")
    return ModelArtifact("runs:/abc/model", "abc", model, content_digest(model))


def model_host(**settings):
    host = Host(name="m1", address="10.0.0.7", roles=("models",), user="deploy", models={"": ModelSettings(**settings)})
    return ModelHost(SimpleNamespace(host=host), "wine")


def file_fact(content):
    return "root root 644\n" + base64.b64encode(content.encode()).decode()


def served_facts(model, deployment, release) -> dict:
    """What a host serving RELEASE of the deployment answers, by fact."""
    spec = env_spec(model.settings, deployment.artifact, "3.11")
    env = spec.path("/opt/mlflow/envs", "model")
    manifest = {"digest": deployment.artifact.digest, "env_hash": spec.digest}
    facts = {
        deploy.INSTALLED_PACKAGES: "python3-venv ii\ncurl ii\nca-certificates ii\niproute2 ii\nlogrotate ii",
        deploy.MODEL_USER_EXISTS: "997",
        deploy.HOST_PYTHON: "3.11",
        model.releases_fact: f"{release}\t{json.dumps(manifest)}",
        model.current_fact: release,
        model.history_fact: history_entry("deploy", release, "", "me", "t"),
        deploy.ENV_MARKERS: f"{Path(env).name}\t{spec.text}",
        deploy.ENVS: Path(env).name,
        deploy.ENV_LINKS: f"{model.releases_dir}/{release}/env {env}",
        deploy.UNIT_TEMPLATE_FILE: file_fact(render_unit()),
        deploy.ANSWERS_SCRIPT_FILE: file_fact(answers_script()),
        deploy.ANSWERS_LOGROTATE_FILE: file_fact(answers_logrotate()),
        model.env_file_fact: file_fact(render("model.env.j2", name="wine", port=5001, workers=1)),
        model.service_fact: "ActiveState=active\nUnitFileState=enabled\nMainPID=77",
        model.probe_fact: "/ping 200\n/invocations 200",
    }
    for path, owner, group, mode in model.directories():
        facts[f.path_stat(path)] = f"{owner} {group} {mode}"
    return facts


def plan_deploy(model, deployment, facts: dict):
    return deploy.plan_deploy(model, deployment, Facts(facts))


def plan_rollback(model, facts: dict, to: str, by: str):
    return deploy.plan_rollback(model, Facts(facts), to, by)


def served_release(model, facts: dict, releases: dict) -> str:
    return deploy.served_release(model, Facts(facts), releases)


def changed(steps):
    return [step.name for step in steps if step.changed]


def test_same_digest_already_serving_is_a_no_op(artifact):
    model = model_host()
    deployment = Deployment("wine", artifact, sample="{}")
    plan = plan_deploy(model, deployment, served_facts(model, deployment, "r1"))
    assert plan.release == "r1" and changed(plan.steps) == [] and not plan.changes_anything


def test_new_model_same_requirements_reuses_the_env(artifact, tmp_path):
    model = model_host()
    old = Deployment("wine", artifact, sample="{}")
    facts = served_facts(model, old, "r1")
    (artifact.local_dir / "model.skops").write_bytes(b"new weights")
    new_artifact = ModelArtifact(artifact.uri, "def", artifact.local_dir, content_digest(artifact.local_dir))
    new = Deployment("wine", new_artifact, sample="{}", stamp="20261126T120000Z")
    plan = plan_deploy(model, new, facts)
    release = plan.release
    assert release == new.release
    assert changed(plan.stage) == [f"release {release}"]
    assert changed(plan.switch) == ["switch current", "restart mlflow-model@wine", "health gate"]
    upload = next(step for step in plan.stage if step.name == f"release {release}")
    assert f"tar -xzf {PRIVATE_DIRECTORY}/{release}.tgz" in upload.script and "mv -T" in upload.script
    assert "a+r" not in upload.script and "chmod -R u=rwX,g=rX,o= " in upload.script


def test_an_older_digest_still_on_the_host_is_switched_to_without_upload(artifact):
    model = model_host()
    deployment = Deployment("wine", artifact, sample="{}")
    facts = served_facts(model, deployment, "r1")
    facts[model.current_fact] = "r2"
    facts[model.releases_fact] += "\nr2\t" + json.dumps({"digest": "other"})
    plan = plan_deploy(model, deployment, facts)
    assert plan.release == "r1"
    assert changed(plan.stage) == [] and "switch current" in changed(plan.switch)


def test_changed_requirements_build_a_new_env(artifact):
    model = model_host()
    deployment = Deployment("wine", artifact, sample="{}")
    facts = served_facts(model, deployment, "r1")
    (artifact.local_dir / "requirements.txt").write_text(REQUIREMENTS + "\nskops==0.16.0")
    new = Deployment("wine", ModelArtifact(artifact.uri, "x", artifact.local_dir, content_digest(artifact.local_dir)), sample="{}")
    plan = plan_deploy(model, new, facts)
    env = next(step for step in plan.stage if step.name == "python env")
    assert env.changed and "pip install" in env.script and "skops==0.16.0" in env.script


def test_port_taken_by_another_model_is_refused_before_any_change(artifact):
    model = model_host()
    deployment = Deployment("wine", artifact, sample="{}")
    facts = served_facts(model, deployment, "r1") | {deploy.PORTS: f"{MODEL_CONFIG_DIR}/iris.env:PORT=5001"}
    steps = plan_deploy(model, deployment, facts).steps
    assert len(steps) == 1 and steps[0].failed and "model iris already uses port 5001" in steps[0].summary
    assert port_conflict("wine", 5001, f"{MODEL_CONFIG_DIR}/wine.env:PORT=5001") == ""


def test_rollback_plan(artifact):
    model = model_host()
    facts = {
        model.releases_fact: "r1\t{}\nr2\t{}",
        model.current_fact: "r2",
        model.history_fact: history_entry("deploy", "r1", "", "me", "t") + "\n" + history_entry("deploy", "r2", "r1", "me", "t"),
        model.service_fact: "ActiveState=active\nUnitFileState=enabled\nMainPID=77",
        model.running_fact: "r2",
    }
    steps = plan_rollback(model, facts, "", "me").steps
    assert changed(steps) == ["switch current", "health gate"] and "r2 -> r1" in steps[0].summary
    assert plan_rollback(model, facts, "r9", "me").failed
    assert plan_rollback(model, facts | {model.history_fact: ""}, "", "me").steps[0].summary.startswith("no earlier release")
    assert not plan_rollback(model, facts, "r2", "me").changes_anything


def test_model_inputs(artifact):
    assert artifact.requirements == REQUIREMENTS.split("\n")
    assert artifact.python_version == "3.11"
    assert python_mismatch(artifact, "3.12").startswith("warning: the model was trained on Python 3.11")
    assert python_mismatch(artifact, "3.11") == ""
    assert model_uri("abc", None) == "runs:/abc/model"
    with pytest.raises(ModelError):
        model_uri("abc", "models:/x/1")
    conda = env_spec(ModelSettings(env_manager="conda"), artifact, "3.12")
    assert conda.python == "3.11" and conda.manager == "conda"


def test_tarball_holds_the_model_and_the_sample(artifact):
    import io
    import tarfile

    names = tarfile.open(fileobj=io.BytesIO(Deployment("wine", artifact, sample='{"inputs": []}').tarball())).getnames()
    assert "model/MLmodel" in names and "sample.json" in names


def run_gate(checks, tmp_path, main_pid: int = 0, listeners: tuple[int, ...] = (), timeout: int = 5) -> tuple[subprocess.CompletedProcess, list[str]]:
    """The gate script with a fake curl (answers 200 with a prediction, records its arguments), a running unit whose
    main process is MAIN_PID, and ss naming LISTENERS as the processes on the port."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "curl").write_text('#!/bin/bash\necho "$*" >> "$CALLS"\nwhile [ $# -gt 0 ]; do [ "$1" = -o ] && echo \'{"predictions": [5]}\' > "$2"; shift; done\necho -n 200\n')
    (bin_dir / "systemctl").write_text(f'#!/bin/bash\ncase "$*" in *ActiveState*) echo active;; *MainPID*) echo {main_pid};; *) echo 0;; esac\n')
    users = ",".join(f'("server",pid={pid},fd=3)' for pid in listeners)
    (bin_dir / "ss").write_text(f"#!/bin/bash\necho 'LISTEN 0 2048 0.0.0.0:5001 0.0.0.0:* users:({users})'\n" if listeners else "#!/bin/bash\n")
    (bin_dir / "journalctl").write_text("#!/bin/bash\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    calls = tmp_path / "calls"
    calls.unlink(missing_ok=True)
    script = gate_script("mlflow-model@wine", 5001, checks, timeout, after_restart=True)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls)}
    ran = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    return ran, calls.read_text().splitlines()


def test_the_gate_passes_only_when_the_units_own_process_answers(tmp_path):
    main = subprocess.Popen(["bash", "-c", "sleep 60 & wait"])  # the unit's main process, its server a child
    stranger = subprocess.Popen(["sleep", "61"])  # a process the unit did not start: left over from a stop, or run by hand
    try:
        children = Path(f"/proc/{main.pid}/task/{main.pid}/children")
        deadline = time.monotonic() + 10
        while not children.read_text().split() and time.monotonic() < deadline:
            time.sleep(0.01)
        server = int(children.read_text().split()[0])
        ran, _ = run_gate([HttpCheck("/ping")], tmp_path, main_pid=main.pid, listeners=(main.pid, server))
        assert ran.returncode == 0 and "healthy: /ping answered 200" in ran.stdout
        ran, _ = run_gate([HttpCheck("/ping")], tmp_path, main_pid=main.pid, listeners=(server, stranger.pid), timeout=2)
        assert ran.returncode == 1
        assert f"port 5001 is answered by a process mlflow-model@wine did not start: {stranger.pid} (sleep 61 )" in ran.stdout
    finally:
        for process in (main, stranger):
            process.kill()
            process.wait()


def test_a_release_without_a_sample_request_is_gated_on_ping_alone(tmp_path):
    ping, invocations = model_host().health_checks
    assert invocations.needs_file == "/opt/mlflow/models/wine/current/sample.json" and not ping.needs_file
    sample = tmp_path / "sample.json"
    checks = [ping, dataclasses.replace(invocations, needs_file=str(sample), curl_args=f"-X POST --data-binary @{sample}")]
    ran, calls = run_gate(checks, tmp_path)
    output = ran.stdout
    assert f"/invocations skipped (no {sample})" in output and len(calls) == 1 and calls[0].endswith("/ping")
    assert probe_healthy(f"/ping 200\n/invocations {SKIPPED}", checks)
    sample.write_text('{"inputs": [[1]]}')
    ran, calls = run_gate(checks, tmp_path)
    assert "/ping answered 200, /invocations answered 200" in ran.stdout and f"--data-binary @{sample}" in calls[1]


def new_deployment(artifact):
    (artifact.local_dir / "model.skops").write_bytes(b"new weights")
    return Deployment("wine", ModelArtifact(artifact.uri, "def", artifact.local_dir, content_digest(artifact.local_dir)), sample="{}",
                      stamp="20261126T120000Z")


def test_a_failed_switch_goes_back_to_what_served_and_only_a_passed_gate_is_recorded(artifact):
    model = model_host()
    facts = served_facts(model, Deployment("wine", artifact, sample="{}"), "r1")
    plan = plan_deploy(model, new_deployment(artifact), facts)
    transaction = plan.transaction
    assert plan.served == "r1" and transaction.forward is plan.switch
    assert [step.name for step in transaction.back] == ["roll back", "health gate"]
    assert "releases/r1" in transaction.back[0].script and "systemctl start mlflow-model@wine" in transaction.back[0].script
    record = json.loads(transaction.forward_record)
    assert (record["action"], record["release"], record["from"], record["at"]) == ("deploy", plan.release, "r1", "@@at@@")
    assert transaction.back_record == ""  # the history already says r1
    assert "history" not in "".join(step.script for step in plan.switch)
    assert transaction.deadline == 2 * 120 + 120


def test_a_first_deploy_that_fails_stops_disables_and_removes_current(artifact):
    model = model_host()
    facts = served_facts(model, Deployment("wine", artifact, sample="{}"), "r1")
    facts |= {model.current_fact: "", model.history_fact: "", model.service_fact: "ActiveState=inactive\nUnitFileState=disabled\nMainPID=0"}
    transaction = plan_deploy(model, new_deployment(artifact), facts).transaction
    assert transaction.served == "" and transaction.back_outcome == "stopped"
    [stop] = transaction.back
    assert "systemctl disable --now --quiet mlflow-model@wine" in stop.script and f"rm -f {model.current}" in stop.script


def test_a_process_running_another_release_than_current_is_restarted(artifact):
    model = model_host()
    deployment = Deployment("wine", artifact, sample="{}")
    facts = served_facts(model, deployment, "r1") | {model.running_fact: "r0"}
    facts[model.releases_fact] += "\nr0\t" + json.dumps({"digest": "older"})
    plan = plan_deploy(model, deployment, facts)
    assert plan.served == "r0" and plan.release == "r1"
    assert changed(plan.switch) == ["restart mlflow-model@wine", "health gate"]
    assert "because release changed" in plan.switch[2].summary
    assert [step.name for step in plan.transaction.back] == ["roll back", "health gate"] and "releases/r0" in plan.transaction.back[0].script
    assert plan.transaction.forward_record == ""  # the history already says r1


def test_served_release_trusts_the_process_and_falls_back_to_the_link():
    model = model_host()
    releases = {"r1": None, "r2": None}
    active = {model.service_fact: "ActiveState=active", model.current_fact: "r2"}
    assert served_release(model, active | {model.running_fact: "r1"}, releases) == "r1"
    assert served_release(model, active | {model.running_fact: ""}, releases) == "r2"
    assert served_release(model, active | {model.service_fact: "ActiveState=failed"}, releases) == ""


def test_release_states_say_what_serves():
    assert release_state("r1", served="r1", current="r2", previous="r0") == "current"
    assert release_state("r2", served="r1", current="r2", previous="r0") == "linked, not serving"
    model = model_host()
    assert serving_note(model, "", "r2") == "nothing serves: mlflow-model@wine is not active"
    assert "deploy again to repair" in serving_note(model, "r1", "r2")


def test_status_shows_the_release_the_process_runs_and_flags_a_mismatch():
    from tasks.overview.status import model_summary

    assert model_summary("wine active r1 r1\niris active r1 -") == ("wine: active r1\niris: active r1", True)
    cell, consistent = model_summary("wine active r2 r1")
    assert cell == "wine: active r1 (current links r2: deploy again)" and not consistent
    assert model_summary("wine failed r2 -")[1] is False
