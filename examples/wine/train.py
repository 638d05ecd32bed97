"""The wine-quality ElasticNet of MLflow's tutorial: train, log params and RMSE, log the model with an input example."""

import argparse
from importlib.metadata import version

import mlflow
import pandas as pd
from sklearn.linear_model import ElasticNet
from sklearn.metrics import mean_squared_error
from sklearn.model_selection import train_test_split

parser = argparse.ArgumentParser()
parser.add_argument("--alpha", type=float, default=0.5)
parser.add_argument("--l1-ratio", type=float, default=0.1)
parser.add_argument("--data", default="wine-quality.csv")
args = parser.parse_args()

data = pd.read_csv(args.data)
train, test = train_test_split(data, random_state=42)
features = [column for column in data.columns if column != "quality"]
model = ElasticNet(alpha=args.alpha, l1_ratio=args.l1_ratio, random_state=42).fit(train[features], train["quality"])
rmse = mean_squared_error(test["quality"], model.predict(test[features])) ** 0.5
print(f"ElasticNet(alpha={args.alpha}, l1_ratio={args.l1_ratio}): RMSE {rmse:.4f}")

# `mlflow run` has started the run and passes its id in MLFLOW_RUN_ID: this joins it
with mlflow.start_run():
    mlflow.log_params({"alpha": args.alpha, "l1_ratio": args.l1_ratio})
    mlflow.log_metric("rmse", rmse)
    # the packages of this env, pinned, so the model's env is the one it was trained in
    requirements = [f"{name}=={version(name)}" for name in ("mlflow", "numpy", "pandas", "scikit-learn", "scipy", "skops")]
    mlflow.sklearn.log_model(model, name="model", input_example=train[features].head(3), pip_requirements=requirements)
