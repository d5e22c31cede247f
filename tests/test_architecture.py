"""The layers hold: every module's imports (parsed, lazy ones included) against the layer table in
ARCHITECTURE.md, the one definition of the layers. Fails on a module the table does not place, an
upward import not listed as known, a stale known entry, an import cycle, or a module-level torch
import in a module marked torch-free."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folders installed under another name (pyproject.toml's package-dir).
FOLDERS = {"hamedge": "hamedge", "training": "hamedge.training",
           "calibration": "hamedge.calibration"}
HEAVY = ("torch", "triton", "tensorrt")


# -- the table ------------------------------------------------------------------------------------
def read_table() -> tuple[dict[str, tuple[int, bool]], set[tuple[str, str]]]:
    """({table entry: (layer, torch-free)}, {(importer, imported) known upward imports})."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    entries: dict[str, tuple[int, bool]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].isdigit():
            continue
        for name in re.findall(r"`(hamedge[\w.]*)`", cells[1]):
            assert name not in entries, f"{name} is in the layer table twice"
            entries[name] = (int(cells[0]), cells[2].startswith("no"))
    known = set(re.findall(r"^- `([\w.]+)` -> `([\w.]+)`", text, flags=re.M))
    return entries, known


def place(module: str, entries: dict[str, tuple[int, bool]]) -> str | None:
    """The table entry a module belongs to: the longest name equal to it or a package above it.
    The root package entry `hamedge` stands for hamedge/__init__.py alone."""
    best = None
    for name in entries:
        if module == name or (name != "hamedge" and module.startswith(name + ".")):
            if best is None or len(name) > len(best):
                best = name
    return best


# -- the modules and their imports -----------------------------------------------------------------
def source_modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` or the nearest package above it that is one of our modules."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(module: str, path: Path, modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(our modules it imports anywhere, third-party top-level names it imports at module level)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    ours: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != module:
                ours.add(resolved)
    heavy: set[str] = set()

    def top_level(body):  # statements run at import: not function bodies
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(node, ast.Import):
                heavy.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                heavy.add(node.module.split(".")[0])
            for field in ("body", "orelse", "finalbody", "handlers"):
                top_level(getattr(node, field, []) or [])
    top_level(tree.body)
    return ours, heavy & set(HEAVY)


@pytest.fixture(scope="module")
def graph():
    entries, known = read_table()
    modules = source_modules()
    edges = {}
    heavy = {}
    for module, path in modules.items():
        edges[module], heavy[module] = imports(module, path, modules)
    return entries, known, modules, edges, heavy


# -- the checks -----------------------------------------------------------------------------------
def test_every_module_has_a_layer(graph):
    entries, _, modules, _, _ = graph
    missing = sorted(m for m in modules if place(m, entries) is None)
    assert not missing, f"add these to the layer table in ARCHITECTURE.md: {missing}"
    unused = sorted(e for e in entries if not any(place(m, entries) == e for m in modules))
    assert not unused, f"layer table entries without a module: {unused}"


def upward_imports(graph) -> set[tuple[str, str]]:
    entries, _, _, edges, _ = graph
    found = set()
    for src, targets in edges.items():
        for dst in targets:
            if entries[place(dst, entries)][0] > entries[place(src, entries)][0]:
                found.add((src, dst))
    return found


def test_no_upward_imports(graph):
    _, known, _, _, _ = graph
    entries = graph[0]
    new = sorted(upward_imports(graph) - known)
    described = [f"{s} (layer {entries[place(s, entries)][0]}) -> {d} (layer "
                 f"{entries[place(d, entries)][0]})" for s, d in new]
    assert not new, "upward imports: " + "; ".join(described)


def test_known_upward_imports_still_exist(graph):
    _, known, _, _, _ = graph
    stale = sorted(known - upward_imports(graph))
    assert not stale, f"remove from ARCHITECTURE.md's known upward imports: {stale}"


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles(graph):
    _, known, _, edges, _ = graph
    without_known = {src: {d for d in dsts if (src, d) not in known} for src, dsts in edges.items()}
    found = cycles(without_known)
    assert not found, f"import cycles: {found}"


def test_torch_free_modules_import_no_torch_at_module_level(graph):
    entries, _, _, _, heavy = graph
    bad = {m: sorted(h) for m, h in heavy.items() if h and entries[place(m, entries)][1]}
    assert not bad, f"modules marked torch-free in ARCHITECTURE.md import at module level: {bad}"


def test_the_checks_can_fail():
    """The cycle finder and the table parser on hand-made inputs."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    entries = {"hamedge": (10, True), "hamedge.model": (6, False), "hamedge.model.graph": (7, False)}
    assert place("hamedge.model.network", entries) == "hamedge.model"
    assert place("hamedge.model.graph", entries) == "hamedge.model.graph"
    assert place("hamedge.unlisted", entries) is None and place("hamedge", entries) == "hamedge"
