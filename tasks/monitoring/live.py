"""Each model's live figures over the last 5 minutes, read from a monitor host's Prometheus (its recording rules of the
balancers' request metrics, or of the model hosts' own with no balancer in front): what `fab status` shows beside the hosts."""

from __future__ import annotations

import json
import shlex

from tasks.ops import facts as f

# column -> the recording rule (templates/prometheus/mlflow-fab-rules.yml.j2) it shows
FIGURES = {"requests/s": "model:requests:rate5m", "errors": "model:errors:ratio5m", "p99": "model:latency_seconds:p99_5m"}


def figures_fact(port: int) -> f.Fact[dict[str, dict[str, str]]]:
    """One line per figure: the column, a tab, Prometheus' answer (JSON), asked on the monitor host itself."""
    lines = [f"printf '%s\\t%s\\n' {shlex.quote(column)} \"$(curl -s --max-time 5 -G --data-urlencode {shlex.quote('query=' + rule)} "
             f"http://127.0.0.1:{port}/api/v1/query)\"" for column, rule in FIGURES.items()]
    return f.Fact("model_figures", "\n".join(lines), parse_figures)


def shown(column: str, value: float) -> str:
    if value != value:  # NaN: no request in the window
        return "-"
    if column == "errors":
        return f"{value:.1%}"
    if column == "p99":
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f}"


def parse_figures(text: str) -> dict[str, dict[str, str]]:
    """model -> column -> the figure as shown; empty when Prometheus did not answer."""
    figures: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        column, _, answer = line.partition("\t")
        try:
            results = json.loads(answer)["data"]["result"]
        except (ValueError, KeyError, TypeError):
            continue
        for result in results:
            model = result.get("metric", {}).get("model")
            if model and column in FIGURES:
                figures.setdefault(model, {})[column] = shown(column, float(result["value"][1]))
    return figures
