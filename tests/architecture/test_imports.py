"""The package's import graph, read from the source with ``ast`` (imports inside functions included): no circle, and
the layers of DESIGN.md hold (models/ imports no training, inference, data or cli; data/ imports no models)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "lesionsam"
BENCH = "lesionsam.benchmarking"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The package modules ``path`` imports (``from a import b`` counts ``a.b`` when that is a module)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(path, name, known) for name, path in mods.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle among the modules (their packages' ``__init__`` re-exports aside), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if state.get(nxt) is None and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_circle() -> None:
    graph = _graph()
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph) or [])}"


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("lesionsam.models", ("lesionsam.training", "lesionsam.inference", "lesionsam.data", "lesionsam.cli", BENCH)),
        ("lesionsam.data", ("lesionsam.models", "lesionsam.training", "lesionsam.inference", "lesionsam.cli", BENCH)),
        (
            "lesionsam.losses",
            ("lesionsam.training", "lesionsam.inference", "lesionsam.cli", "lesionsam.workflows", BENCH),
        ),
        ("lesionsam.training", ("lesionsam.inference", "lesionsam.cli", "lesionsam.workflows", BENCH)),
        (
            "lesionsam.inference",
            ("lesionsam.training", "lesionsam.cli", "lesionsam.workflows", "lesionsam.serve", BENCH),
        ),
        ("lesionsam.serve", ("lesionsam.training", "lesionsam.cli", "lesionsam.workflows", BENCH)),
        ("lesionsam.evaluation", ("lesionsam.cli", "lesionsam.workflows", BENCH)),
        # Benchmarks sit under the workflows; they may import the server's round-trip timer (serve.bench), which the
        # interactive benchmark reports beside the library's own times.
        (BENCH, ("lesionsam.cli", "lesionsam.workflows", "lesionsam.training")),
    ],
)
def test_layers_import_only_downwards(layer: str, forbidden: tuple[str, ...]) -> None:
    bad = sorted(
        f"{mod} imports {dep}"
        for mod, deps in _graph().items()
        if mod == layer or mod.startswith(layer + ".")
        for dep in deps
        if dep.startswith(forbidden)
    )
    assert not bad, "; ".join(bad)


def test_the_circle_finder_finds_a_circle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "pkg": {"pkg.x"}, "pkg.x": set()}) is None
    assert _cycle({"pkg": {"pkg.x"}, "pkg.x": {"pkg"}}) == ["pkg", "pkg.x", "pkg"]
