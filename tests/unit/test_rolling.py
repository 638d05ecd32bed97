import pytest

from tasks.ops.lock import Lock, acquire_script, holder_message, release_script
from tasks.rolling import PlanError, plan_batches

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
