"""The package's layout: no import cycle between its parts, and no module far over 500 lines.

A part is a subpackage of ``amc`` (``amc/search``, ``amc/pruners``...) or a top-level module
(``amc/evaluator.py``). Every import counts, module-level or inside a function (a lazy import hides a
cycle from Python, not from a reader), so the parts form a directed acyclic graph: the data flow of
DESIGN.md, each layer importing only those below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

AMC = Path(__file__).resolve().parents[1] / "amc"
MAX_LINES = 560  # "no module much over 500 lines"


def _part(module: str) -> str | None:
    bits = module.split(".")
    return bits[1] if bits[0] == "amc" and len(bits) > 1 else None


def import_graph(root: Path = AMC) -> dict[str, set[str]]:
    """Part -> the other parts it imports."""
    graph: dict[str, set[str]] = {}
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root.parent).with_suffix("")
        src = _part(".".join(rel.parts))
        if src is None:
            continue
        graph.setdefault(src, set())
        for node in ast.walk(ast.parse(f.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + ([f"amc.{a.name}" for a in node.names] if node.module == "amc" else [])
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                dst = _part(name)
                if dst is not None and dst != src and ((root / dst).is_dir() or (root / f"{dst}.py").exists()):
                    graph[src].add(dst)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one part (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_the_parts_of_the_package():
    graph = import_graph()
    assert {"search", "envs", "pruners", "importance", "evaluator"} <= set(graph)
    assert cycles(graph) == []


@pytest.mark.parametrize("path", sorted(AMC.rglob("*.py")), ids=lambda p: str(p.relative_to(AMC.parent)))
def test_no_module_far_over_500_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES
