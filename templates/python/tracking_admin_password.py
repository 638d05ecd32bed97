"""Set the auth tables' admin password to the secrets file's, when the admin exists. Run with the server's env and
MLFLOW_AUTH_CONFIG_PATH.

Usage: python - ENV_FILE ADMIN
"""

import os
import sys

from mlflow.server.auth.config import read_auth_config
from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

env_file, admin = sys.argv[1:]
values = dict(line.rstrip("\n").split("=", 1) for line in open(env_file) if "=" in line)
os.environ.update(values)  # PGPASSWORD, for a database reached over the network
store = SqlAlchemyStore()
store.init_db(read_auth_config().database_uri)
if store.has_user(admin):
    store.update_user(admin, password=values["MLFLOW_AUTH_ADMIN_PASSWORD"])
    print("admin password set from the secrets file")
