import json, sys
from packaging.version import InvalidVersion, Version
backup = str(json.load(open(sys.argv[1])).get("mlflow", "unknown")).strip()
try:
    ours, theirs = Version(sys.argv[2]), Version(backup)
except InvalidVersion:
    print("unknown", backup)
else:
    print("same" if theirs == ours else "older" if theirs < ours else "newer", backup)
