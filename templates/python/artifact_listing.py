"""Every object of the artifact store under its prefix, as `KEY<TAB>SIZE<TAB>ETAG` lines on stdout (sorted by key): what a
backup records of artifacts that stay in the bucket. Given such a listing, compares it with the bucket instead: objects
it lists that are missing, or whose size or ETag differ, are what the restored runs would miss (exit 3 unless accepted).
Run as the server's user; the store's keys come from the server's secrets file.

Usage: python - ENV_FILE s3://BUCKET[/PREFIX] [LISTING_FD accept|refuse]   (LISTING_FD: an open file descriptor of the listing)
"""

import os
import sys

env_file, artifacts, *compare = sys.argv[1:]
os.environ.update(line.rstrip("\n").split("=", 1) for line in open(env_file) if "=" in line)

import boto3  # noqa: E402 -- after the environment holds the store's keys

bucket, _, prefix = artifacts[len("s3://"):].partition("/")
s3 = boto3.client("s3", endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None)
pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else "")
stored = {item["Key"]: (item["Size"], item["ETag"].strip('"')) for page in pages for item in page.get("Contents", [])}
if not compare:
    for key, (size, etag) in sorted(stored.items()):
        print(f"{key}\t{size}\t{etag}")
    print(f"{len(stored)} objects, {sum(size for size, _ in stored.values())} bytes in {artifacts}", file=sys.stderr)
    sys.exit(0)

listing, mode = compare
listed = {key: (int(size), etag) for key, size, etag in (line.rstrip("\n").split("\t") for line in os.fdopen(int(listing)) if line.strip())}
missing = sorted(key for key in listed if key not in stored)
changed = sorted(key for key in listed if key in stored and stored[key] != listed[key])
later = len(set(stored) - set(listed))
print(f"artifacts: the backup lists {len(listed)} objects; {len(listed) - len(missing) - len(changed)} are in {artifacts} as listed, "
      f"{len(missing)} missing, {len(changed)} changed since; {later} more were written after the backup (no restored run refers to them)")
for kind, keys in (("missing", missing), ("changed", changed)):
    for key in keys[:10]:
        print(f"  {kind}: s3://{bucket}/{key}")
    if len(keys) > 10:
        print(f"  ... and {len(keys) - 10} more {kind}")
if (missing or changed) and mode != "accept":
    print("the restored runs would refer to artifacts the bucket no longer holds as they were: recover them from the bucket's "
          "object versions (with versioning on), or pass --accept-missing-artifacts to restore anyway; nothing was changed")
    sys.exit(3)
