"""User prompts: clicks and boxes from the command line or a JSON prompts file, or clicks taken from a label map
(the simulated clicks of training are in :mod:`lesionsam.data.clicks`; the model's tensors in
:class:`lesionsam.models.Prompts`).

JSON prompt file (one image)::

    {"coordinates": "voxel",            # or "world" (LPS mm); default "voxel" = ITK index (i, j, k)
     "lesions": [
        {"id": 1, "points": [[120, 88, 40], [130, 90, 41]], "labels": [1, 0]},
        {"id": 2, "points": [[60, 150, 22]]},           # labels default to all positive
        {"id": 3, "box": [40, 60, 10, 52, 75, 18]}      # a 3D box i0,j0,k0,i1,j1,k1 (inclusive voxel indices)
     ]}

A lesion's ``box`` (voxel indices, ITK order, inclusive; ``k0 == k1`` for a 2D box drawn on slice k) is its first
prompt; its ``points`` (optional then) refine it. Boxes are voxel indices even in a "world" file (refused there).

For a folder of images, the file maps case ids (file names without their image suffix) to such objects:
``{"case_000": {"lesions": [...]}, "case_001": {...}}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from lesionsam.data.clicks import first_click
from lesionsam.data.io import Volume
from lesionsam.inference.boxes import Box, parse_box
from lesionsam.inference.predictor import LesionClicks
from lesionsam.utils.components import label_lesions


def parse_point(text: str) -> tuple[float, float, float]:
    """``"i,j,k"`` → three floats (ValueError with the expected form otherwise)."""
    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ValueError(f"point {text!r} must be three comma-separated numbers i,j,k (e.g. 120,88,40)")
    return values  # type: ignore[return-value]


def clicks_from_args(
    points: Sequence[str], negatives: Sequence[str] = (), boxes: Sequence[str] = ()
) -> list[LesionClicks]:
    """One lesion from ``--point`` (positive) and ``--negative`` clicks, or one lesion per ``--box`` (the clicks
    then refine the one box's lesion)."""
    parsed = [parse_box(b) for b in boxes]
    if len(parsed) > 1 and (points or negatives):
        raise ValueError("--point/--negative refine one --box: give a single --box with them, or boxes alone")
    if not points and not parsed:
        raise ValueError("give at least one positive --point i,j,k inside the lesion (or a --box around it)")
    pts = [parse_point(p) for p in points] + [parse_point(n) for n in negatives]
    labels = [1] * len(points) + [0] * len(negatives)
    if not parsed:
        return [LesionClicks(points=np.array(pts), labels=np.array(labels), lesion_id=1)]
    lesions = [
        LesionClicks(points=np.zeros((0, 3)), labels=np.zeros(0), lesion_id=n, box=b) for n, b in enumerate(parsed, 1)
    ]
    if pts:
        lesions[0] = LesionClicks(points=np.array(pts), labels=np.array(labels), lesion_id=1, box=parsed[0])
    return lesions


def _lesions_from_obj(obj: Any, where: str) -> tuple[list[LesionClicks], bool]:
    if not isinstance(obj, Mapping) or "lesions" not in obj:
        raise ValueError(f"{where}: expected an object with a 'lesions' list")
    coords = obj.get("coordinates", "voxel")
    if coords not in ("voxel", "world"):
        raise ValueError(f"{where}: 'coordinates' must be 'voxel' or 'world', got {coords!r}")
    if not isinstance(obj["lesions"], list):
        raise ValueError(f"{where}: 'lesions' must be a list of {{'points': [[i, j, k], ...]}}")
    lesions = []
    for n, item in enumerate(obj["lesions"]):
        if not isinstance(item, Mapping) or ("points" not in item and "box" not in item):
            raise ValueError(
                f"{where}: lesion {n} needs a 'points' list of [i, j, k] or a 'box' [i0, j0, k0, i1, j1, k1]"
            )
        name = f"lesion {n}" + (f" (id {item['id']!r})" if "id" in item else "")
        box = _box(item["box"], f"{where}: {name}, field 'box'") if "box" in item else None
        if box is not None and coords == "world":
            raise ValueError(
                f"{where}: {name}: a 'box' is in voxel indices; it cannot be used with 'coordinates': 'world'"
            )
        pts = _numbers(item.get("points", []), float, f"{where}: {name}, field 'points'", "a list of [i, j, k] numbers")
        if box is not None and pts.size == 0:
            pts = pts.reshape(0, 3)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(f"{where}: {name} points must be a list of [i, j, k], got shape {pts.shape}")
        labels = _numbers(item.get("labels", [1] * len(pts)), np.int64, f"{where}: {name}, field 'labels'", "1 or 0")
        lesion_id = _numbers(item.get("id", n + 1), np.int64, f"{where}: {name}, field 'id'", "an integer")
        try:
            lesions.append(LesionClicks(points=pts, labels=labels, lesion_id=int(lesion_id), box=box))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    if not lesions:
        raise ValueError(f"{where}: the 'lesions' list is empty")
    return lesions, coords == "world"


def _box(value: Any, where: str) -> Box:
    """A prompt file's ``box`` field: six integers i0, j0, k0, i1, j1, k1 (inclusive voxel indices)."""
    arr = _numbers(value, np.int64, where, "six integers i0, j0, k0, i1, j1, k1")
    if arr.shape != (6,):
        raise ValueError(f"{where} must be six integers [i0, j0, k0, i1, j1, k1], got {value!r}")
    try:
        return Box(lo=tuple(int(v) for v in arr[:3]), hi=tuple(int(v) for v in arr[3:]))  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _numbers(value: Any, dtype: Any, where: str, expected: str) -> np.ndarray:
    """``value`` as a NumPy array of numbers (strings, booleans and nested junk refused, naming the field)."""

    def bad(v: Any) -> bool:
        if isinstance(v, (list, tuple)):
            return any(bad(x) for x in v)
        return isinstance(v, bool) or not isinstance(v, (int, float))

    if bad(value):
        raise ValueError(f"{where} must hold numbers ({expected}), got {value!r}")
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must hold numbers ({expected}), got {value!r}") from None
    if dtype is not float:
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"{where} must hold integers ({expected}), got {value!r}")
        arr = arr.astype(dtype)
    return arr


def read_prompt_file(path: str | os.PathLike[str]) -> dict[str | None, tuple[list[LesionClicks], bool]]:
    """Read a prompt JSON file.

    Returns:
        ``{None: (lesions, world)}`` for a single-image file, or ``{case_id: (lesions, world)}`` for a folder.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file not found: {p}")
    try:
        obj = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p} is not valid JSON: {exc}") from None
    if isinstance(obj, Mapping) and "lesions" in obj:
        return {None: _lesions_from_obj(obj, str(p))}
    if isinstance(obj, Mapping):
        return {str(case): _lesions_from_obj(item, f"{p} [{case}]") for case, item in obj.items()}
    raise ValueError(f"{p}: expected a JSON object with 'lesions' (one image) or case ids (a folder)")


def clicks_from_label(
    label: Volume, *, value: int, source: str = "label", allow_empty: bool = False
) -> list[LesionClicks]:
    """One centre click per connected lesion of ``label == value`` (26-connectivity), as ITK (i, j, k).

    The click is the lesion's interior-most voxel (largest distance to its border), the usual first click of
    interactive-segmentation benchmarks. Lesions are numbered 1, 2, ... by decreasing size.

    Raises:
        ValueError: the label map has no voxel of ``value`` (the message lists the values present), unless
            ``allow_empty`` (then no clicks are returned).
    """
    arr = np.asarray(label.array)
    target = arr == value
    if not target.any():
        if allow_empty:
            return []
        present = np.unique(arr)[:10].tolist()
        raise ValueError(f"{source}: label value {value} not found; values present: {present}")
    comps, n = label_lesions(target)
    sizes = ndimage.sum_labels(np.ones_like(comps), comps, index=np.arange(1, n + 1))
    order = np.argsort(-sizes, kind="stable")
    lesions = []
    for rank, idx in enumerate(order, start=1):
        dhw, _ = first_click(comps == idx + 1, mode="center")
        ijk = np.asarray(dhw, dtype=float)[::-1]
        lesions.append(LesionClicks(points=ijk[None], labels=np.array([1]), lesion_id=rank))
    return lesions
