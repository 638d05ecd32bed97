"""Every object of the artifact store under its prefix, as `KEY<TAB>SIZE<TAB>ETAG` lines on stdout (sorted by key): what a
backup records of artifacts that stay in the bucket, so a restore can tell whether anything a run references is missing.
Run as the server's user; the store's keys come from the server's secrets file.

Usage: python - ENV_FILE s3://BUCKET[/PREFIX]
"""

import os
import sys

env_file, artifacts = sys.argv[1:]
os.environ.update(line.rstrip("\n").split("=", 1) for line in open(env_file) if "=" in line)

import boto3  # noqa: E402 -- after the environment holds the store's keys

bucket, _, prefix = artifacts[len("s3://"):].partition("/")
s3 = boto3.client("s3", endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None)
pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else "")
count = size = 0
for page in pages:
    for item in page.get("Contents", []):
        print(f"{item['Key']}\t{item['Size']}\t{item['ETag'].strip(chr(34))}")
        count, size = count + 1, size + item["Size"]
print(f"{count} objects, {size} bytes in {artifacts}", file=sys.stderr)
