"""The tracking database's schema: which revision it has, migrating it, and whether a backup fits a server.

Each value is a piece of shell or Python that runs on the host, with the tracking server's env.
"""

from __future__ import annotations

# The tracking server's PostgreSQL database (its owner role is also called mlflow).
DATABASE = "mlflow"

# The alembic revision of the tracking database.
SCHEMA = f"cd / && runuser -u postgres -- psql -tAX -d {DATABASE} -c 'select version_num from alembic_version'"

# `mlflow db upgrade URL` without the password on a command line: the URL comes from MLFLOW_BACKEND_STORE_URI.
MIGRATE = """python - <<'PY'
import os
from mlflow.db import upgrade
upgrade.callback(os.environ["MLFLOW_BACKEND_STORE_URI"])
PY"""

# The MLflow version of the env a python runs in, without importing mlflow (seconds).
ENV_VERSION = "-c 'from importlib.metadata import version; print(version(\"mlflow\"))'"

# argv: a backup's manifest.json and the server's MLflow version. Prints the backup's version relative to the
# server's: `same V`, `older V`, `newer V`, or `unknown V` when the manifest has no version (the server was down).
VERSION_CHECK = """import json, sys
from packaging.version import InvalidVersion, Version
backup = str(json.load(open(sys.argv[1])).get("mlflow", "unknown")).strip()
try:
    ours, theirs = Version(sys.argv[2]), Version(backup)
except InvalidVersion:
    print("unknown", backup)
else:
    print("same" if theirs == ours else "older" if theirs < ours else "newer", backup)
"""
