"""The host-side switch script, run here with stand-in steps, and the outcome the laptop reads back."""

import json
import subprocess

import pytest

from tasks.ops.steps import Step
from tasks.serving import switch as model_switch
from tasks.serving.switch import Outcome, Transaction, parse_outcome, render_script, start_script


@pytest.fixture
def switch_root(tmp_path, monkeypatch):
    monkeypatch.setattr(model_switch, "SWITCH_ROOT", str(tmp_path / "switch"))
    return tmp_path


def run_locally(transaction: Transaction) -> tuple[dict, str]:
    """Run the rendered script with bash as the transient unit would; return its outcome file and log."""
    directory = transaction.directory
    subprocess.run(["mkdir", "-p", directory], check=True)
    subprocess.run(["bash", "-c", render_script(transaction)], check=True, timeout=30)
    with open(f"{directory}/outcome.json") as outcome, open(f"{directory}/log") as log:
        return json.load(outcome), log.read()


def transaction(tmp_path, forward: list[str], back: list[str], served: str = "r1") -> Transaction:
    return Transaction(
        "wine", "r2", served,
        forward=[Step.change(f"forward {i}", "", script) for i, script in enumerate(forward)],
        back=[Step.change(f"back {i}", "", script) for i, script in enumerate(back)],
        history=str(tmp_path / "history.jsonl"),
        forward_record='{"at": "@@at@@", "action": "deploy", "release": "r2"}',
        back_record='{"at": "@@at@@", "action": "rollback", "release": "r1"}',
    )


def history(tmp_path) -> list[dict]:
    path = tmp_path / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_switch_that_passes_records_the_release_with_the_hosts_time(switch_root):
    outcome, log = run_locally(transaction(switch_root, ["echo switched", "true"], ["echo never"]))
    assert outcome == {"outcome": "updated", "serving": "r2"}
    assert [entry["release"] for entry in history(switch_root)] == ["r2"]
    assert history(switch_root)[0]["at"].endswith("+00:00") and "@@" not in history(switch_root)[0]["at"]
    assert "never" not in log and log.rstrip().endswith('@@switch-outcome {"outcome": "updated", "serving": "r2"}')


def test_any_failing_step_goes_back_and_records_nothing_of_the_failed_release(switch_root):
    outcome, log = run_locally(transaction(switch_root, ["true", "false", "echo skipped"], ["echo going back", "true"]))
    assert outcome == {"outcome": "rolled back", "serving": "r1"}
    assert [entry["release"] for entry in history(switch_root)] == ["r1"]
    assert "@@step-end 1 1" in log and "skipped" not in log and "going back" in log


def test_set_e_holds_inside_every_step(switch_root):
    outcome, log = run_locally(transaction(switch_root, ["false\necho after a failed command"], ["true"]))
    assert outcome["outcome"] == "rolled back" and "after a failed command" not in log


def test_a_failing_way_back_is_reported_as_failed(switch_root):
    outcome, _ = run_locally(transaction(switch_root, ["false"], ["false"]))
    assert outcome == {"outcome": "failed", "serving": ""}
    assert history(switch_root) == []


def test_with_nothing_served_before_the_way_back_stops_and_serves_nothing(switch_root):
    outcome, _ = run_locally(transaction(switch_root, ["false"], ["true"], served=""))
    assert outcome == {"outcome": "stopped", "serving": ""}


def test_the_laptop_starts_a_unit_that_outlives_its_connection(switch_root):
    script = start_script(transaction(switch_root, ["true"], ["true"]))
    command = next(line for line in script.splitlines() if line.startswith("systemd-run"))
    assert "--collect" in command and "RuntimeMaxSec=300" in command
    assert "--pipe" not in command and "--pty" not in command and "--wait" not in command
    assert subprocess.run(["bash", "-n", "-c", script]).returncode == 0


def test_outcome_parsing():
    output = 'noise\n@@switch-outcome {"outcome": "rolled back", "serving": "r1"}\n'
    assert parse_outcome(output) == Outcome("rolled back", "r1")
    assert parse_outcome("the connection ended before the outcome") == Outcome("lost")
    assert parse_outcome("@@switch-outcome {broken") == Outcome("lost")
