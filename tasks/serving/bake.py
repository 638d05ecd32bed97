"""A canary judged by its live traffic: after the canary hosts switched, passed their gates and are back in the balancer,
their own answers at the balancers are watched for --bake seconds, read straight from each lb host's model log (exact,
and needing no monitor host), and compared with --max-error-rate and --max-p99.

Runbook this replaces: deploy one server, watch the dashboards or tail the load balancer's log for a while, decide by eye.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from tasks.ops.remote import HostError, Remote
from tasks.ops.steps import Step, apply
from tasks.serving.balancer import REQUESTS_LOG
from tasks.templates import render_script

DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s)?")
ANSWER = re.compile(r"^(\d{3}) (\d+(?:\.\d+)?)$", re.MULTILINE)


class BakeError(ValueError):
    """A bad --bake, --max-error-rate or --max-p99."""


def error_rate(text: str) -> float:
    """'1%' or '0.01' -> 0.01."""
    text = str(text).strip()
    try:
        rate = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise BakeError(f"--max-error-rate {text!r}: give a percentage (1%) or a fraction (0.01)") from None
    if not 0 <= rate < 1:
        raise BakeError(f"--max-error-rate {text!r}: between 0% and 100%")
    return rate


def seconds(text: str) -> float:
    """'250ms', '0.25s' or '0.25' -> 0.25."""
    match = DURATION.fullmatch(str(text).strip())
    if not match or float(match.group(1)) <= 0:
        raise BakeError(f"--max-p99 {text!r}: give a duration (250ms, 1.5s)")
    return float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)


def share(text: str) -> Fraction | None:
    """--canary-weight '10%' or '0.1' -> 1/10 of the traffic; '' -> None (the canary's plain share)."""
    text = str(text).strip()
    if not text:
        return None
    try:
        value = Fraction(text[:-1]) / 100 if text.endswith("%") else Fraction(text)
    except ValueError:
        raise BakeError(f"--canary-weight {text!r}: give a percentage (10%) or a fraction (0.1)") from None
    if not 0 < value < 1:
        raise BakeError(f"--canary-weight {text!r}: more than 0% and less than 100%")
    return value.limit_denominator(1000)


def weights(canary: set[str], hosts: list[str], traffic: Fraction) -> dict[str, int]:
    """nginx weights giving the canary hosts together that share of the traffic and the other hosts the rest, each
    group split evenly: canary c hosts of weight a, o others of weight b with c*a / (c*a + o*b) = share."""
    others = [host for host in hosts if host not in canary]
    if not canary or not others:
        return {}
    canary_weight, other_weight = traffic * len(others), (1 - traffic) * len(canary)
    scale = math.lcm(canary_weight.denominator, other_weight.denominator)
    a, b = int(canary_weight * scale), int(other_weight * scale)
    divisor = math.gcd(a, b)
    return {host: (a if host in canary else b) // divisor for host in hosts}


@dataclass(frozen=True)
class BakeLimits:
    seconds: float
    max_error_rate: float
    max_p99: float
    # the canary's share of the traffic while it bakes (nginx weights); None: its plain share
    canary_share: Fraction | None = None

    def describe(self) -> str:
        return f"error rate <= {self.max_error_rate:.1%}, p99 <= {self.max_p99 * 1000:.0f} ms"


@dataclass(frozen=True)
class Verdict:
    passed: bool
    summary: str


def failed(status: int) -> bool:
    """An answer the model did not give: a 5xx, or MLflow's scoring server's 400 for a model that raised."""
    return status >= 500 or status == 400


def judge(answers: list[tuple[int, float]], limits: BakeLimits) -> Verdict:
    """The canary's answers (status, seconds) against the limits; no answer at all can't be judged, so it fails."""
    if not answers:
        return Verdict(False, f"no request reached the canary in {limits.seconds:g} s: it can't be judged (send traffic, or deploy without --bake)")
    errors = sum(1 for status, _ in answers if failed(status))
    times = sorted(duration for _, duration in answers)
    p99 = times[math.ceil(0.99 * len(times)) - 1]
    rate = errors / len(answers)
    measured = f"{len(answers)} requests in {limits.seconds:g} s, error rate {rate:.1%} ({errors}), p99 {p99 * 1000:.0f} ms"
    breaches = [f"error rate {rate:.1%} > {limits.max_error_rate:.1%}"] if rate > limits.max_error_rate else []
    breaches += [f"p99 {p99 * 1000:.0f} ms > {limits.max_p99 * 1000:.0f} ms"] if p99 > limits.max_p99 else []
    if breaches:
        return Verdict(False, f"canary failed its bake: {'; '.join(breaches)} ({measured})")
    return Verdict(True, f"canary passed its bake: {measured} ({limits.describe()})")


def parse_answers(output: str) -> list[tuple[int, float]]:
    return [(int(status), float(duration)) for status, duration in ANSWER.findall(output)]


class Bake:
    """Where each lb host's model log is when the bake starts; then the canary's answers written after that point."""

    def __init__(self, balancers: list[Remote], model: str, limits: BakeLimits):
        self.balancers, self.model, self.limits = balancers, model, limits
        self.offsets: dict[str, int] = {}

    def _run(self, remote: Remote, name: str, summary: str, script: str) -> str:
        step = Step.change(name, summary, script)
        apply(remote, [step], lambda done: None)
        if step.failed:
            raise HostError(name, f"{remote.host.name}: {step.output.strip()[-300:] or 'failed'}")
        return step.output

    def start(self) -> None:
        """Every lb host's log size now; a host whose log can't be read stops the bake before it judges anything."""
        for remote in self.balancers:
            output = self._run(remote, "bake start", f"where {REQUESTS_LOG} ends now",
                               f"test -r {REQUESTS_LOG} || {{ echo 'no {REQUESTS_LOG}: run fab setup-lb'; exit 1; }}\nstat -c %s {REQUESTS_LOG}")
            sizes = [line for line in output.split() if line.isdigit()]
            if not sizes:
                raise HostError("bake start", f"{remote.host.name}: cannot read the size of {REQUESTS_LOG}")
            self.offsets[remote.host.name] = int(sizes[-1])

    def verdict(self, upstreams: list[str]) -> Verdict:
        """The canary's answers on every lb host since start() (the server that answered last is the canary)."""
        answers: list[tuple[int, float]] = []
        for remote in self.balancers:
            script = render_script("bake-answers.sh.j2", log=REQUESTS_LOG, offset=self.offsets[remote.host.name], model=self.model,
                                   upstreams=upstreams)
            answers += parse_answers(self._run(remote, "bake answers", f"the canary's answers in {REQUESTS_LOG}", script))
        return judge(answers, self.limits)
