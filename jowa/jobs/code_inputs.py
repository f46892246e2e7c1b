"""The code a workflow job runs, as that job's Snakemake inputs: the modules its command imports.

Snakemake reruns a job when one of its inputs changed, but it cannot see what a shell command imports
(pitfall P1 of the workflow notes), and a hand-written list is both too wide (an unrelated edit reruns
everything) and too narrow (a shared helper is forgotten). So a rule's code inputs are computed: the
command's module and every `jowa` module it imports, directly or through others, lazily or not, read
from the source with `ast` (nothing is imported, so planning stays fast), plus the package `__init__`
files Python runs on the way. `jowa/cli.py` only dispatches to the command's module, so it is never a
code input: editing the command table reruns nothing. Imports under `if TYPE_CHECKING:` are skipped.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import jowa

PACKAGE = "jowa"
PACKAGE_DIR = Path(jowa.__file__).resolve().parent


def module_file(module: str) -> Path | None:
    """The source file of a `jowa` module or package, or None if there is none."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Absolute names of every module this source imports (or imports a name from)."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from jowa import games`
        stack.extend(ast.iter_child_nodes(node))
    return {name for name in found if module_file(name) is not None}


def _with_parents(module: str) -> set[str]:
    """The module and the packages Python initializes before it."""
    parts = module.split(".")
    return {".".join(parts[: i + 1]) for i in range(len(parts))}


@cache
def imported_modules(module: str) -> frozenset[str]:
    """`module` and every `jowa` module it imports, transitively, with their parent packages."""
    if module_file(module) is None:
        raise ValueError(f"{module}: not a module of the {PACKAGE} package")
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        tree = ast.parse(path.read_text(), filename=str(path))
        todo.extend(_with_parents(name) - seen)
        todo.extend(_imported_names(tree, name, path.name == "__init__.py") - seen)
    return frozenset(seen)


def code_inputs(module: str, relative_to: Path | str = ".") -> list[str]:
    """The source files a command module runs, sorted, relative to `relative_to` where they lie under it."""
    root = Path(relative_to).resolve()
    files = []
    for name in sorted(imported_modules(module)):
        path = module_file(name)
        files.append(str(path.relative_to(root) if path.is_relative_to(root) else path))
    return sorted(files)
