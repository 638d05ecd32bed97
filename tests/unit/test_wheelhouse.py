"""The wheelhouse: targets and cache keys, pip's command lines and failures, what a host is sent, how the env installs."""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from tasks.inventory import InventoryError, load_inventory
from tasks.ops import wheelhouse, wheelsync
from tasks.ops.pyenv import EnvSpec, build_commands
from tasks.ops.wheelhouse import (Target, Wheelhouse, WheelhouseError, cache_key, download_command, is_pure, parse_target, pip_failure,
                                   prepare)
from tasks.ops.wheelsync import archive, intake_script, missing_files, parse_held, supply

BOOKWORM = Target("3.11", "x86_64", "2.36")
TRACKING = ("mlflow[auth]==3.17.2", "psycopg2-binary==2.9.13")


def test_the_target_comes_from_the_host_fact_and_names_every_manylinux_tag_its_glibc_runs():
    assert parse_target("3.11 x86_64 glibc 2.36\n") == BOOKWORM
    assert BOOKWORM.abi == "cp311"
    platforms = BOOKWORM.platforms
    assert platforms[:2] == ["manylinux_2_36_x86_64", "manylinux_2_35_x86_64"]
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "manylinux_2_17_x86_64"} <= set(platforms)
    assert platforms[-2:] == ["manylinux_2_5_x86_64", "manylinux1_x86_64"]
    assert Target("3.12", "aarch64", "2.39").platforms[0] == "manylinux_2_39_aarch64"


@pytest.mark.parametrize("fact", ["", " x86_64 glibc 2.36", "3.11 x86_64 ", "3.11 x86_64 musl 1.2", "3.11 x86;rm glibc 2.36"])
def test_an_incomplete_target_fact_says_what_is_missing(fact):
    with pytest.raises(WheelhouseError, match="wheelhouse|machine type"):
        parse_target(fact)


def test_the_cache_key_is_the_requirement_set_and_the_target():
    key = cache_key(TRACKING, BOOKWORM, False)
    assert key == cache_key(tuple(reversed(TRACKING)), BOOKWORM, False)  # order does not matter
    assert len({key, cache_key(TRACKING, Target("3.12", "x86_64", "2.36"), False), cache_key(TRACKING, BOOKWORM, True),
                cache_key(TRACKING[:1], BOOKWORM, False), cache_key(TRACKING, Target("3.11", "x86_64", "2.31"), False)}) == 5


def test_pip_downloads_binary_wheels_for_the_host_not_for_the_laptop(tmp_path):
    command = download_command(tmp_path / "wheels", tmp_path / "requirements.txt", BOOKWORM, (tmp_path / "built",))
    assert command[:3] == [sys.executable, "-m", "pip"]
    text = " ".join(command)
    assert (f"download --disable-pip-version-check --no-input --progress-bar off --dest {tmp_path}/wheels --only-binary=:all: "
            "--implementation cp --python-version 3.11 --abi cp311 --platform manylinux_2_36_x86_64 ") in text
    assert text.endswith(f"--platform manylinux1_x86_64 --find-links {tmp_path}/built -r {tmp_path}/requirements.txt")
    assert wheelhouse.source_wheel_command(tmp_path, "docopt==0.6.2")[3:] == [
        "wheel", "--disable-pip-version-check", "--no-input", "--progress-bar", "off", "--no-deps", "--wheel-dir", str(tmp_path), "docopt==0.6.2"]


def test_pip_failures_name_the_package_and_the_setting():
    output = ("ERROR: Could not find a version that satisfies the requirement docopt==0.6.2 (from versions: none)\n"
              "ERROR: No matching distribution found for docopt==0.6.2\n")
    requirement, error = pip_failure(output, BOOKWORM, allow_source_builds=False)
    assert requirement == "docopt==0.6.2"
    assert "No matching distribution found for docopt==0.6.2" in str(error) and "allow_source_builds = true" in str(error)
    assert "No host was changed" in str(error) and "CPython 3.11 on x86_64 with glibc 2.36" in str(error)
    assert pip_failure(output, BOOKWORM, allow_source_builds=True)[0] == "docopt==0.6.2"
    offline = "WARNING: Retrying ... NewConnectionError('Failed to establish a new connection')\nERROR: No matching distribution found for x\n"
    requirement, error = pip_failure(offline, BOOKWORM, False)
    assert requirement == "" and "cannot reach the package index" in str(error) and "wheelhouse = false" in str(error)
    assert str(pip_failure("ERROR: something else\n", BOOKWORM, False)[1]) == "pip could not fetch the wheelhouse: ERROR: something else"


@pytest.fixture
def offline_pip(monkeypatch, tmp_path):
    """The laptop's pip with no config and an empty local index: nothing resolves, nothing leaves this machine."""
    index = tmp_path / "index"
    index.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", index.as_uri())
    return tmp_path


def test_a_requirement_that_does_not_resolve_fails_on_the_laptop_naming_it(offline_pip):
    with pytest.raises(WheelhouseError, match=r"No matching distribution found for no-such-package==1\.0: .*allow_source_builds = true"):
        prepare(("no-such-package==1.0",), BOOKWORM, False, root=offline_pip / "cache")
    assert [path.name for path in (offline_pip / "cache").iterdir()] == [f"{cache_key(('no-such-package==1.0',), BOOKWORM, False)}.lock"]


def test_an_unreachable_index_says_so(offline_pip, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "1")  # pip names the connection error only when it retries
    with pytest.raises(WheelhouseError, match="cannot reach the package index.*no host was changed"):
        prepare(("mlflow==3.17.2",), BOOKWORM, False, root=offline_pip / "cache")


def test_a_complete_set_is_reused_from_the_cache_without_pip(tmp_path, monkeypatch):
    key = cache_key(TRACKING, BOOKWORM, False)
    (tmp_path / key).mkdir()
    (tmp_path / key / "mlflow-3.17.2-py3-none-any.whl").write_bytes(b"wheel")
    (tmp_path / key / wheelhouse.MANIFEST).write_text(json.dumps({"files": {"mlflow-3.17.2-py3-none-any.whl": "ab" * 32}}))
    monkeypatch.setattr(wheelhouse, "run_pip", lambda command: pytest.fail("pip ran for a cached set"))
    house = prepare(TRACKING, BOOKWORM, False, root=tmp_path)
    assert house.directory == tmp_path / key and house.pins() == ("mlflow==3.17.2",)


def test_a_host_is_sent_only_what_it_lacks_or_holds_differently():
    wanted = {"a-1-py3-none-any.whl": "1" * 64, "b-2-py3-none-any.whl": "2" * 64, "c-3-py3-none-any.whl": "3" * 64}
    held = parse_held(f"{'1' * 64} a-1-py3-none-any.whl\n{'9' * 64} b-2-py3-none-any.whl\nbroken line here\n{'2' * 64} b-2-py3-none-any.whl\n"
                      f"{'4' * 64} d-4-py3-none-any.whl")
    assert held["b-2-py3-none-any.whl"] == "2" * 64  # the last line for a file wins: it was replaced
    assert missing_files(wanted, held) == ["c-3-py3-none-any.whl"]
    assert missing_files(wanted, {**held, "a-1-py3-none-any.whl": "0" * 64}) == ["a-1-py3-none-any.whl", "c-3-py3-none-any.whl"]
    assert missing_files(wanted, {}) == sorted(wanted)


def test_the_upload_holds_plain_names_and_the_host_checks_every_sha256(tmp_path):
    (tmp_path / "a-1-py3-none-any.whl").write_bytes(b"A")
    (tmp_path / "b-2-py3-none-any.whl").write_bytes(b"B")
    house = Wheelhouse(tmp_path, {"a-1-py3-none-any.whl": "1" * 64, "b-2-py3-none-any.whl": "2" * 64})
    with tarfile.open(archive(house, ["b-2-py3-none-any.whl"], tmp_path / "upload.tar")) as tar:
        assert tar.getnames() == ["b-2-py3-none-any.whl"]
    script = intake_script(house, ["b-2-py3-none-any.whl"])
    assert f"printf %s '{'2' * 64}  b-2-py3-none-any.whl\n' | sha256sum -c --quiet -" in script
    assert f'mv -f "$stage"/b-2-py3-none-any.whl {wheelsync.WHEELS}/' in script
    assert script.index("sha256sum -c") < script.index("mv -f") < script.index(f">> {wheelsync.INDEX}")
    assert "a-1" not in script


def test_an_env_from_the_wheelhouse_installs_from_that_directory_alone_and_keeps_its_name():
    plain = EnvSpec("venv", TRACKING)
    housed = EnvSpec("venv", TRACKING, find_links=wheelsync.WHEELS, pins=("alembic==1.20.1", "mlflow==3.17.2"))
    assert (housed.text, housed.digest) == (plain.text, plain.digest)
    install = next(command for command in build_commands(housed, "/opt/mlflow/envs/tracking-x") if "pip install" in command)
    assert ("bin/pip install --disable-pip-version-check --no-input --progress-bar off -q --no-compile --no-index --find-links "
            "/var/cache/mlflow-fab/wheels --only-binary=:all: 'mlflow[auth]==3.17.2' psycopg2-binary==2.9.13 alembic==1.20.1 mlflow==3.17.2") in install
    assert "--no-index" not in next(command for command in build_commands(plain, "/opt/mlflow/envs/tracking-x") if "pip install" in command)


class NoRemote:
    """A remote the wheelhouse must not use: the env needs no wheels."""

    def __init__(self, wheelhouse: bool):
        self.host = SimpleNamespace(wheelhouse=wheelhouse)

    def run_script(self, *args, **kwargs):
        pytest.fail("the host was asked for its wheels")


@pytest.mark.parametrize("spec, marker, check, enabled", [
    (EnvSpec("venv", TRACKING), "manager=venv python= packages=mlflow[auth]==3.17.2 psycopg2-binary==2.9.13", False, True),
    (EnvSpec("venv", TRACKING), "", True, True),
    (EnvSpec("venv", TRACKING), "", False, False),
    (EnvSpec("conda", TRACKING, python="3.11"), "", False, True),
])
def test_no_wheelhouse_for_a_complete_env_check_mode_conda_or_wheelhouse_false(spec, marker, check, enabled):
    assert supply(NoRemote(enabled), spec, marker, check) == (spec, [])


def test_the_inventory_setting_defaults_on_and_a_host_may_turn_it_off(tmp_path):
    path = tmp_path / "hosts.toml"
    path.write_text('[hosts.a]\naddress = "10.0.0.1"\n[hosts.b]\naddress = "10.0.0.2"\nwheelhouse = false\n')
    inventory = load_inventory(path)
    assert inventory.hosts["a"].wheelhouse and not inventory.hosts["b"].wheelhouse
    path.write_text('[defaults]\nwheelhouse = false\n[hosts.a]\naddress = "10.0.0.1"\n')
    inventory = load_inventory(path)
    assert not inventory.hosts["a"].wheelhouse and not inventory.ad_hoc_host("root@10.0.0.9").wheelhouse
    path.write_text('[defaults]\nwheelhouse = "no"\n')
    with pytest.raises(InventoryError, match="wheelhouse = 'no' should be of type bool"):
        load_inventory(path)


class FakePip:
    """pip as prepare() sees it: downloads fail for REQUIREMENT until a wheel of it was built; builds make BUILT."""

    def __init__(self, built: str, requirement: str = "docopt==0.6.2"):
        self.built, self.requirement, self.commands = built, requirement, []

    def __call__(self, command):
        self.commands.append(command)
        directory = Path(command[command.index("--dest" if "download" in command else "--wheel-dir") + 1])
        directory.mkdir(parents=True, exist_ok=True)
        if "wheel" in command:
            (directory / self.built).write_bytes(b"built")
            return SimpleNamespace(returncode=0, stdout="", stderr="")
        if "--find-links" in command and is_pure(self.built):
            (directory / self.built).write_bytes(b"built")
            return SimpleNamespace(returncode=0, stdout="", stderr="")
        return SimpleNamespace(returncode=1, stdout="", stderr=f"ERROR: No matching distribution found for {self.requirement}\n")


def test_a_pure_sdist_is_built_into_a_wheel_on_the_laptop_when_source_builds_are_allowed(tmp_path, monkeypatch):
    pip = FakePip("docopt-0.6.2-py2.py3-none-any.whl")
    monkeypatch.setattr(wheelhouse, "run_pip", pip)
    house = prepare(("docopt==0.6.2",), BOOKWORM, True, root=tmp_path)
    assert list(house.files) == ["docopt-0.6.2-py2.py3-none-any.whl"] and house.pins() == ("docopt==0.6.2",)
    assert [command[3] for command in pip.commands] == ["download", "wheel", "download"]
    assert pip.commands[2][-4] == "--find-links" and pip.commands[2][-3] == str(Path(pip.commands[1][-2]))  # the built wheel's directory


def test_an_sdist_that_builds_platform_code_is_refused_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(wheelhouse, "run_pip", FakePip("fast-1.0-cp311-cp311-linux_x86_64.whl", "fast==1.0"))
    with pytest.raises(WheelhouseError, match=r"fast==1.0 has no wheel for CPython 3.11 .* its source builds platform code .*wheelhouse = false"):
        prepare(("fast==1.0",), BOOKWORM, True, root=tmp_path)
    assert not (tmp_path / cache_key(("fast==1.0",), BOOKWORM, True)).exists()
