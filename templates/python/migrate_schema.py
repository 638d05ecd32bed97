import os
from mlflow.db import upgrade
upgrade.callback(os.environ["MLFLOW_BACKEND_STORE_URI"])
