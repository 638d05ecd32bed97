import threading
from types import SimpleNamespace

import pytest
from fabric import Config

from tasks.inventory import Host
from tasks.ops.lock import Lock, acquire_script, holder_message, release_script
from tasks.ops.remote import HostError
from tasks.serving import rolling
from tasks.serving.rolling import PlanError, plan_batches

HOSTS = ["a", "b", "c"]


def test_batches_of_one_by_default():
    assert plan_batches(HOSTS) == [["a"], ["b"], ["c"]]


def test_percentages_round_up():
    assert plan_batches(HOSTS, "50%") == [["a", "b"], ["c"]]
    assert plan_batches(HOSTS, "34%") == [["a", "b"], ["c"]]
    assert plan_batches(HOSTS, "33%") == [["a"], ["b"], ["c"]]
    assert plan_batches(HOSTS, "100%") == [HOSTS]
    assert plan_batches(["a"] * 10, "25%") == [["a"] * 3, ["a"] * 3, ["a"] * 3, ["a"]]


def test_canary_goes_first_alone():
    assert plan_batches(HOSTS, "2", canary=1) == [["a"], ["b", "c"]]
    assert plan_batches(HOSTS, "1", canary=3) == [HOSTS]
    assert plan_batches([], "2") == []


@pytest.mark.parametrize("size", ["0", "-1", "x", "0%", "150%"])
def test_bad_batch_sizes(size):
    with pytest.raises(PlanError, match="--batch-size"):
        plan_batches(HOSTS, size)


def test_lock_scripts_and_the_holder_message():
    lock = Lock(id="abc123", by="ann@laptop", pid=42, what="deploy runs:/r/model as wine", at=1_800_000_000)
    script = acquire_script("wine", lock, break_lock=False)
    assert "set -o noclobber" in script and "/run/lock/mlflow-fab/model-wine.lock" in script and "rm -f" not in script
    assert acquire_script("wine", lock, break_lock=True).count("rm -f /run/lock/mlflow-fab/model-wine.lock") == 1
    assert "grep -qF abc123" in release_script("wine", lock)
    message = holder_message("@@lock-held " + lock.to_json(), "wine", now=1_800_000_000 + 120)
    assert "locked by deploy of ann@laptop (pid 42)" in message and "2 min ago" in message and "--break-lock" in message
    assert "STALE" in holder_message("@@lock-held " + lock.to_json(), "wine", now=1_800_000_000 + 7200)



class FakeRemote:
    """A host over a fake connection: records each script sent; after abandon() nothing goes out, as with Remote."""

    def __init__(self, host, config):
        self.host, self.abandoned, self.commands_run = host, False, 0

    def run_script(self, script, step, **_):
        if self.abandoned or not self.reachable:
            raise HostError(step, "no connection", unreachable=True)
        self.sent.append(script)

    def abandon(self):
        self.abandoned = True

    def close(self):
        pass


class HangingDeploy:
    """A host that stops answering mid-preflight, after it took the lock; when it answers again, its work sends one more command."""

    def __init__(self, remote, report):
        self.remote, self.report, self.name = remote, report, report.host
        self.model = SimpleNamespace(name="wine")
        self.lock = Lock(id="lock-id-1", by="ann@laptop", pid=42, what="deploy", at=0)
        self.plan, self.previous, self.outcome, self.locked = SimpleNamespace(release="", touches_service=False), "", "untouched", False
        self.answers, self.ended = threading.Event(), threading.Event()

    def preflight(self):
        try:
            self.locked = True
            self.answers.wait(10)
            self.remote.run_script("echo staging", step="stage")
            self.outcome = "staged"
        finally:
            self.ended.set()


def deploy_past_its_deadline(monkeypatch, unlock_reaches_the_host: bool):
    monkeypatch.setattr(rolling, "Remote", FakeRemote)
    monkeypatch.setattr(rolling, "PREFLIGHT_TIMEOUT", 0.2)
    monkeypatch.setattr(FakeRemote, "sent", [], raising=False)
    monkeypatch.setattr(FakeRemote, "reachable", unlock_reaches_the_host, raising=False)
    made = []

    def make_deploy(remote, report):
        made.append(HangingDeploy(remote, report))
        return made[-1]

    host = Host(name="m1", address="10.0.0.7", roles=("models",))
    (report,) = rolling.rolling(Config(), SimpleNamespace(with_role=lambda role: []), [host], make_deploy, rolling.RollingOptions(), False, "wine")
    (deploy,) = made
    deploy.remote.reachable = True
    deploy.answers.set()
    assert deploy.ended.wait(10)
    return deploy, report


def test_a_host_past_its_deadline_is_abandoned_and_its_lock_released_over_a_new_connection(monkeypatch):
    deploy, report = deploy_past_its_deadline(monkeypatch, unlock_reaches_the_host=True)
    assert deploy.outcome == "unreachable" and report.timed_out and deploy.remote.abandoned
    assert FakeRemote.sent == [release_script("wine", deploy.lock)], "the abandoned work sent a command, or the lock stayed"
    assert "this deploy's lock /run/lock/mlflow-fab/model-wine.lock released over a new connection" in report.notes


def test_a_lock_that_cannot_be_released_is_named_with_how_to_remove_it(monkeypatch):
    deploy, report = deploy_past_its_deadline(monkeypatch, unlock_reaches_the_host=False)
    assert FakeRemote.sent == [] and deploy.outcome == "unreachable"
    assert report.error.startswith("no answer within 0 s: the host stopped responding")
    assert "lock /run/lock/mlflow-fab/model-wine.lock may still be held there (id lock-id-1)" in report.error
    assert "rerun with --break-lock, or run `rm -f /run/lock/mlflow-fab/model-wine.lock` on it" in report.error
