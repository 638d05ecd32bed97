"""Python environments (venv or conda) built in place, named by a hash of what they contain.

A venv can't be moved once created, so each spec gets its own directory and a `.complete`
marker written last; a directory without the marker is a failed build and is rebuilt.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass

from tasks.ops.steps import Step

CONDA_ROOT = "/opt/conda"
MINIFORGE_URL = "https://github.com/conda-forge/miniforge/releases/latest/download/Miniforge3-Linux-$(uname -m).sh"
PIP_INSTALL = "bin/pip install --disable-pip-version-check --no-input --progress-bar off -q"


@dataclass(frozen=True)
class EnvSpec:
    manager: str  # "venv" or "conda"
    packages: tuple[str, ...]
    python: str = ""  # conda only: the Python version to create; venv uses the host's python3

    @property
    def text(self) -> str:
        return f"manager={self.manager} python={self.python} packages={' '.join(self.packages)}"

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:12]

    def path(self, root: str, prefix: str) -> str:
        return f"{root}/{prefix}-{self.digest}"


def build_commands(spec: EnvSpec, path: str) -> list[str]:
    quoted = shlex.quote(path)
    packages = " ".join(shlex.quote(package) for package in spec.packages)
    commands = [f"rm -rf {quoted}"]
    if spec.manager == "conda":
        commands += [
            f"[ -x {CONDA_ROOT}/bin/conda ] || {{ curl -fsSL -o /tmp/miniforge.sh {MINIFORGE_URL}"
            f" && bash /tmp/miniforge.sh -b -p {CONDA_ROOT} && rm -f /tmp/miniforge.sh; }}",
            f"{CONDA_ROOT}/bin/conda create -y -q -p {quoted} python={spec.python or '3.11'} pip",
        ]
    else:
        commands.append(f"python3 -m venv {quoted}")
    commands += [
        # a failed install leaves no half-built env behind
        f"{quoted}/{PIP_INSTALL} {packages} || {{ rc=$?; rm -rf {quoted}; exit $rc; }}",
        f"printf '%s\\n' {shlex.quote(spec.text)} > {quoted}/.complete",
    ]
    return commands


def ensure_env(spec: EnvSpec, path: str, marker: str, name: str = "python env") -> Step:
    if marker.strip() == spec.text:
        return Step.ok(name, f"{path} ({' '.join(spec.packages)})")
    summary = f"build {spec.manager} {path} with {' '.join(spec.packages)}"
    return Step.change(name, summary, "\n".join(build_commands(spec, path)))
