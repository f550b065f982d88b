""" "A lesion is a 26-connected component" is written in one place (``utils/components.py``): no other module labels
connected components with SciPy itself (read from the source with ``ast``)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "lesionsam"

#: Modules that may call ``ndimage.label`` themselves, and why.
ALLOWED = {
    "utils/components.py": "the one definition of a lesion",
    "data/synthetic_shapes.py": "the synthetic organ's largest face-connected part: a shape being drawn, not a lesion",
}


def labelling_calls(source: str, filename: str) -> list[str]:
    """``file:line`` of every ``ndimage.label(...)`` / ``scipy.ndimage.label(...)`` call in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "label":
            owner = node.func.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if name == "ndimage":
                found.append(f"{filename}:{node.lineno}")
    return found


def test_lesions_are_labelled_only_by_utils_components() -> None:
    paths = sorted(PACKAGE.rglob("*.py"))
    bad = [
        hit
        for p in paths
        if (rel := p.relative_to(PACKAGE).as_posix()) not in ALLOWED
        for hit in labelling_calls(p.read_text(), rel)
    ]
    assert not bad, f"label lesions with lesionsam.utils.components.label_lesions: {', '.join(bad)}"


def test_the_checker_finds_a_labelling_call() -> None:
    source = "from scipy import ndimage\nimport scipy\nndimage.label(m)\nscipy.ndimage.label(m, structure=s)\nx.label\n"
    assert labelling_calls(source, "x.py") == ["x.py:3", "x.py:4"]
