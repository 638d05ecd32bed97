"""The tracking server's secrets as ENV_FILE.new (0600): values already in ENV_FILE are kept, missing ones generated.
With sign-in on, also the admin's curl config as ADMIN_CURL.new (0600). The caller moves them into place.

Usage: python3 - ENV_FILE DATABASE [ADMIN_CURL ADMIN]
"""

import os
import secrets
import sys

env_file, database, *auth = sys.argv[1:]
values = {}
if os.path.exists(env_file):
    for line in open(env_file):
        key, sep, value = line.rstrip("\n").partition("=")
        if sep:
            values[key] = value
password = values.setdefault("MLFLOW_DB_PASSWORD", secrets.token_urlsafe(32))
values["MLFLOW_BACKEND_STORE_URI"] = f"postgresql+psycopg2://mlflow:{password}@127.0.0.1:5432/{database}"
if auth:
    values.setdefault("MLFLOW_AUTH_ADMIN_PASSWORD", secrets.token_urlsafe(32))
    values.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))


def write(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, text.encode())
    os.close(fd)


write(f"{env_file}.new", "".join(f"{key}={value}\n" for key, value in values.items()))
if auth:
    admin_curl, admin = auth
    write(f"{admin_curl}.new", f'user = "{admin}:{values["MLFLOW_AUTH_ADMIN_PASSWORD"]}"\n')
