"""The architecture: seqrec's layers point one way (import-linter's contracts in pyproject.toml), no module
imports itself back through others, and the library never reaches the apps above it."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contracts_hold():
    """``lint-imports`` checks the layers and the forbidden imports declared in pyproject.toml."""
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports (import-linter) is not installed: pip install -e '.[test]'")
    run = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def _module_graph() -> dict[str, set[str]]:
    import grimp

    g = grimp.build_graph("seqrec")
    return {m: {i for i in g.find_modules_directly_imported_by(m) if i.startswith("seqrec")} for m in g.modules}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), ignoring a package's edges to its
    own parents (``seqrec.data.x`` → ``seqrec.data`` is how a package re-exports, not a circle)."""
    def parent(a: str, b: str) -> bool:
        return a.startswith(b + ".") or b.startswith(a + ".")

    edges = {v: {w for w in ws if w in graph and not parent(v, w)} for v, ws in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
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

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in edges:
        if v not in index:
            strong(v)
    return out


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}, "a.w": {"a.x"}}) == [["a.x", "a.y", "a.z"]]
    assert cycles({"a": {"a.b"}, "a.b": {"a"}}) == []  # a package and its own module


def test_no_module_of_seqrec_imports_itself_back():
    assert cycles(_module_graph()) == []


def test_the_workloads_reach_seqrec_only_through_its_command_line():
    """Job entry points are apps: they import seqrec (its CLI), never patch sys.path to find it."""
    for f in sorted((ROOT / "workloads").glob("*.py")):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                pytest.fail(f"{f.name} uses sys.path: install seqrec instead (pip install -e .)")
