import hashlib
import os
import platform
import subprocess

import pytest

from tasks.ops import pyenv
from tasks.ops.pyenv import EnvSpec, build_commands, ensure_env, miniforge_command

PACKAGES = ("mlflow==3.17.2", "psycopg2-binary==2.9.13")


BUILDER = "nice -n 19 ionice -c 3 runuser -u mlflow-build -- env -C /var/lib/mlflow-build HOME=/var/lib/mlflow-build PIP_CACHE_DIR=/var/cache/mlflow-build/pip CONDA_PKGS_DIRS=/var/cache/mlflow-build/conda"
PIP = "bin/pip install --disable-pip-version-check --no-input --progress-bar off -q --no-compile"


def test_venv_is_built_by_the_build_user_from_wheels_and_handed_to_root():
    spec = EnvSpec("venv", PACKAGES)
    path = spec.path("/opt/mlflow/envs", "tracking")
    assert path == f"/opt/mlflow/envs/tracking-{spec.digest}"
    assert build_commands(spec, path) == [
        f"rm -rf {path}",
        "id -u mlflow-build >/dev/null 2>&1 || useradd --system --user-group --home-dir /var/lib/mlflow-build"
        " --no-create-home --shell /usr/sbin/nologin mlflow-build",
        "install -d -o root -g mlflow-build -m 750 /var/lib/mlflow-build",
        "install -d -o mlflow-build -g mlflow-build -m 750 /var/cache/mlflow-build /var/cache/mlflow-build/pip",
        f"install -d -o mlflow-build -g mlflow-build -m 755 {path}",
        f"{{ {BUILDER} python3 -m venv {path} && {BUILDER} {path}/{PIP} --only-binary=:all: mlflow==3.17.2 psycopg2-binary==2.9.13; }}"
        f" || {{ rc=$?; echo 'binary wheels only: a requirement published only as source needs allow_source_builds = true in hosts.toml' >&2;"
        f" rm -rf {path}; exit $rc; }}",
        f"{{ {BUILDER} {path}/bin/python -m compileall -qq -j 0 {path}/lib || true; }}",
        f"chown -R root:root {path} && chmod -R go-w {path}",
        f"printf '%s\\n' 'manager=venv python= packages=mlflow==3.17.2 psycopg2-binary==2.9.13' > {path}/.complete",
    ]


def test_source_builds_only_when_allowed_and_existing_env_names_stay():
    wheels = EnvSpec("venv", PACKAGES)
    sources = EnvSpec("venv", PACKAGES, allow_source_builds=True)
    # envs built before the setting existed keep their name and marker: no rebuild, no restart
    assert wheels.text == "manager=venv python= packages=mlflow==3.17.2 psycopg2-binary==2.9.13"
    assert sources.digest != wheels.digest
    install = next(command for command in build_commands(sources, "/e") if "pip install" in command)
    assert "--only-binary" not in install and "allow_source_builds" not in install
    assert f"{BUILDER} /e/{PIP} mlflow==3.17.2" in install


def test_requirements_reach_pip_as_single_quoted_arguments():
    spec = EnvSpec("venv", ('pandas>=2; python_version >= "3.10"',))
    install = next(command for command in build_commands(spec, "/e") if "pip install" in command)
    assert install.count("'pandas>=2; python_version >= \"3.10\"'") == 1


def test_conda_installs_a_pinned_checked_miniforge_only_when_absent():
    spec = EnvSpec("conda", PACKAGES, python="3.11")
    path = spec.path("/opt/mlflow/envs", "tracking")
    commands = build_commands(spec, path)
    assert miniforge_command() in commands
    assert miniforge_command() == (
        "if [ ! -x /opt/conda/bin/conda ]; then\n"
        '  arch=$(uname -m); case "$arch" in'
        " x86_64) sum=2e1ad2188fe69fcdd522c2b20c08c800a5c7411b775eca768318b1540ed32e53;;"
        " aarch64) sum=d3f2b771857009ec804faeeef191352186194cb5737a831e55c6347a5f47cb8f;;"
        ' *) echo "no pinned Miniforge installer for $arch" >&2; exit 1;; esac\n'
        '  installer_dir=$(mktemp -d); installer="$installer_dir/miniforge.sh"\n'
        '  { curl -fsSL -o "$installer" "https://github.com/conda-forge/miniforge/releases/download/24.11.3-0/Miniforge3-24.11.3-0-Linux-$arch.sh"'
        ' && echo "$sum  $installer" | sha256sum -c --quiet - && bash "$installer" -b -p /opt/conda; }'
        ' || { rc=$?; rm -rf "$installer_dir"; exit $rc; }\n'
        '  rm -rf "$installer_dir"\n'
        "fi"
    )
    assert "latest" not in miniforge_command() and "/tmp/" not in miniforge_command()
    build = next(command for command in commands if "conda create" in command)
    assert f"{BUILDER} /opt/conda/bin/conda create -y -q -p {path} python=3.11 pip && {BUILDER} {path}/{PIP} --only-binary=:all: " in build
    assert commands[-1].endswith(f"> {path}/.complete")


def test_env_paths_differ_by_content():
    assert EnvSpec("venv", PACKAGES).digest != EnvSpec("venv", ("mlflow==3.16.0",)).digest
    assert EnvSpec("venv", PACKAGES).digest != EnvSpec("conda", PACKAGES, "3.11").digest


def test_marker_decides():
    spec = EnvSpec("venv", PACKAGES)
    assert not ensure_env(spec, "/p", spec.text + "\n").changed
    assert ensure_env(spec, "/p", "").changed
    assert ensure_env(spec, "/p", "manager=venv python= packages=mlflow==3.16.0").changed


def run_miniforge_install(tmp_path, installer: bytes):
    """miniforge_command() in a real shell, with a curl that 'downloads' installer and TMPDIR to watch."""
    if os.path.exists("/opt/conda/bin/conda"):
        pytest.skip("this machine has a conda in /opt/conda: the install would be skipped")
    bin_dir, temp = tmp_path / "bin", tmp_path / "tmp"
    bin_dir.mkdir(), temp.mkdir()
    (bin_dir / "curl").write_text(f'#!/bin/sh\nwhile [ "$1" != -o ]; do shift; done\ncp {tmp_path / "payload"} "$2"\n')
    (bin_dir / "curl").chmod(0o755)
    (tmp_path / "payload").write_bytes(installer)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "TMPDIR": str(temp), "RAN": str(tmp_path / "ran")}
    result = subprocess.run(["sh", "-c", miniforge_command()], env=env, capture_output=True, text=True)
    return result, list(temp.iterdir())


def test_miniforge_installer_runs_only_with_its_pinned_checksum(tmp_path, monkeypatch):
    installer = b'echo "$@" > "$RAN"\n'
    monkeypatch.setitem(pyenv.MINIFORGE_SHA256, platform.machine(), hashlib.sha256(installer).hexdigest())
    result, left = run_miniforge_install(tmp_path, installer)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ran").read_text() == "-b -p /opt/conda\n"
    assert left == []  # the installer's temporary directory is gone


def test_a_tampered_miniforge_installer_never_runs(tmp_path, monkeypatch):
    monkeypatch.setitem(pyenv.MINIFORGE_SHA256, platform.machine(), hashlib.sha256(b"the real one").hexdigest())
    result, left = run_miniforge_install(tmp_path, b'echo "$@" > "$RAN"\n')
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr
    assert not (tmp_path / "ran").exists()
    assert left == []
