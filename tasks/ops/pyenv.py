"""Python environments (venv or conda) built in place, named by a hash of what they contain.

A venv can't be moved once created, so each spec gets its own directory and a `.complete`
marker written last; a directory without the marker is a failed build and is rebuilt.
Packages are installed by an unprivileged user (no package code ever runs as root), from binary
wheels unless the spec allows source builds; the finished env then belongs to root.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass

from tasks.ops.steps import Step

# Every env of every role (tracking, models, training projects) lives here, each in its own hashed directory.
ENVS_ROOT = "/opt/mlflow/envs"
CONDA_ROOT = "/opt/conda"
MINIFORGE_VERSION = "24.11.3-0"
MINIFORGE_URL = f"https://github.com/conda-forge/miniforge/releases/download/{MINIFORGE_VERSION}/Miniforge3-{MINIFORGE_VERSION}-Linux-$arch.sh"
# Published with the release; the same values are in Arch Linux's AUR package "miniforge" 24.11.3.0.
MINIFORGE_SHA256 = {
    "x86_64": "2e1ad2188fe69fcdd522c2b20c08c800a5c7411b775eca768318b1540ed32e53",
    "aarch64": "d3f2b771857009ec804faeeef191352186194cb5737a831e55c6347a5f47cb8f",
}
# compiled afterwards on every core (pip compiles one file at a time: most of an env build on 2 cores)
PIP_INSTALL = "bin/pip install --disable-pip-version-check --no-input --progress-bar off -q --no-compile"
BINARY_ONLY = "--only-binary=:all:"

BUILD_USER = "mlflow-build"
BUILD_HOME = "/var/lib/mlflow-build"
BUILD_CACHE = "/var/cache/mlflow-build"
PIP_CACHE = f"{BUILD_CACHE}/pip"
CONDA_PKGS = f"{BUILD_CACHE}/conda"
# at the lowest CPU and I/O priority: builds run beside the servers the host serves with (an upgrade, a deploy)
AS_BUILDER = (
    f"nice -n 19 ionice -c 3 runuser -u {BUILD_USER} -- env -C {BUILD_HOME} HOME={BUILD_HOME} PIP_CACHE_DIR={PIP_CACHE} CONDA_PKGS_DIRS={CONDA_PKGS}"
)


@dataclass(frozen=True)
class EnvSpec:
    manager: str  # "venv" or "conda"
    packages: tuple[str, ...]
    python: str = ""  # conda only: the Python version to create; venv uses the host's python3
    allow_source_builds: bool = False  # sdists run their build code (as the build user); default: wheels only
    # Set for a build from the host's wheelhouse: pip reads that directory alone, and the pins (every version the
    # laptop resolved) make it install exactly that set. Neither is part of the env's name: the env is the same.
    find_links: str = ""
    pins: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        text = f"manager={self.manager} python={self.python} packages={' '.join(self.packages)}"
        return text + " source-builds=allowed" if self.allow_source_builds else text

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:12]

    def path(self, root: str, prefix: str) -> str:
        return f"{root}/{prefix}-{self.digest}"


def builder_commands() -> list[str]:
    """The build user and its caches; its home is not its own to write, so no build leaves config for the next."""
    return [
        f"id -u {BUILD_USER} >/dev/null 2>&1 || useradd --system --user-group --home-dir {BUILD_HOME}"
        f" --no-create-home --shell /usr/sbin/nologin {BUILD_USER}",
        f"install -d -o root -g {BUILD_USER} -m 750 {BUILD_HOME}",
        f"install -d -o {BUILD_USER} -g {BUILD_USER} -m 750 {BUILD_CACHE} {PIP_CACHE}",
    ]


def miniforge_command() -> str:
    """Miniforge into CONDA_ROOT when absent: a pinned installer, checked against its SHA-256 before it runs."""
    arches = " ".join(f"{arch}) sum={digest};;" for arch, digest in MINIFORGE_SHA256.items())
    return (
        f"if [ ! -x {CONDA_ROOT}/bin/conda ]; then\n"
        f'  arch=$(uname -m); case "$arch" in {arches} *) echo "no pinned Miniforge installer for $arch" >&2; exit 1;; esac\n'
        '  installer_dir=$(mktemp -d); installer="$installer_dir/miniforge.sh"\n'
        f'  {{ curl -fsSL -o "$installer" "{MINIFORGE_URL}" && echo "$sum  $installer" | sha256sum -c --quiet -'
        f' && bash "$installer" -b -p {CONDA_ROOT}; }} || {{ rc=$?; rm -rf "$installer_dir"; exit $rc; }}\n'
        '  rm -rf "$installer_dir"\n'
        "fi"
    )


def build_commands(spec: EnvSpec, path: str) -> list[str]:
    quoted = shlex.quote(path)
    packages = " ".join(shlex.quote(package) for package in spec.packages + spec.pins)
    commands = [f"rm -rf {quoted}", *builder_commands()]
    if spec.manager == "conda":
        commands.append(miniforge_command())
        create = f"{AS_BUILDER} {CONDA_ROOT}/bin/conda create -y -q -p {quoted} python={spec.python or '3.11'} pip"
    else:
        create = f"{AS_BUILDER} python3 -m venv {quoted}"
    source = f" --no-index --find-links {shlex.quote(spec.find_links)}" if spec.find_links else ""
    install = f"{AS_BUILDER} {quoted}/{PIP_INSTALL}{source}{'' if spec.allow_source_builds else ' ' + BINARY_ONLY} {packages}"
    # a file that doesn't compile (bundled Python 2 test data) is skipped, as pip's own compile step skips it
    compile_all = f"{{ {AS_BUILDER} {quoted}/bin/python -m compileall -qq -j 0 {quoted}/lib || true; }}"
    hint = "" if spec.allow_source_builds else (
        "echo 'binary wheels only: a requirement published only as source needs allow_source_builds = true in hosts.toml' >&2; "
    )
    commands += [
        f"install -d -o {BUILD_USER} -g {BUILD_USER} -m 755 {quoted}",
        # a failed build leaves no half-built env behind
        f"{{ {create} && {install}; }} || {{ rc=$?; {hint}rm -rf {quoted}; exit $rc; }}",
        compile_all,
        # the services may read and run the env, never change it
        f"chown -R root:root {quoted} && chmod -R go-w {quoted}",
        f"printf '%s\\n' {shlex.quote(spec.text)} > {quoted}/.complete",
    ]
    return commands


def ensure_env(spec: EnvSpec, path: str, marker: str, name: str = "python env") -> Step:
    if marker.strip() == spec.text:
        return Step.ok(name, f"{path} ({' '.join(spec.packages)})")
    summary = f"build {spec.manager} {path} as {BUILD_USER} with {' '.join(spec.packages)}"
    return Step.change(name, summary, "\n".join(build_commands(spec, path)))
