"""The package layout shows the architecture: no import circle, planning below training and evaluation.

Read from the source with `ast`, every import counted: lazy ones inside functions and those under
`if TYPE_CHECKING:` too, since a circle of type annotations is still two modules that need each other.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "jowa"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


@cache
def imports(module: str) -> frozenset[str]:
    """The `jowa` modules this one imports directly (`from package import name` counts module `name`)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(name for name in found if name in MODULES and name != module)


def reachable(module: str) -> set[str]:
    seen: set[str] = set()
    todo = list(imports(module))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(imports(name))
    return seen


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def find_cycle() -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the DFS stack, then "done"
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        stack.append(module)
        for name in sorted(imports(module)):
            if state.get(name) == "open":
                return [*stack[stack.index(name) :], name]
            if name not in state and (cycle := visit(name)):
                return cycle
        stack.pop()
        state[module] = "done"
        return None

    for module in MODULES:
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_module_scan_sees_imports() -> None:
    # the scan itself: a package __init__ is a module, and lazy imports inside functions count
    assert "jowa" in MODULES and "jowa.cli" in MODULES
    assert any(in_package(name, "jowa.weights") for name in reachable("jowa.report.report"))


def test_no_import_circle_among_jowa_modules() -> None:
    cycle = find_cycle()
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("jowa.train", "jowa.eval"),  # training uses the planner, not the evaluate command
        ("jowa.planning", "jowa.train"),
        ("jowa.planning", "jowa.eval"),
        ("jowa.models", "jowa.weights"),  # networks know nothing of files
        ("jowa.data.dopamine", "jowa.data.rlu"),  # the two source formats share only jowa.data.episodes
        ("jowa.data.rlu", "jowa.data.dopamine"),
        ("jowa.models", "jowa.data"),
    ],
)
def test_lower_packages_do_not_import_upper_ones(lower: str, upper: str) -> None:
    offenders = {
        module: sorted(name for name in reachable(module) if in_package(name, upper))
        for module in MODULES
        if in_package(module, lower)
    }
    offenders = {module: names for module, names in offenders.items() if names}
    assert not offenders, f"{lower} must not import {upper}: {offenders}"


@pytest.mark.parametrize("formats", ["jowa.data.dopamine", "jowa.data.rlu"])
def test_source_formats_lie_beneath_the_data_stages(formats: str) -> None:
    shared = {"jowa.data.episodes"}  # what both formats yield
    stages = {m for m in MODULES if m.count(".") == 2 and in_package(m, "jowa.data")} - shared
    for module in (m for m in MODULES if in_package(m, formats)):
        assert not imports(module) & stages, (
            f"{module} imports data stages {sorted(imports(module) & stages)}"
        )


def test_the_ground_floor_holds_packages_and_the_command() -> None:
    loose = sorted(p.name for p in PACKAGE_DIR.glob("*.py") if p.name not in ("__init__.py", "cli.py"))
    assert not loose, f"modules loose in jowa/ (give each a package): {loose}"


def test_every_package_says_what_it_holds() -> None:
    for init in sorted(PACKAGE_DIR.rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 5, (
            f"{init.relative_to(PACKAGE_DIR.parent)}: no docstring saying what it holds"
        )
    folders = {p.parent for p in PACKAGE_DIR.rglob("*.py")}
    missing = sorted(
        str(f.relative_to(PACKAGE_DIR.parent)) for f in folders if not (f / "__init__.py").is_file()
    )
    assert not missing, f"folders of modules without __init__.py: {missing}"
