"""Before a replica's server (re)starts: the shared database answers and holds MLflow's tables (made once, under a lock
every replica takes, when the database is new), and the S3 store takes, returns and deletes an object with these keys.
Run as the server's user, with MLFLOW_AUTH_CONFIG_PATH when auth is on; the server's environment comes from ENV_FILE.

Usage: python - ENV_FILE ARTIFACTS PROBE_KEY   (ARTIFACTS: s3://BUCKET[/PREFIX] or a path; PROBE_KEY: this host's object name)
"""

import os
import sys

env_file, artifacts, probe_key = sys.argv[1:]
os.environ.update(line.rstrip("\n").split("=", 1) for line in open(env_file) if "=" in line)
# One number for "MLflow's schema is being made": the replicas take turns.
SCHEMA_LOCK = 7_305_301


def fail(message):
    print(message)
    sys.exit(1)


def check_database():
    import sqlalchemy

    uri = os.environ["MLFLOW_BACKEND_STORE_URI"]
    engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool, connect_args={"connect_timeout": 10})
    try:
        connection = engine.connect()
    except sqlalchemy.exc.OperationalError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        fail(f"the database {engine.url.host}:{engine.url.port} does not answer as {engine.url.username}: {reason}")
    with connection:
        connection.execute(sqlalchemy.text(f"SELECT pg_advisory_lock({SCHEMA_LOCK})"))
        try:
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            # the root the server gives new experiments when it proxies artifacts: clients never see the store's own URI
            SqlAlchemyStore(uri, "mlflow-artifacts:/")
            if os.environ.get("MLFLOW_AUTH_CONFIG_PATH"):
                from mlflow.server.auth.config import read_auth_config
                from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore as AuthStore

                auth_uri = read_auth_config().database_uri
                schema = sqlalchemy.engine.make_url(auth_uri).query.get("options", "").rpartition("=")[2]
                if schema:
                    connection.execute(sqlalchemy.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
                    connection.commit()
                AuthStore().init_db(auth_uri)
        finally:
            connection.execute(sqlalchemy.text(f"SELECT pg_advisory_unlock({SCHEMA_LOCK})"))
    print(f"database {engine.url.host}:{engine.url.port}/{engine.url.database}: answers, MLflow's tables present")


def check_s3():
    import boto3
    import botocore.config
    import botocore.exceptions

    bucket, _, prefix = artifacts[len("s3://"):].partition("/")
    key = "/".join(part for part in (prefix, ".mlflow-fab", probe_key) if part)
    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None
    config = botocore.config.Config(connect_timeout=10, read_timeout=20, retries={"max_attempts": 2})
    s3 = boto3.client("s3", endpoint_url=endpoint, config=config)
    where = f"s3://{bucket}/{key}" + (f" at {endpoint}" if endpoint else "")
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=b"mlflow-fab preflight")
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        s3.delete_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        advice = {"InvalidAccessKeyId": "the access key is not known there: check s3_credentials_file",
                  "SignatureDoesNotMatch": "the secret key is wrong: check s3_credentials_file",
                  "AccessDenied": "these keys may not write there: check the bucket's policy",
                  "NoSuchBucket": f"there is no bucket {bucket}: create it first"}.get(code, "")
        fail(f"the S3 store refused a write, read and delete of {where}: {code or error}" + (f" ({advice})" if advice else ""))
    except botocore.exceptions.BotoCoreError as error:
        fail(f"the S3 store does not answer for {where}: {error}")
    if body != b"mlflow-fab preflight":
        fail(f"the S3 store returned other bytes than it was given for {where}")
    print(f"artifacts {artifacts}: write, read and delete work with these keys")


check_database()
if artifacts.startswith("s3://"):
    check_s3()
