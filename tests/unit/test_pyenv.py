from tasks.ops.pyenv import EnvSpec, build_commands, ensure_env

PACKAGES = ("mlflow==3.17.2", "psycopg2-binary==2.9.13")


def test_venv_commands():
    spec = EnvSpec("venv", PACKAGES)
    path = spec.path("/opt/mlflow/envs", "tracking")
    assert path == f"/opt/mlflow/envs/tracking-{spec.digest}"
    assert build_commands(spec, path) == [
        f"rm -rf {path}",
        f"python3 -m venv {path}",
        f"{path}/bin/pip install --disable-pip-version-check --no-input --progress-bar off -q mlflow==3.17.2 psycopg2-binary==2.9.13"
        f" || {{ rc=$?; rm -rf {path}; exit $rc; }}",
        f"printf '%s\\n' 'manager=venv python= packages=mlflow==3.17.2 psycopg2-binary==2.9.13' > {path}/.complete",
    ]


def test_conda_commands_install_miniforge_only_when_absent():
    spec = EnvSpec("conda", PACKAGES, python="3.11")
    path = spec.path("/opt/mlflow/envs", "tracking")
    commands = build_commands(spec, path)
    assert commands[1] == (
        "[ -x /opt/conda/bin/conda ] || { curl -fsSL -o /tmp/miniforge.sh "
        "https://github.com/conda-forge/miniforge/releases/latest/download/Miniforge3-Linux-$(uname -m).sh"
        " && bash /tmp/miniforge.sh -b -p /opt/conda && rm -f /tmp/miniforge.sh; }"
    )
    assert commands[2] == f"/opt/conda/bin/conda create -y -q -p {path} python=3.11 pip"
    assert commands[3].startswith(f"{path}/bin/pip install ")
    assert commands[-1].endswith(f"> {path}/.complete")


def test_env_paths_differ_by_content():
    assert EnvSpec("venv", PACKAGES).digest != EnvSpec("venv", ("mlflow==3.16.0",)).digest
    assert EnvSpec("venv", PACKAGES).digest != EnvSpec("conda", PACKAGES, "3.11").digest


def test_marker_decides():
    spec = EnvSpec("venv", PACKAGES)
    assert not ensure_env(spec, "/p", spec.text + "\n").changed
    assert ensure_env(spec, "/p", "").changed
    assert ensure_env(spec, "/p", "manager=venv python= packages=mlflow==3.16.0").changed
