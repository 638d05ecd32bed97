"""The host-wide guard over shared envs: model envs under /opt/mlflow/envs serve every model with the same
requirements, while deploy locks are per model, so one model's prune must never remove an env another deploy
is building or has built but not linked into a release yet.

A deploy pins the env it needs (one file per model under PINS, naming the env) while holding the guard shared,
then builds the env unless it is complete, one build of an env at a time. A prune holds the guard exclusively and
removes only the envs that, at that moment, no release links to and no pin names.
"""

from __future__ import annotations

from pathlib import Path

from tasks.ops.lock import LOCK_DIR
from tasks.ops.pyenv import EnvSpec, build_commands
from tasks.templates import render

GUARD = f"{LOCK_DIR}/envs.lock"
PINS = f"{LOCK_DIR}/env-pins"
BUILD_LOCKS = f"{LOCK_DIR}/env-builds"  # one flock file per env name, so only one deploy builds an env at a time
PRUNE_WAIT = 60


def pin_path(model: str) -> str:
    return f"{PINS}/{model}"


def pinned_build_script(spec: EnvSpec, path: str, model: str) -> str:
    """Pin the env for this model's deploy, then build it unless it is complete (another deploy may have built it)."""
    name = Path(path).name
    return render("env-pinned-build.sh.j2", guard=GUARD, pins=PINS, pin=pin_path(model), name=name, path=path,
                  text=spec.text, build_locks=BUILD_LOCKS, build_lock=f"{BUILD_LOCKS}/{name}.lock", build="\n".join(build_commands(spec, path)))


def unpin_script(model: str) -> str:
    return f"rm -f {pin_path(model)}"


def prune_script(envs_root: str, models_root: str, prefix: str) -> str:
    """Remove the envs named prefix* that no release of any model links to and no deploy has pinned; print what went."""
    return render("env-prune.sh.j2", guard=GUARD, pins=PINS, envs_root=envs_root, models_root=models_root,
                  prefix=prefix, wait=PRUNE_WAIT)
