"""The package's import graph, read from the source with ``ast`` (imports inside functions included, and
``importlib.import_module("...")`` / ``__import__("...")`` calls with a literal name): no circle, and the layers of
DESIGN.md hold (models/ imports no training, inference, data or cli; data/ imports no models)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "lesionsam"
BENCH = "lesionsam.benchmarking"


def _module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules(src: Path = SRC, package: str = PACKAGE) -> dict[str, Path]:
    return {_module_name(p, src): p for p in sorted((src / package).rglob("*.py"))}


def _dynamic_import(node: ast.Call) -> str | None:
    """The module a call ``importlib.import_module("a.b")``, ``import_module("a.b")`` or ``__import__("a.b")``
    imports, when its name is a literal absolute one (an f-string or a variable is not read: None)."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if isinstance(func, ast.Attribute) and not (isinstance(func.value, ast.Name) and func.value.id == "importlib"):
        return None
    if name not in ("import_module", "__import__") or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("."):
        return arg.value
    return None


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The package modules ``path`` imports (``from a import b`` counts ``a.b`` when that is a module; a literal
    ``importlib.import_module`` / ``__import__`` call counts its module)."""
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
        elif isinstance(node, ast.Call) and (module := _dynamic_import(node)) is not None:
            found.add(module)
    return {m for m in found if m in known and m != name}


def _graph(src: Path = SRC, package: str = PACKAGE) -> dict[str, set[str]]:
    mods = _modules(src, package)
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


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize(
    "call",
    [
        'importlib.import_module("pkg.methods")',
        '__import__("pkg.methods")',
        'import_module("pkg.methods")',
    ],
)
def test_the_reader_follows_import_module_with_a_literal_name(tmp_path: Path, call: str) -> None:
    """The registry circle as it was (the registry loads its methods with ``importlib.import_module``, the methods
    import the registry) is found; a name built at run time (an f-string) is not read."""
    methods = {
        "pkg/methods/__init__.py": "from pkg.methods import m\n",
        "pkg/methods/m.py": "from pkg.registry import r\n",
    }
    registry = f"import importlib\nfrom importlib import import_module\n\n\ndef r():\n    {call}\n"
    src = _write_package(tmp_path / "a", {"pkg/__init__.py": "", "pkg/registry.py": registry, **methods})
    graph = _graph(src, "pkg")
    assert graph["pkg.registry"] == {"pkg.methods"}
    assert _cycle(graph) == ["pkg.methods", "pkg.methods.m", "pkg.registry", "pkg.methods"]
    dynamic = "import importlib\n\n\ndef r(name):\n"
    dynamic += (
        '    importlib.import_module(f"pkg.{name}")\n    importlib.import_module(name)\n    __import__(f"pkg.{name}")\n'
    )
    src = _write_package(tmp_path / "b", {"pkg/__init__.py": "", "pkg/registry.py": dynamic, **methods})
    assert _graph(src, "pkg")["pkg.registry"] == set() and _cycle(_graph(src, "pkg")) is None


def test_the_registry_imports_no_method_and_the_package_does() -> None:
    graph = _graph()
    assert not {d for d in graph["lesionsam.models.registry"] if d.startswith("lesionsam.models.methods")}
    assert "lesionsam.models.methods" in graph["lesionsam.models"]
    source = (SRC / "lesionsam" / "models" / "registry.py").read_text()
    assert "import_module" not in source and "__import__" not in source
