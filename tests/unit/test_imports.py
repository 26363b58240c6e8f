"""Who may import whom (README, "Layout"): the rules, and no import cycles.

Imports are read from the source (``ast``), lazy imports inside functions included: a cycle
through a function-level import is still two modules that each need the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("oncopipe", "training", "processing", "batch_jobs", "lambdas", "stacks")
#: folder -> the first-party folders its modules must not import
FORBIDDEN = {
    "oncopipe": {"stacks", "lambdas", "batch_jobs", "processing", "aws_cdk", "constructs"},
    "training": {"stacks", "lambdas", "batch_jobs", "processing", "aws_cdk"},
    "processing": {"stacks", "lambdas", "batch_jobs", "aws_cdk"},
    "batch_jobs": {"stacks", "lambdas", "processing", "aws_cdk"},
    "lambdas": {"stacks", "batch_jobs", "processing", "training", "aws_cdk"},
    "stacks": {"lambdas", "batch_jobs", "processing", "training"},
}
#: The stage cores hand work on through manifests, never through the router's module.
STAGE_CORES = ("oncopipe/genomics", "oncopipe/imaging", "oncopipe/notes", "oncopipe/radiomics")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_no_folder_imports_what_it_must_not() -> None:
    wrong = []
    for name, path in _modules().items():
        banned = FORBIDDEN[name.split(".")[0]]
        for imported in _imports(path):
            if imported.split(".")[0] in banned:
                wrong.append(f"{path.relative_to(REPO)} imports {imported}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_stage_core_imports_the_router() -> None:
    wrong = [f"{path.relative_to(REPO)}" for name, path in _modules().items()
             if path.relative_to(REPO).as_posix().startswith(STAGE_CORES)
             and "oncopipe.ingest" in _imports(path)]  # fmt: skip
    assert not wrong, wrong


def test_there_is_no_import_cycle() -> None:
    modules = _modules()
    graph = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
    cycles: list[list[str]] = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, cycles
