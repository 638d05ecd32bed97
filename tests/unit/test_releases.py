import json

from tasks.serving.history import history_entry, parse_history, parse_releases, previous_release, release_stack, releases_to_prune


def entry(action, release, previous=""):
    return json.loads(history_entry(action, release, previous, "me@laptop", "2026-11-26T10:00:00+00:00"))


def test_deploys_push_and_rollbacks_pop():
    history = [entry("deploy", "A"), entry("deploy", "B", "A"), entry("deploy", "C", "B")]
    assert release_stack(history) == ["A", "B", "C"] and previous_release(history) == "B"
    history.append(entry("rollback", "B", "C"))
    assert release_stack(history) == ["A", "B"] and previous_release(history) == "A"
    history.append(entry("rollback", "A", "B"))
    assert previous_release(history) == ""


def test_redeploying_an_old_digest_does_not_confuse_rollback():
    # A, B, then A's digest again (reusing release A): the previous is B, not what directory order says
    history = [entry("deploy", "A"), entry("deploy", "B", "A"), entry("deploy", "A", "B")]
    assert previous_release(history) == "B"


def test_rollback_to_a_release_not_in_the_stack_makes_it_current():
    history = [entry("deploy", "B"), entry("rollback", "A", "B")]
    assert release_stack(history) == ["A"]


def test_prune_keeps_current_previous_and_most_recent():
    history = [entry("deploy", name) for name in ("r1", "r2", "r3", "r4")] + [entry("rollback", "r3", "r4")]
    releases = ["r1", "r2", "r3", "r4", "r5"]
    assert releases_to_prune(releases, history, "r3", keep=2) == ["r1", "r4", "r5"]
    assert releases_to_prune(releases, history, "r3", keep=10) == []
    # keep=1 still keeps the previous release so a rollback is always possible
    assert "r2" not in releases_to_prune(releases, history, "r3", keep=1)


def test_parsers_skip_garbage():
    assert parse_history('{"action": "deploy", "release": "A"}\nnot json\n') == [{"action": "deploy", "release": "A"}]
    releases = parse_releases('A\t{"digest": "d1", "env_hash": "e"}\nB\t\n')
    assert list(releases) == ["A"] and releases["A"].digest == "d1"
