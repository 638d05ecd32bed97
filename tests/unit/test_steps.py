import base64
import subprocess

from tasks.ops.facts import Fact, FileState, gather_script, parse_facts, parse_file
from tasks.ops.files import ensure_directory, ensure_file, ensure_secret_file
from tasks.ops.steps import Step, StepStream, apply_script
from tasks.ops.system import ensure_packages


def test_facts_round_trip_through_markers():
    assert parse_facts("\n@@fact a\none\ntwo\n\n@@fact b\n") == {"a": "one\ntwo", "b": ""}


def test_facts_run_at_once_and_come_back_in_order_each_on_its_own():
    facts = [Fact("slow", "sleep 0.3; echo one; echo two"), Fact("fails", "echo partial; ls /no/such/path; false"),
             Fact("moves", "cd / && pwd"), Fact("where", "pwd"), Fact("quoted", "printf '%s\\n' \"it's\"")]
    result = subprocess.run(["bash", "-c", gather_script(facts)], cwd="/tmp", capture_output=True, text=True, check=True)
    assert parse_facts(result.stdout) == {"slow": "one\ntwo", "fails": "partial", "moves": "/", "where": "/tmp", "quoted": "it's"}
    assert result.stderr == ""


def test_file_fact_parsing():
    assert parse_file("") == FileState(exists=False)
    text = "root root 644\n" + base64.b64encode(b"hello\n").decode()
    assert parse_file(text) == FileState(True, "root", "root", "644", "hello\n")


def test_file_step_diff_and_metadata():
    current = FileState(True, "root", "root", "644", "a\nb\n")
    assert not ensure_file("/x", "a\nb\n", current).changed
    step = ensure_file("/x", "a\nc\n", current)
    assert step.changed and "-b\n+c\n" in step.diff
    mode_only = ensure_file("/x", "a\nb\n", current, mode="600")
    assert mode_only.changed and mode_only.diff == "" and "644 -> root:root 600" in mode_only.summary


def test_directory_and_secret_file_steps():
    assert not ensure_directory("/d", "mlflow", "mlflow", "750", "mlflow mlflow 750\n").changed
    assert ensure_directory("/d", "mlflow", "mlflow", "750", "").summary.startswith("create")
    assert ensure_secret_file("/s", "mlflow", "", "GEN").script == "GEN"
    assert "chmod 640" in ensure_secret_file("/s", "mlflow", "root root 644", "GEN").script
    assert not ensure_secret_file("/s", "mlflow", "root mlflow 640", "GEN").changed


def test_packages_install_only_missing():
    assert not ensure_packages(["a", "b"], {"a", "b"}).changed
    step = ensure_packages(["a", "b"], {"a"})
    assert step.summary == "install b" and "apt-get install -y -q --no-install-recommends b" in step.script
    assert "apt-get update" in step.script


def test_apply_script_runs_only_changed_steps_and_stops_at_failure():
    steps = [Step.ok("a", ""), Step.change("b", "", "echo b"), Step.change("c", "", "echo c")]
    script = apply_script(steps)
    assert "echo b" in script and "echo c" in script and "@@step-begin 0" not in script
    assert script.index("@@step-begin 1") < script.index("@@step-begin 2")
    assert "[ $rc -eq 0 ] || exit $rc" in script


def test_step_stream_reports_each_step_with_its_output():
    steps = [Step.change("b", "", "x"), Step.change("c", "", "y")]
    done = []
    stream = StepStream(steps, done.append, "prod1")
    stream.write("\n@@step-begin 0\nhello\n@@step-end 0 0\n\n@@step-be")
    stream.write("gin 1\nboom\n@@step-end 1 3\n")
    assert done == steps
    assert (steps[0].failed, steps[0].output) == (False, "hello")
    assert (steps[1].failed, steps[1].output) == (True, "boom")
