"""An MLflow Project on the laptop: found (a directory, or a git URL cloned here), checked, packed for a host.

Everything in it is untrusted: the MLproject file and its env file are read as data, requirements go
through the same checks as a model's, parameters must be declared by the entry point, and a symlink
may not lead out of the project (it would pack a file of this laptop).
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from packaging.requirements import Requirement

from tasks.requirements import RequirementError, check_packages, parse_requirements_file

# never shipped: version control, caches, local runs
LEFT_OUT = {".git", "__pycache__", "mlruns", ".venv", ".mypy_cache", ".pytest_cache"}
TYPES = ("string", "float", "path", "uri")


class ProjectError(ValueError):
    """A project that can't run as asked; the message says what to change."""


@dataclass(frozen=True)
class EntryPoint:
    name: str
    command: str
    # name -> (type, default); a default of None means the parameter is required
    parameters: dict[str, tuple[str, str | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class Project:
    directory: Path
    name: str
    entry_points: dict[str, EntryPoint]
    env_file: str  # the file the env comes from: python_env.yaml, conda.yaml or requirements.txt
    python: str
    requirements: tuple[str, ...]


def clone(url: str, version: str, into: Path) -> Path:
    """The repository at `version` (a branch, tag or commit), cloned on this machine."""
    target = into / "project"
    steps = [["git", "clone", "--quiet", "--", url, str(target)]]
    if version:
        steps.append(["git", "-C", str(target), "checkout", "--quiet", "--detach", version])
    for command in steps:
        done = subprocess.run(command, capture_output=True, text=True, env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin"})
        if done.returncode != 0:
            raise ProjectError(f"{' '.join(command[:2])} {url}{' at ' + version if version else ''} failed: {done.stderr.strip()[-500:]}")
    return target


def load(directory: Path) -> Project:
    """Read MLproject (or an implicit project: a directory with the command given by entry point main) and its env."""
    spec_file = directory / "MLproject"
    if not directory.is_dir():
        raise ProjectError(f"{directory}: no such directory")
    if not spec_file.is_file():
        raise ProjectError(f"{directory} has no MLproject file: it is not an MLflow Project")
    spec = _yaml(spec_file)
    if "docker_env" in spec:
        raise ProjectError(f"{spec_file}: docker_env projects are not supported (python_env or conda_env)")
    entry_points = {name: _entry_point(name, table, spec_file) for name, table in (spec.get("entry_points") or {}).items()}
    if not entry_points:
        raise ProjectError(f"{spec_file}: no entry_points")
    env_file = spec.get("python_env") or spec.get("conda_env") or next(
        (name for name in ("python_env.yaml", "conda.yaml", "requirements.txt") if (directory / name).is_file()), "")
    python, requirements = _environment(directory, str(env_file)) if env_file else ("", [])
    return Project(directory, str(spec.get("name") or directory.name), entry_points, str(env_file), python, tuple(requirements))


def checked_parameters(project: Project, entry_point: str, given: list[str]) -> dict[str, str]:
    """-P name=value pairs, each declared by the entry point and of its type; required ones present."""
    if entry_point not in project.entry_points:
        raise ProjectError(f"entry point {entry_point!r} is not in {project.directory}/MLproject (it has: {', '.join(project.entry_points)})")
    declared = project.entry_points[entry_point].parameters
    values = {}
    for pair in given:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise ProjectError(f"-P {pair!r}: give name=value")
        if name not in declared:
            raise ProjectError(f"-P {name}: entry point {entry_point} has no such parameter (it has: {', '.join(declared) or 'none'})")
        if declared[name][0] == "float":
            try:
                float(value)
            except ValueError:
                raise ProjectError(f"-P {name}={value}: {name} is a float") from None
        values[name] = value
    missing = [name for name, (_, default) in declared.items() if default is None and name not in values]
    if missing:
        raise ProjectError(f"entry point {entry_point} needs -P {'=... -P '.join(missing)}=...")
    return values


def with_mlflow(requirements: tuple[str, ...], version: str) -> tuple[str, ...]:
    """`mlflow run` runs inside the project's env: add the tracking server's MLflow when the project names none."""
    names = {Requirement(text).name.lower() for text in requirements}
    return requirements if names & {"mlflow", "mlflow-skinny"} else (*requirements, f"mlflow=={version}")


def pack(directory: Path) -> bytes:
    """The project as a tar.gz (no .git, caches or local runs); a symlink leaving the project is refused."""
    root = directory.resolve()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(directory.rglob("*")):
            relative = path.relative_to(directory)
            if LEFT_OUT & set(relative.parts):
                continue
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                raise ProjectError(f"{path} links to {path.resolve()}, outside the project: copy the file into the project instead")
            if path.is_file():
                info = archive.gettarinfo(str(path), arcname=str(relative))
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                info.mtime = 0
                with path.open("rb") as content:
                    archive.addfile(info, content)
    return buffer.getvalue()


def digest(packed: bytes) -> str:
    return hashlib.sha256(packed).hexdigest()


def _yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ProjectError(f"{path}: can't be read as YAML: {error}") from None
    if not isinstance(data, dict):
        raise ProjectError(f"{path}: expected a mapping at the top")
    return data


def _entry_point(name: str, table, spec_file: Path) -> EntryPoint:
    if not isinstance(table, dict) or not isinstance(table.get("command"), str):
        raise ProjectError(f"{spec_file}: entry point {name} needs a command")
    parameters = {}
    for parameter, declared in (table.get("parameters") or {}).items():
        if isinstance(declared, str):
            declared = {"type": declared}
        kind = str((declared or {}).get("type", "string"))
        if kind not in TYPES:
            raise ProjectError(f"{spec_file}: parameter {parameter} of {name}: type {kind!r} (known: {', '.join(TYPES)})")
        default = (declared or {}).get("default")
        parameters[str(parameter)] = (kind, None if default is None else str(default))
    return EntryPoint(str(name), table["command"], parameters)


def _environment(directory: Path, env_file: str) -> tuple[str, list[str]]:
    """(python version, pip requirements) from python_env.yaml, conda.yaml (python and its pip list) or requirements.txt."""
    path = _inside(directory, env_file)
    source = f"{directory.name}/{env_file}"
    try:
        if env_file.endswith(".txt"):
            return "", parse_requirements_file(path.read_text(), source)
        spec = _yaml(path)
        if "dependencies" in spec and "python" in spec and "channels" not in spec:
            return _python_env(directory, spec, source)
        return _conda_env(spec, source)
    except RequirementError as error:
        raise ProjectError(str(error)) from None


def _python_env(directory: Path, spec: dict, source: str) -> tuple[str, list[str]]:
    requirements = []
    for item in [*(spec.get("build_dependencies") or []), *(spec.get("dependencies") or [])]:
        item = str(item)
        if item.startswith("-r "):
            included = item[3:].strip()
            requirements += parse_requirements_file(_inside(directory, included).read_text(), f"{directory.name}/{included}")
        else:
            requirements.append(item)
    # the env's own pip is what installs the rest
    return str(spec["python"]), [text for text in check_packages(requirements, source) if Requirement(text).name.lower() != "pip"]


def _conda_env(spec: dict, source: str) -> tuple[str, list[str]]:
    python, pip, others = "", [], []
    for item in spec.get("dependencies") or []:
        if isinstance(item, dict) and "pip" in item:
            pip += [str(requirement) for requirement in item["pip"]]
        elif str(item).startswith("python="):
            python = str(item).split("=", 1)[1]
        elif str(item) != "pip" and not str(item).startswith("pip="):
            others.append(str(item))
    if others:
        raise ProjectError(f"{source}: conda packages other than python and pip ({', '.join(others)}) are not supported: "
                           "list them under pip:, or use python_env.yaml")
    return python, check_packages(pip, source)


def _inside(directory: Path, name: str) -> Path:
    path = (directory / name).resolve()
    if not path.is_relative_to(directory.resolve()) or not path.is_file():
        raise ProjectError(f"{directory}/{name}: no such file in the project")
    return path
