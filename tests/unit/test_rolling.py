"""Batches and locks, and the rolling deploy itself run against fake hosts (tests/unit/fake_remote.py): which host
switches when, what the balancer is told, what a failure, a held lock, a hung host or Ctrl-C leaves behind."""

import base64
import json
import re
import signal
import threading

import pytest
from fabric import Config
from invoke.exceptions import Exit

from tasks.inventory import load_inventory
from tasks.ops.lock import Lock, acquire_script, holder_message, release_script
from tasks.serving import rolling
from tasks.serving.deploy import Deployment, HostDeploy, HostRollback, upload_path
from tasks.serving.rolling import PlanError, RollingOptions, plan_batches
from tests.unit.fake_remote import FakeFleet, FakeHost, wire_names
from tests.unit.test_models_plan import artifact, model_host, served_facts  # noqa: F401  (artifact is a fixture)
from tests.unit.test_tracking_plan import DEBIAN

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


def entries(role: str, prefix: str, subnet: int, count: int) -> str:
    return "".join(f'[hosts.{prefix}{n}]\naddress = "10.0.{subnet}.{n}"\nroles = ["{role}"]\n' for n in range(1, count + 1))


# two lb hosts in front of four model hosts serving one model
# the wheelhouse has its own tests (test_wheelhouse.py): these hosts build envs from PyPI
INVENTORY = "[defaults]\nwheelhouse = false\n[lb]\ntls = false\nauth = false\n[models.wine]\nport = 5001\n" + entries("lb", "lb", 0, 2) + entries("models", "m", 1, 4)
MODELS = ["m1", "m2", "m3", "m4"]
LOCK = Lock(id="lock-1", by="ann@laptop", pid=42, what="deploy runs:/abc/model as wine", at=0)


@pytest.fixture
def inventory(tmp_path):
    path = tmp_path / "hosts.toml"
    path.write_text(INVENTORY)
    return load_inventory(path)


@pytest.fixture
def deployment(artifact):  # noqa: F811
    return Deployment("wine", artifact, sample="{}", stamp="20261126T120000Z", by="ann@laptop")


def serving_r1(deployment: Deployment) -> dict[str, str]:
    """A host serving release r1 (deployed after r0) of another digest: a deploy stages and switches a new release."""
    facts = wire_names(served_facts(model_host(), deployment, "r1"))
    facts["releases"] = "r0\t{}\nr1\t" + json.dumps({"digest": "other"})
    facts["history"] = facts["history"].replace('"r1"', '"r0"', 1) + "\n" + facts["history"]
    return facts | {"os": DEBIAN}


def fleet_of(deployment: Deployment, **scripted: FakeHost) -> FakeFleet:
    """Every models host serving r1, except those scripted otherwise; lb hosts answer every drain."""
    return FakeFleet({name: scripted.get(name) or FakeHost(facts=serving_r1(deployment)) for name in MODELS})


def roll(inventory, fleet, make, hosts=MODELS, check=False, **options) -> dict:
    """rolling() over fake hosts; the per-host deploys by name."""
    made = {}

    def make_deploy(remote, report):
        made[report.host] = make(remote, report)
        return made[report.host]

    rolling.rolling(Config(), inventory, [inventory.hosts[name] for name in hosts], make_deploy, RollingOptions(**options), check,
                    "wine", connect=fleet)
    return made


def deploying(deployment):
    return lambda remote, report: HostDeploy(remote, report, "wine", LOCK, deployment=deployment, tarball=b"model")


def outcomes(made: dict) -> dict[str, str]:
    return {name: deploy.outcome for name, deploy in made.items()}


def drains(fleet: FakeFleet, lb: str) -> list[set[str]]:
    """The model hosts marked down in each config the balancer wrote on lb host LB, in order."""
    addresses = {f"10.0.1.{n}": f"m{n}" for n in range(1, 5)}
    seen = []
    for sent in fleet.sent(lb):
        configs = [base64.b64decode(blob).decode() for blob in re.findall(r"echo ([A-Za-z0-9+/=]+) \| base64 -d", sent.script)]
        seen.append({addresses[address] for config in configs for address in re.findall(r"server ([\d.]+):\d+ [^;]* down;", config)})
    return seen


def switched(fleet: FakeFleet) -> list[str]:
    return [name for name, step in fleet.log if step == "switch"]


def test_a_deploy_sends_each_host_gather_lock_stage_switch_unlock(inventory, deployment):
    fleet = fleet_of(deployment)
    made = roll(inventory, fleet, deploying(deployment), hosts=["m1"])
    release = deployment.release
    assert fleet.steps("m1") == ["gather facts", "lock", f"release {release}", "switch", "unlock"]
    assert fleet.hosts["m1"].uploads == [upload_path(release)]
    unlock = fleet.sent("m1")[-1].script
    assert release_script("wine", LOCK) in unlock and '"action": "deploy"' in unlock and '"result": "updated"' in unlock
    assert outcomes(made) == {"m1": "updated"} and made["m1"].serving == release and made["m1"].previous == "r1"


def test_check_mode_only_gathers_facts(inventory, deployment):
    fleet = fleet_of(deployment)
    made = roll(inventory, fleet, deploying(deployment), check=True)
    assert {name: fleet.steps(name) for name in MODELS} == {name: ["gather facts"] for name in MODELS}
    assert set(outcomes(made).values()) == {"checked"} and fleet.sent("lb1") == []


def test_the_canary_goes_alone_then_batches_each_drained_from_every_lb_host_and_put_back(inventory, deployment):
    fleet = fleet_of(deployment)
    made = roll(inventory, fleet, deploying(deployment), canary=1, batch_size="2")
    assert set(outcomes(made).values()) == {"updated"}
    first_batch = [fleet.first(name, "switch") for name in ("m2", "m3")]
    assert fleet.first("m1", "switch") < min(first_batch) and max(first_batch) < fleet.first("m4", "switch")
    for lb in ("lb1", "lb2"):
        assert drains(fleet, lb) == [{"m1"}, set(), {"m2", "m3"}, set(), {"m4"}, set()]
    # a batch is drained everywhere before its hosts switch, and back only after they have
    for lb in ("lb1", "lb2"):
        drained, undrained = [at for at, command in enumerate(fleet.log) if command == (lb, "balancer")][:2]
        assert drained < fleet.first("m1", "switch") < undrained


def test_preflight_touches_no_traffic_and_a_host_already_serving_the_release_is_not_switched(inventory, deployment):
    done = FakeHost(facts=served_facts(model_host(), deployment, "r1") | {"os": DEBIAN})
    fleet = fleet_of(deployment, m2=done)
    made = roll(inventory, fleet, deploying(deployment))
    assert outcomes(made) == {"m1": "updated", "m2": "unchanged", "m3": "updated", "m4": "updated"}
    assert fleet.steps("m2") == ["gather facts"], "no lock, no switch on a host that already serves the release"
    assert {"m2"} not in drains(fleet, "lb1")


def failing_switch(deployment) -> FakeHost:
    """A host whose switch to the new release fails (its gate, say): it goes back to r1 by itself."""
    return FakeHost(facts=serving_r1(deployment), fail=f"ln -sfn releases/{deployment.release} ")


def test_a_failed_switch_rolls_that_host_back_and_the_failure_budget_stops_the_deploy(inventory, deployment):
    fleet = fleet_of(deployment, m2=failing_switch(deployment))
    made = roll(inventory, fleet, deploying(deployment))
    assert outcomes(made) == {"m1": "updated", "m2": "rolled back", "m3": "untouched", "m4": "untouched"}
    assert made["m2"].serving == "r1" and "back to r1, which passed its gate" in made["m2"].report.error
    assert switched(fleet) == ["m1", "m2"], "no host switched after the budget (0) was spent"
    assert drains(fleet, "lb1") == [{"m1"}, set(), {"m2"}, set()]
    assert all(fleet.steps(name)[-1] == "unlock" for name in MODELS), "every host's lock is released"
    assert '"result": "rolled back"' in fleet.sent("m2")[-1].script and "mlflow-fab/deploys.jsonl" not in fleet.sent("m3")[-1].script


def test_max_failures_lets_the_deploy_go_on(inventory, deployment):
    fleet = fleet_of(deployment, m2=failing_switch(deployment))
    made = roll(inventory, fleet, deploying(deployment), max_failures=1)
    assert outcomes(made) == {"m1": "updated", "m2": "rolled back", "m3": "updated", "m4": "updated"}


def test_rollback_all_takes_every_updated_host_back_when_the_budget_is_spent(inventory, deployment):
    fleet = fleet_of(deployment, m3=failing_switch(deployment))
    made = roll(inventory, fleet, deploying(deployment), rollback_all=True)
    assert outcomes(made) == {"m1": "rolled back", "m2": "rolled back", "m3": "rolled back", "m4": "untouched"}
    assert switched(fleet) == ["m1", "m2", "m3", "m1", "m2"]
    assert all(made[name].serving == "r1" for name in ("m1", "m2", "m3"))
    assert drains(fleet, "lb1")[-4:] == [{"m1"}, set(), {"m2"}, set()]


def test_a_held_lock_fails_that_host_in_preflight_and_no_traffic_moves(inventory, deployment):
    locked = FakeHost(facts=serving_r1(deployment), lock_held=True)
    fleet = fleet_of(deployment, m3=locked)
    made = roll(inventory, fleet, deploying(deployment))
    assert made["m3"].outcome == "failed" and "locked by deploy of bob@desk (pid 7)" in made["m3"].report.error
    assert fleet.steps("m3") == ["gather facts", "lock"], "nothing staged, and the other deploy's lock is not removed"
    assert switched(fleet) == [] and fleet.sent("lb1") == []
    assert all(fleet.steps(name)[-1] == "unlock" for name in ("m1", "m2", "m4"))


def test_an_unreachable_host_in_preflight_counts_against_the_budget(inventory, deployment):
    fleet = fleet_of(deployment, m4=FakeHost(unreachable=True))
    made = roll(inventory, fleet, deploying(deployment), max_failures=1)
    assert outcomes(made) == {"m1": "updated", "m2": "updated", "m3": "updated", "m4": "unreachable"}
    assert made["m4"].report.unreachable and "skipped: preflight failed (allowed by --max-failures)" in made["m4"].report.notes


def test_a_rollback_serves_the_previous_release_again(inventory, deployment):
    fleet = fleet_of(deployment)
    made = roll(inventory, fleet, lambda remote, report: HostRollback(remote, report, "wine", LOCK), hosts=["m1", "m2"])
    assert {name: (deploy.outcome, deploy.serving) for name, deploy in made.items()} == {"m1": ("updated", "r0"), "m2": ("updated", "r0")}
    assert fleet.steps("m1") == ["gather facts", "lock", "switch", "unlock"] and '"action": "rollback"' in fleet.sent("m1")[-1].script


class Announcements:
    """rolling's console, noting when the deploy says it waits for the hosts still working after a Ctrl-C."""

    def __init__(self, console):
        self.console, self.waiting = console, threading.Event()

    def print(self, text, *args, **kwargs):
        if "to finish what they started" in str(text):
            self.waiting.set()
        self.console.print(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.console, name)


@pytest.fixture
def ctrl_c(monkeypatch):
    """SIGINT as a terminal sends it to fab, delivered to the main thread while a host's switch runs; that switch
    ends only once the deploy announced it waits for it."""
    announcements = Announcements(rolling.console)
    monkeypatch.setattr(rolling, "console", announcements)
    interrupted = threading.Event()

    def handler(signum, frame):
        interrupted.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    main = threading.main_thread().ident

    def press(remote, step, script):
        if step == "switch":
            signal.pthread_kill(main, signal.SIGINT)
            assert interrupted.wait(10), "the main thread never got the SIGINT"
            announcements.waiting.wait(10)

    yield press, announcements.waiting
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_mid_batch_lets_the_switch_in_flight_settle_and_switches_no_further_host(inventory, deployment, ctrl_c):
    press, waited = ctrl_c
    fleet = fleet_of(deployment, m2=FakeHost(facts=serving_r1(deployment), on_command=press))
    made = {}
    with pytest.raises(Exit) as stopped:
        made = roll(inventory, fleet, lambda remote, report: made.setdefault(report.host, deploying(deployment)(remote, report)))
    assert stopped.value.code == 130 and waited.is_set()
    assert outcomes(made) == {"m1": "updated", "m2": "updated", "m3": "untouched", "m4": "untouched"}
    assert switched(fleet) == ["m1", "m2"] and drains(fleet, "lb1")[-1] == set()
    assert all(fleet.steps(name)[-1] == "unlock" for name in MODELS) and '"result": "updated"' in fleet.sent("m2")[-1].script


def deploy_past_its_deadline(monkeypatch, inventory, deployment, unlock_reaches_the_host: bool):
    """m1 stops answering while it stages, after it took the lock; it may still answer a new connection."""
    monkeypatch.setattr(rolling, "PREFLIGHT_TIMEOUT", 0.2)

    def goes_away(remote, step, script):
        if step.startswith("release "):
            remote.fake.unreachable = not unlock_reaches_the_host

    hung = FakeHost(facts=serving_r1(deployment), hang="release ", on_command=goes_away)
    fleet = fleet_of(deployment, m1=hung)
    (deploy,) = roll(inventory, fleet, deploying(deployment), hosts=["m1"]).values()
    assert hung.hang_ended.wait(10)
    return fleet, deploy


def test_a_host_past_its_deadline_is_abandoned_and_its_lock_released_over_a_new_connection(monkeypatch, inventory, deployment):
    fleet, deploy = deploy_past_its_deadline(monkeypatch, inventory, deployment, unlock_reaches_the_host=True)
    assert deploy.outcome == "unreachable" and deploy.report.timed_out and deploy.remote.abandoned
    assert fleet.steps("m1") == ["gather facts", "lock", f"release {deployment.release}", "unlock"]
    assert fleet.sent("m1")[-1].script == release_script("wine", LOCK), "the lock stayed"
    assert fleet.remotes[-1] is not deploy.remote and switched(fleet) == []
    assert "this deploy's lock /run/lock/mlflow-fab/model-wine.lock released over a new connection" in deploy.report.notes


def test_a_lock_that_cannot_be_released_is_named_with_how_to_remove_it(monkeypatch, inventory, deployment):
    fleet, deploy = deploy_past_its_deadline(monkeypatch, inventory, deployment, unlock_reaches_the_host=False)
    assert fleet.steps("m1") == ["gather facts", "lock", f"release {deployment.release}"] and deploy.outcome == "unreachable"
    assert deploy.report.error.startswith("no answer within 0 s: the host stopped responding")
    assert "lock /run/lock/mlflow-fab/model-wine.lock may still be held there (id lock-1)" in deploy.report.error
    assert "rerun with --break-lock, or run `rm -f /run/lock/mlflow-fab/model-wine.lock` on it" in deploy.report.error
