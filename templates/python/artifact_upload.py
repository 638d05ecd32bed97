"""Copy a directory of artifacts into the S3 store under its prefix, each file checked after the copy (same size, and the
ETag the store gives back equal to the file's MD5), and print what was copied. Run as the server's user; the store's keys
come from the server's secrets file.

Usage: python - ENV_FILE DIRECTORY s3://BUCKET[/PREFIX]
"""

import hashlib
import os
import sys
from pathlib import Path

env_file, directory, artifacts = sys.argv[1:]
os.environ.update(line.rstrip("\n").split("=", 1) for line in open(env_file) if "=" in line)

import boto3  # noqa: E402 -- after the environment holds the store's keys

bucket, _, prefix = artifacts[len("s3://"):].partition("/")
s3 = boto3.client("s3", endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None)
root = Path(directory)
count = size = 0
for path in sorted(item for item in root.rglob("*") if item.is_file() and not item.is_symlink()):
    key = "/".join(part for part in (prefix, path.relative_to(root).as_posix()) if part)
    data = path.read_bytes()
    digest = hashlib.md5(data).hexdigest()
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    stored = s3.head_object(Bucket=bucket, Key=key)
    if stored["ContentLength"] != len(data) or stored["ETag"].strip('"') != digest:
        sys.exit(f"s3://{bucket}/{key}: the store holds {stored['ContentLength']} bytes, ETag {stored['ETag']}; "
                 f"the file has {len(data)} bytes, MD5 {digest}")
    count, size = count + 1, size + len(data)
print(f"artifacts: {count} files, {size} bytes copied to {artifacts}, each checked (size and MD5)")
