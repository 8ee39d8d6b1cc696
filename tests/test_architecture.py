"""Imports go one way: gridedge_env <- gradmap_agent <- baselines <- gridedge_run (docs/architecture.md).

Every import statement of the four packages (and of the examples) is parsed, wherever it sits (module top,
function body, ``importlib.import_module("...")`` with a literal name), so a lazy import cannot hide an
upward edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: package -> layer; a module may import its own package and packages of lower layers only
LAYERS = {"gridedge_env": 0, "gradmap_agent": 1, "baselines": 2, "gridedge_run": 3}


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """``(module, imported names, line)`` of every import in ``path`` (names empty for ``import x``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [alias.name for alias in node.names], node.lineno))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.args[0].value, [], node.lineno))
    return found


def package_of(module: str) -> str | None:
    top = module.split(".")[0]
    return top if top in LAYERS else None


def edges() -> list[tuple[str, str, str, list[str], int]]:
    """``(source file, its package, imported module, names, line)`` for every import of a project package."""
    out = []
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            for module, names, line in imports(path):
                if package_of(module) is not None:
                    out.append((str(path.relative_to(ROOT)), package, module, names, line))
    return out


def violations(found) -> tuple[list[str], list[str]]:
    """(upward imports, cross-package private imports) among ``found`` (`edges`' rows)."""
    upward, private = [], []
    for source, package, module, names, line in found:
        target = package_of(module)
        if target == package:
            continue
        if LAYERS[target] > LAYERS[package]:
            upward.append(f"{source}:{line} ({package}) imports {module} ({target})")
        parts = module.split(".")[1:] + names
        hidden = [p for p in parts if p.startswith("_") and not p.startswith("__")]
        if hidden:
            private.append(f"{source}:{line} imports private {hidden} of {target} ({module})")
    return upward, private


def test_imports_point_down_the_layers():
    upward, _ = violations(edges())
    assert upward == [], "upward imports:\n" + "\n".join(upward)


def test_no_package_imports_another_packages_private_names():
    _, private = violations(edges())
    assert private == [], "\n".join(private)


def test_package_graph_has_no_cycle():
    graph = {p: set() for p in LAYERS}
    for _, package, module, _, _ in edges():
        if package_of(module) != package:
            graph[package].add(package_of(module))
    state = {}

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == "open":
            pytest.fail("import cycle: " + " -> ".join(path + [node]))
        if state.get(node) == "done":
            return
        state[node] = "open"
        for nxt in sorted(graph[node]):
            visit(nxt, path + [node])
        state[node] = "done"

    for node in graph:
        visit(node, [])


def test_examples_use_public_names_only():
    bad = []
    for path in sorted((ROOT / "examples").glob("*.py")):
        for module, names, line in imports(path):
            if package_of(module) is None:
                continue
            hidden = [p for p in module.split(".")[1:] + names if p.startswith("_") and not p.startswith("__")]
            if hidden:
                bad.append(f"{path.name}:{line} imports private {hidden} of {module}")
    assert bad == [], "\n".join(bad)


def test_the_checker_sees_what_it_must_reject(tmp_path):
    """The parser finds top-level, lazy and importlib imports, and the rules flag an upward and a private one."""
    source = tmp_path / "mod.py"
    source.write_text(
        "import os\nfrom gridedge_run.loop import train\n\n"
        "def f():\n    from gradmap_agent.optim import _hidden\n"
        "    return importlib.import_module('baselines.ppo')\n"
    )
    found = [(str(source), "gridedge_env", m, n, line) for m, n, line in imports(source) if package_of(m)]
    assert [m for _, _, m, _, _ in found] == ["gridedge_run.loop", "gradmap_agent.optim", "baselines.ppo"]
    upward, private = violations(found)
    assert len(upward) == 3 and len(private) == 1 and "_hidden" in private[0]
