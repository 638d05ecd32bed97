"""The layers of tasks/ and the one direction of their imports, read from the source (imports inside functions too)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "tasks"

# Each layer and the layers it may import; a layer may always import itself (without cycles).
INPUTS = {"tasks.values", "tasks.requirements", "tasks.oncalendar", "tasks.inventory", "tasks.templates", "tasks.credentials",
          "tasks.secret_files"}
MACHINERY = {"tasks.report", "tasks.fleet", "tasks.converge"}
MAY_IMPORT = {
    "inputs": set(),
    "ops": {"inputs"},
    "machinery": {"inputs", "ops"},
    "tracking": {"inputs", "ops", "machinery"},
    "serving": {"inputs", "ops", "machinery", "tracking"},
    "training": {"inputs", "ops", "machinery", "tracking"},
    "monitoring": {"inputs", "ops", "machinery", "tracking", "serving"},
    "overview": {"inputs", "ops", "machinery", "tracking", "serving", "monitoring"},
    "cli": {"inputs", "ops", "machinery", "tracking", "serving", "training", "monitoring", "overview"},
}
PACKAGE_LAYERS = {"tasks.ops": "ops", "tasks.tracking": "tracking", "tasks.serving": "serving", "tasks.training": "training",
                  "tasks.monitoring": "monitoring", "tasks.overview": "overview", "tasks.cli": "cli"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str:
    if module in INPUTS:
        return "inputs"
    if module in MACHINERY:
        return "machinery"
    package = module.rpartition(".")[0]
    if package in PACKAGE_LAYERS:
        return PACKAGE_LAYERS[package]
    if module in PACKAGE_LAYERS:
        return PACKAGE_LAYERS[module]
    return "package root" if module == "tasks" else ""


def imports_of(module: str) -> set[str]:
    """The tasks modules this one imports; `from tasks.x import y` counts as tasks.x.y when y is a module."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("tasks")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tasks"):
            for alias in node.names:
                found.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module)
    return found - {module, "tasks"}


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_has_a_layer():
    assert [module for module in MODULES if not layer_of(module)] == []


def test_every_import_is_a_module_of_ours():
    assert {(module, target) for module, targets in GRAPH.items() for target in targets if target not in MODULES} == set()


@pytest.mark.parametrize("module", [module for module in MODULES if layer_of(module) not in ("", "package root")])
def test_imports_point_down_the_layers(module):
    layer = layer_of(module)
    upward = sorted(target for target in GRAPH[module] if layer_of(target) != layer and layer_of(target) not in MAY_IMPORT[layer])
    assert upward == [], f"{module} ({layer}) may import only {sorted(MAY_IMPORT[layer] | {layer})}"


def test_task_modules_import_no_other_task_module():
    for module, targets in GRAPH.items():
        if layer_of(module) == "cli":
            assert {target for target in targets if layer_of(target) == "cli"} <= {"tasks.cli.arguments"}, module


def test_only_cli_modules_define_tasks():
    defining = set()
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(ast.unparse(d).split("(")[0] == "task" for d in node.decorator_list):
                defining.add(module)
    assert defining and {module for module in defining if layer_of(module) != "cli"} == set()


def test_no_import_cycles():
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        for target in sorted(GRAPH.get(module, ())):
            visit(target, path + [module])
        done.add(module)

    for module in MODULES:
        visit(module, [])


def test_a_cycle_is_found():
    GRAPH["tasks.values"].add("tasks.inventory")
    try:
        with pytest.raises(AssertionError, match="import cycle"):
            test_no_import_cycles()
    finally:
        GRAPH["tasks.values"].discard("tasks.inventory")
