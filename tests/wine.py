"""The classic MLflow example: an ElasticNet on the wine-quality data, logged with an input example.

Used by the demo, the integration tests and the benchmarks:
    python -m tests.wine --tracking-uri http://HOST:5000 [--alpha 0.5] [--l1-ratio 0.5]
prints the run id.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data" / "wine-quality.csv"


def pinned_requirements() -> list[str]:
    """What the model needs, pinned to this machine's versions (inference would also pick up pytest and rich)."""
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in ("mlflow", "numpy", "pandas", "scikit-learn", "scipy", "skops")]


def log_wine_model(tracking_uri: str, alpha: float = 0.5, l1_ratio: float = 0.5, experiment: str = "wine-quality",
                   extra_requirements: tuple[str, ...] = ()) -> str:
    import mlflow
    import pandas as pd
    from sklearn.linear_model import ElasticNet
    from sklearn.metrics import mean_squared_error
    from sklearn.model_selection import train_test_split

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    data = pd.read_csv(DATA)
    train, test = train_test_split(data, random_state=42)
    features = [column for column in data.columns if column != "quality"]
    model = ElasticNet(alpha=alpha, l1_ratio=l1_ratio, random_state=42).fit(train[features], train["quality"])
    rmse = mean_squared_error(test["quality"], model.predict(test[features])) ** 0.5
    with mlflow.start_run() as run:
        mlflow.log_params({"alpha": alpha, "l1_ratio": l1_ratio})
        mlflow.log_metric("rmse", rmse)
        mlflow.sklearn.log_model(model, name="model", input_example=train[features].head(3), pip_requirements=pinned_requirements() + list(extra_requirements))
    return run.info.run_id


def log_flaky_model(tracking_uri: str, experiment: str = "wine-quality") -> str:
    """tests/monitoring/flaky_model.py, with the wine model's requirements (the same env on the hosts) and input example."""
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    example = pd.read_csv(DATA).drop(columns="quality").head(3)
    with mlflow.start_run() as run:
        mlflow.pyfunc.log_model(name="model", python_model=str(Path(__file__).with_name("monitoring") / "flaky_model.py"),
                                input_example=example, pip_requirements=pinned_requirements())
    return run.info.run_id


def main() -> None:
    parser = argparse.ArgumentParser(description="log the wine-quality ElasticNet model")
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--l1-ratio", type=float, default=0.5)
    args = parser.parse_args()
    print(log_wine_model(args.tracking_uri, args.alpha, args.l1_ratio))


if __name__ == "__main__":
    main()
