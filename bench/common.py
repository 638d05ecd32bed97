"""Shared bits of the benchmarks: run `fab` as a user would and time it, wall clock included start-up."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FAB = Path(sys.executable).with_name("fab")


def timed_fab(inventory: Path, *args: str) -> tuple[float, int, str]:
    """(seconds, remote commands, output) of one `fab` run; exits loudly if the run failed."""
    env = {**os.environ, "FABRIC_INVENTORY": str(inventory), "MLFLOW_FAB_COUNT_COMMANDS": "1"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # a user's installs keep compiled modules: time what they run
    started = time.perf_counter()
    result = subprocess.run([str(FAB), *args], cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"fab {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}")
    commands = sum(int(n) for n in re.findall(r"remote_commands=(\d+)", result.stdout))
    return seconds, commands, result.stdout


def summary(label: str, seconds: list[float], commands: list[int]) -> str:
    return (
        f"{label:<38} median {statistics.median(seconds):7.2f} s   min {min(seconds):7.2f}   max {max(seconds):7.2f}"
        f"   runs {len(seconds)}   remote commands {statistics.median(commands):g}"
    )
