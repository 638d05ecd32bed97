import pytest

from tasks.inventory import InventoryError, load_inventory
from tasks.requirements import RequirementError, check_packages, parse_requirements_file

SOURCE = "runs:/abc/model: requirements.txt"

HOSTILE = [
    "--index-url=http://127.0.0.1:9/simple",
    "-r /etc/shadow",
    "-e git+https://example.com/x.git#egg=x",
    "--extra-index-url http://127.0.0.1:9/simple",
    "-c /etc/passwd",
    "pkg @ https://example.com/pkg-1.0-py3-none-any.whl",
    "pkg@file:///etc/passwd",
    "https://example.com/pkg-1.0.tar.gz",
    "git+https://example.com/x.git",
    "./local/path",
    "../up",
    "/etc/passwd",
    "evil-1.0-py3-none-any.whl",
    "evil-1.0.tar.gz",
    'pkg; os.system("id")',
    'pkg; python_version > "3" or __import__("os").system("id")',
    "pkg==1.0 --hash=sha256:00",
    "pkg[$(id)]",
    "pkg==1.0 \\",
]

PLAIN = [
    "mlflow==3.17.2",
    "scikit-learn==1.9.1",
    "mlflow[auth]==3.17.2",
    'pandas[pyarrow,performance]>=2.2,<3; python_version >= "3.10"',
    'pywin32==306; sys_platform == "win32"',
    "numpy~=2.4",
    "requests",
]


@pytest.mark.parametrize("line", HOSTILE)
def test_each_hostile_line_is_refused_naming_its_line(line):
    content = f"mlflow==3.17.2\n# a comment\n\n{line}\nnumpy==2.4.6"
    with pytest.raises(RequirementError) as refused:
        parse_requirements_file(content, SOURCE)
    message = str(refused.value)
    assert message.startswith(SOURCE)
    assert f"line 4: {line!r}" in message
    assert "line 1" not in message and "line 5" not in message


def test_every_refused_line_is_listed():
    content = "mlflow==3.17.2\n--index-url=http://127.0.0.1:9/simple\n-r /etc/shadow"
    with pytest.raises(RequirementError) as refused:
        parse_requirements_file(content, SOURCE)
    assert "line 2: '--index-url=http://127.0.0.1:9/simple' is a pip option" in str(refused.value)
    assert "line 3: '-r /etc/shadow' is a pip option" in str(refused.value)


def test_plain_requirements_pass_unchanged():
    content = "\n".join(["# written by mlflow", "", *PLAIN, "  # indented comment", "skops==0.16.0  # pinned"])
    assert parse_requirements_file(content, SOURCE) == [*PLAIN, "skops==0.16.0"]


def test_the_file_mlflow_writes_passes():
    assert parse_requirements_file("mlflow==3.17.2\nnumpy==2.4.6\nskops==0.16.0", SOURCE) == ["mlflow==3.17.2", "numpy==2.4.6", "skops==0.16.0"]


def test_extra_packages_name_the_item():
    assert check_packages(["boto3", "prometheus-flask-exporter==0.23.2"], "hosts.toml: [tracking] extra_packages") == [
        "boto3", "prometheus-flask-exporter==0.23.2"]
    with pytest.raises(RequirementError, match=r"hosts.toml: \[tracking\] extra_packages(.|\n)*item 2: '-r /etc/shadow' is a pip option"):
        check_packages(["boto3", "-r /etc/shadow"], "hosts.toml: [tracking] extra_packages")


def test_inventory_refuses_extra_packages_that_are_not_plain_requirements(tmp_path):
    path = tmp_path / "hosts.toml"
    path.write_text('[tracking]\nextra_packages = ["boto3"]\n[hosts.t1]\naddress = "10.0.0.1"\n[hosts.t1.tracking]\nextra_packages = ["boto3", "--index-url=http://127.0.0.1:9/simple"]\n')
    with pytest.raises(InventoryError) as refused:
        load_inventory(path)
    assert f"{path}: [hosts.t1.tracking] extra_packages" in str(refused.value)
    assert "item 2: '--index-url=http://127.0.0.1:9/simple' is a pip option" in str(refused.value)


def test_source_builds_are_off_unless_the_inventory_allows_them(tmp_path):
    path = tmp_path / "hosts.toml"
    path.write_text("[tracking]\nallow_source_builds = true\n[models.wine]\nallow_source_builds = true\n")
    inventory = load_inventory(path)
    assert inventory.tracking.allow_source_builds and inventory.models["wine"].allow_source_builds
    assert not inventory.models[""].allow_source_builds
