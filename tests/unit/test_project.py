import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from tasks.ops.pyenv import EnvSpec
from tasks.training.project import ProjectError, checked_parameters, load, pack, with_mlflow
from tasks.training.run import RunRequest, follow_script, run_id_in, start_script

WINE = Path(__file__).resolve().parents[2] / "examples" / "wine"


def test_the_example_project_loads_with_its_pinned_env():
    project = load(WINE)
    assert project.name == "wine-quality" and project.python == "3.11" and project.env_file == "python_env.yaml"
    assert "mlflow==3.17.2" in project.requirements and "scikit-learn==1.9.1" in project.requirements
    assert not any(text.startswith("pip") for text in project.requirements)  # build_dependencies' pip is the env's own
    assert set(project.entry_points["main"].parameters) == {"alpha", "l1_ratio", "data"}


def test_parameters_must_be_declared_and_of_their_type():
    project = load(WINE)
    assert checked_parameters(project, "main", ["alpha=0.3", "l1_ratio=0.2"]) == {"alpha": "0.3", "l1_ratio": "0.2"}
    with pytest.raises(ProjectError, match="no such parameter"):
        checked_parameters(project, "main", ["alhpa=0.3"])
    with pytest.raises(ProjectError, match="alpha is a float"):
        checked_parameters(project, "main", ["alpha=much"])
    with pytest.raises(ProjectError, match="entry point 'train' is not in"):
        checked_parameters(project, "train", [])
    with pytest.raises(ProjectError, match="name=value"):
        checked_parameters(project, "main", ["alpha"])


def project_with(tmp_path, mlproject: str, **files: str) -> Path:
    (tmp_path / "MLproject").write_text(mlproject)
    for name, text in files.items():
        (tmp_path / name.replace("__", ".")).write_text(text)
    return tmp_path


def test_a_directory_without_mlproject_is_not_a_project(tmp_path):
    with pytest.raises(ProjectError, match="no MLproject"):
        load(tmp_path)


def test_required_parameters_and_requirement_files(tmp_path):
    directory = project_with(tmp_path, "name: p\nentry_points:\n  main:\n    parameters:\n      n: {type: float}\n    command: python t.py {n}\n",
                             requirements__txt="pandas==2.2.3\n")
    project = load(directory)
    assert project.requirements == ("pandas==2.2.3",) and project.env_file == "requirements.txt"
    with pytest.raises(ProjectError, match="needs -P n="):
        checked_parameters(project, "main", [])
    assert with_mlflow(project.requirements, "3.17.2") == ("pandas==2.2.3", "mlflow==3.17.2")


def test_untrusted_requirements_are_refused(tmp_path):
    directory = project_with(tmp_path, "entry_points:\n  main:\n    command: python t.py\n",
                             requirements__txt="--index-url https://evil.example/simple\npandas\n")
    with pytest.raises(ProjectError, match="a pip option"):
        load(directory)


def test_conda_env_takes_python_and_pip_and_refuses_other_conda_packages(tmp_path):
    conda = "channels: [conda-forge]\ndependencies:\n  - python=3.10\n  - pip\n  - pip:\n    - scikit-learn==1.5.0\n"
    project = load(project_with(tmp_path, "conda_env: conda.yaml\nentry_points:\n  main:\n    command: python t.py\n", conda__yaml=conda))
    assert (project.python, project.requirements) == ("3.10", ("scikit-learn==1.5.0",))
    (tmp_path / "conda.yaml").write_text(conda + "  - cudatoolkit=11.8\n")
    with pytest.raises(ProjectError, match="cudatoolkit"):
        load(tmp_path)


def test_pack_leaves_out_git_and_refuses_links_out_of_the_project(tmp_path):
    (tmp_path / "p").mkdir()
    directory = project_with(tmp_path / "p", "entry_points:\n  main:\n    command: x\n")
    (directory / ".git").mkdir()
    (directory / ".git" / "config").write_text("secret")
    (directory / "train.py").write_text("print(1)")
    names = tarfile.open(fileobj=io.BytesIO(pack(directory))).getnames()
    assert sorted(names) == ["MLproject", "train.py"]
    (tmp_path / "outside").write_text("laptop file")
    (directory / "data.csv").symlink_to(tmp_path / "outside")
    with pytest.raises(ProjectError, match="outside the project"):
        pack(directory)


def request(**changes) -> RunRequest:
    values = dict(project_name="wine-quality", tarball=b"", spec=EnvSpec("venv", ("mlflow==3.17.2",)), entry_point="main",
                  parameters={"alpha": "0.5; rm -rf /"}, experiment="wine's", tracking_uri="https://t1:5000",
                  credentials="[mlflow]\n", certificate="PEM", unit="mlflow-run-20261129T101010Z-abcdef")
    return RunRequest(**(values | changes))


def test_the_start_and_follow_scripts_are_valid_bash_with_quoted_inputs():
    script = start_script(request())
    assert subprocess.run(["bash", "-n", "-c", script]).returncode == 0
    assert "'alpha=0.5; rm -rf /'" in script and "'wine'\"'\"'s'" in script
    assert "--uid=mlflow-train" in script and "KillSignal=SIGINT" in script and "MLFLOW_TRACKING_SERVER_CERT_PATH" in script
    assert subprocess.run(["bash", "-n", "-c", follow_script(request().unit)]).returncode == 0


def test_the_run_id_comes_from_mlflows_own_lines():
    run_id = "0123456789abcdef0123456789abcdef"
    assert run_id_in(f"=== Running command 'python train.py' in run with ID '{run_id}' === ") == run_id
    assert run_id_in(f"=== Run (ID '{run_id}') succeeded ===") == run_id
    assert run_id_in("ModuleNotFoundError: No module named 'sklearn'") == ""
