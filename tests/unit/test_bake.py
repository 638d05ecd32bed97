"""The canary judged by its live traffic (--bake): the verdict from the balancer's log, and the rolling deploy on fake
hosts passing the canary on, or rolling it back with no other host touched."""

from fractions import Fraction

import pytest

from tasks.serving.bake import BakeError, BakeLimits, error_rate, judge, parse_answers, seconds, share, weights
from tests.unit.fake_remote import FakeHost
from tests.unit.test_models_plan import artifact  # noqa: F401  (a fixture)
from tests.unit.test_rolling import deploying, deployment, fleet_of, inventory, outcomes, roll, switched  # noqa: F401

LIMITS = BakeLimits(0.01, 0.01, 0.25)


def test_limits_are_read_as_people_write_them():
    assert error_rate("1%") == 0.01 and error_rate("0.5") == 0.5 and seconds("250ms") == 0.25 and seconds("1.5s") == 1.5
    for bad in ("x", "100%", "-1%"):
        with pytest.raises(BakeError, match="--max-error-rate"):
            error_rate(bad)
    with pytest.raises(BakeError, match="--max-p99"):
        seconds("fast")


def test_the_verdict_counts_5xx_and_the_model_raising_as_errors_and_takes_the_p99():
    passed = judge([(200, 0.010)] * 99 + [(401, 0.001)], LIMITS)
    assert passed.passed and "100 requests" in passed.summary and "error rate 0.0%" in passed.summary
    raised = judge([(200, 0.010)] * 95 + [(400, 0.002)] * 5, LIMITS)
    assert not raised.passed and "error rate 5.0% > 1.0%" in raised.summary
    slow = judge([(200, 0.010)] * 98 + [(200, 0.900)] * 2, LIMITS)
    assert not slow.passed and "p99 900 ms > 250 ms" in slow.summary
    assert not judge([], LIMITS).passed and "no request reached the canary" in judge([], LIMITS).summary
    assert parse_answers("200 0.004\nnoise\n502 1.5\n") == [(200, 0.004), (502, 1.5)]


def balancers(answers: str, **more) -> dict:
    """Both lb hosts: the log's size when the bake starts, then the canary's answers since."""
    return {lb: FakeHost(prints={"stat -c %s": "4096", "awk -v model": answers}, **more) for lb in ("lb1", "lb2")}


def test_a_canary_that_passes_its_bake_lets_the_deploy_go_on(inventory, deployment):  # noqa: F811
    fleet = fleet_of(deployment)
    fleet.hosts.update(balancers("200 0.004\n200 0.020"))
    made = roll(inventory, fleet, deploying(deployment), canary=1, batch_size="3", bake=LIMITS)
    assert set(outcomes(made).values()) == {"updated"}
    answers = [sent.script for sent in fleet.sent("lb1") if "awk -v model" in sent.script]
    assert len(answers) == 1 and "for upstream in 10.0.1.1:5001;" in answers[0] and "from=4096" in answers[0]
    assert fleet.log.index(("lb1", "bake answers")) < fleet.first("m2", "switch"), "the other hosts wait for the verdict"


def test_a_canary_that_breaches_is_rolled_back_and_no_other_host_is_touched(inventory, deployment):  # noqa: F811
    fleet = fleet_of(deployment)
    fleet.hosts.update(balancers("200 0.004\n400 0.003\n502 0.010"))
    made = roll(inventory, fleet, deploying(deployment), canary=1, bake=LIMITS)
    assert outcomes(made) == {"m1": "rolled back", "m2": "untouched", "m3": "untouched", "m4": "untouched"}
    assert switched(fleet) == ["m1", "m1"] and made["m1"].serving == "r1"
    assert "canary failed its bake: error rate 66.7% > 1.0%" in made["m1"].report.error


def test_a_balancer_log_that_cannot_be_read_stops_the_deploy_before_the_first_switch(inventory, deployment):  # noqa: F811
    fleet = fleet_of(deployment)
    fleet.hosts.update(balancers("", fail="stat -c %s"))
    made = roll(inventory, fleet, deploying(deployment), canary=1, bake=LIMITS)
    assert switched(fleet) == [] and set(outcomes(made).values()) == {"untouched"}
    assert all("--bake can't read the balancer's log" in deploy.report.error for deploy in made.values())


def test_a_canary_weight_is_a_share_of_the_traffic_given_as_nginx_weights():
    assert share("10%") == Fraction(1, 10) and share("0.25") == Fraction(1, 4) and share("") is None
    for bad in ("0%", "100%", "ten", "1.5"):
        with pytest.raises(BakeError, match="--canary-weight"):
            share(bad)
    assert weights({"m1"}, ["m1", "m2"], Fraction(1, 10)) == {"m1": 1, "m2": 9}
    assert weights({"m1"}, ["m1", "m2", "m3", "m4"], Fraction(1, 2)) == {"m1": 3, "m2": 1, "m3": 1, "m4": 1}
    spread = weights({"m1", "m2"}, ["m1", "m2", "m3", "m4"], Fraction(1, 4))
    assert spread == {"m1": 1, "m2": 1, "m3": 3, "m4": 3} and (spread["m1"] + spread["m2"]) / sum(spread.values()) == 0.25
    assert weights({"m1"}, ["m1"], Fraction(1, 10)) == {}, "a canary of every host has the whole traffic anyway"



def test_a_canary_weight_without_a_bake_is_refused_before_anything_is_read():
    from invoke.exceptions import Exit

    from tasks.cli.serving import bake_limits

    with pytest.raises(Exit) as refused:
        bake_limits(None, 0, "1%", "250ms", 1, "10%")
    assert refused.value.code == 2 and "give --bake SECONDS too" in refused.value.message


def balancer_configs(fleet, lb: str) -> list[str]:
    """The upstream lines of each model config a deploy wrote on this lb host, in order."""
    import base64
    import re

    configs = [base64.b64decode(match).decode() for sent in fleet.sent(lb) for match in re.findall(r"echo ([A-Za-z0-9+/=]{40,}) \| base64 -d", sent.script)]
    return [" | ".join(line.strip() for line in config.splitlines() if line.strip().startswith("server 10.")) for config in configs]


def test_a_weighted_canary_gets_its_share_while_it_bakes_then_every_host_its_plain_share(inventory, deployment):  # noqa: F811
    fleet = fleet_of(deployment)
    fleet.hosts.update(balancers("200 0.004\n200 0.020"))
    weighted = BakeLimits(0.01, 0.01, 0.25, Fraction(1, 10))
    made = roll(inventory, fleet, deploying(deployment), canary=1, batch_size="3", bake=weighted)
    assert set(outcomes(made).values()) == {"updated"}
    configs = balancer_configs(fleet, "lb1")
    during = next(config for config in configs if "weight=" in config)
    assert "10.0.1.1:5001 weight=1 " in during and "10.0.1.2:5001 weight=3 " in during, during  # 1 / (1 + 3 * 3): 10 %
    assert configs.index(during) < len(configs) - 1 and "weight=" not in configs[configs.index(during) + 1], "weights back to even after the bake"
    assert fleet.log.index(("lb1", "bake answers")) < fleet.first("m2", "switch")


def test_a_weighted_canary_that_breaches_is_rolled_back_with_the_weights_taken_off(inventory, deployment):  # noqa: F811
    fleet = fleet_of(deployment)
    fleet.hosts.update(balancers("502 0.004"))
    made = roll(inventory, fleet, deploying(deployment), canary=1, bake=BakeLimits(0.01, 0.01, 0.25, Fraction(1, 10)))
    assert outcomes(made) == {"m1": "rolled back", "m2": "untouched", "m3": "untouched", "m4": "untouched"}
    assert "weight=" not in balancer_configs(fleet, "lb2")[-1]


def test_the_canarys_answers_are_read_after_the_offset_under_every_address_its_name_resolves_to(tmp_path):
    import subprocess

    from tasks.templates import render_script
    from tasks.values import address_port

    log = tmp_path / "mlflow-models.log"
    before = 'wine 502 0.100 "127.0.0.1:5001"\n'
    log.write_text(before + 'wine 200 0.004 "127.0.0.1:5001"\n'
                   'wine 400 0.002 "10.0.0.6:5001, 127.0.0.1:5001"\n'  # retried: the canary answered last
                   'wine 200 0.010 "127.0.0.1:5001, 10.0.0.6:5001"\n'  # retried away from the canary
                   'iris 200 0.001 "127.0.0.1:5001"\n'
                   'wine 200 0.003 "[fd00::1]:5001"\n')
    script = render_script("bake-answers.sh.j2", log=str(log), offset=len(before), model="wine",
                           upstreams=[address_port("localhost", 5001), address_port("fd00::1", 5001)])
    answers = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    assert parse_answers(answers) == [(200, 0.004), (400, 0.002), (200, 0.003)]
