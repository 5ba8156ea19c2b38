"""The import graph of ``lpc_fast``: no cycles, and modules that used to be in one import first.

Edges are every import a module can execute: module level, inside functions, and
``importlib.import_module`` of a constant name. ``from pkg import name`` is an edge to the
submodule ``pkg.name`` when that is a module, else to ``pkg``. A cycle makes the import order
matter (a module sees a partly initialised one), so none is allowed.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1] / "lpc_fast"


def _modules() -> dict[str, tuple[pathlib.Path, bool]]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        mods[".".join(parts)] = (path, is_pkg)
    return mods


def _absolute(module: str, is_pkg: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``lpc_fast`` modules it may import (see the module docstring)."""
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for module, (path, is_pkg) in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(module, is_pkg, node.level, node.module) if node.level else node.module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                name = node.args[0].value
                if name.startswith("."):
                    level = len(name) - len(name.lstrip("."))
                    name = _absolute(module, is_pkg, level, name.lstrip(".") or None)
                targets = [name]
            edges[module].update(t for t in targets if t in mods and t != module)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_function_level_and_importlib_imports():
    edges = import_graph()
    assert "lpc_fast.triton" in edges["lpc_fast.dispatch"]  # importlib.import_module("lpc_fast.triton")
    assert "lpc_fast.triton.ops" in edges["lpc_fast.triton"]  # importlib.import_module(".ops", ...)
    assert "lpc_fast.train.factory" in edges["lpc_fast.train.loop"]  # inside run_training


def test_lpc_fast_has_no_import_cycles():
    assert cycles(import_graph()) == []


# Modules that were in cycles, each imported first in a fresh interpreter (a cycle that came back
# could fail there with a partly initialised module). Importing any of them runs lpc_fast/__init__
# first, which imports dispatch and the sampler; the static check above covers every module.
FIRST_IMPORTS = ["lpc_fast.sampler", "lpc_fast.train.loop", "lpc_fast.triton.foreach"]


def test_modules_import_first_in_fresh_interpreters():
    # One interpreter per module, all started at once (each pays torch's import).
    modules = [
        m for m in FIRST_IMPORTS if not m.startswith("lpc_fast.triton.") or importlib.util.find_spec("triton")
    ]
    procs = {
        m: subprocess.Popen(
            [sys.executable, "-c", f"import {m}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for m in modules
    }
    failed = {}
    for module, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        if proc.returncode != 0:
            failed[module] = err[-2000:]
    assert not failed, failed
