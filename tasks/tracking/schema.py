"""The tracking database's schema: which revision it has, and which MLflow version an env runs.

Each value is a piece of shell or Python that runs on the host, with the tracking server's env. Migrating the
schema and comparing a backup's version with the server's are Python programs in templates/python.
"""

from __future__ import annotations

# The tracking server's PostgreSQL database (its owner role is also called mlflow).
DATABASE = "mlflow"

# The alembic revision of the tracking database.
SCHEMA = f"cd / && runuser -u postgres -- psql -tAX -d {DATABASE} -c 'select version_num from alembic_version'"

# The MLflow version of the env a python runs in, without importing mlflow (seconds).
ENV_VERSION = "-c 'from importlib.metadata import version; print(version(\"mlflow\"))'"
