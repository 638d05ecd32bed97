"""`mlflow db upgrade` of the shared database, once for every replica, with the new MLflow; the servers keep running.
Prints the schema revision before and after. Run as the server's user with the new env's python.

Usage: python - ENV_FILE
"""

import os
import sys

env_file = sys.argv[1]
os.environ.update(line.rstrip("\n").split("=", 1) for line in open(env_file) if "=" in line)

import sqlalchemy  # noqa: E402 -- after the environment holds the database's password
from mlflow.db import upgrade  # noqa: E402

uri = os.environ["MLFLOW_BACKEND_STORE_URI"]


def revision() -> str:
    engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as connection:
        return connection.execute(sqlalchemy.text("select version_num from alembic_version")).scalar() or ""


print(f"schema before: {revision()}")
upgrade.callback(uri)
print(f"schema after: {revision()}")
