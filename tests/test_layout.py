"""The package's shape: no module of ``src/keyfob`` imports, directly or through others,
a module that imports it back.

Why: an import cycle is a design that could not decide which side knows the other (the
gateway's fallback chain once took its own caller's steps as hooks to dodge one). Every
import counts, those under ``TYPE_CHECKING`` and inside functions too: they hide a cycle,
they do not remove it. Read from the source with ``ast``, so nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

#: Cycles left to their owners' work, each to be deleted here when it goes (the test
#: fails while a listed cycle no longer exists, so the list only shrinks).
KNOWN_CYCLES: set[frozenset[str]] = set()


def _modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "keyfob").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The module ``name`` is, or the innermost package holding it (``a.b.C`` -> ``a.b``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ``keyfob`` it imports (every import statement)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        out: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                out.update(filter(None, (_known(a.name, modules) for a in node.names)))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([node.module] if node.module else [])])
                for a in node.names:  # ``from pkg import module`` imports the module
                    hit = _known(f"{base}.{a.name}", modules)
                    out.update(filter(None, [hit if hit != base else _known(base, modules)]))
        out.discard(name)
        graph[name] = {m for m in out if m.startswith("keyfob")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read() -> None:
    graph = import_graph()
    # a few edges known to exist, so an empty graph cannot pass the test below
    assert "keyfob.gateway.attempt" in graph["keyfob.gateway.fallback"]
    assert "keyfob.gateway.fallback" in graph["keyfob.gateway.metered"]
    assert "keyfob.store" in graph["keyfob.oauth.grants"]


def test_no_import_cycles() -> None:
    found = set(cycles(import_graph()))
    assert found - KNOWN_CYCLES == set(), "modules that import each other"
    assert KNOWN_CYCLES - found == set(), "gone: delete it from KNOWN_CYCLES"


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(graph) == [frozenset({"a", "b", "c"})]
