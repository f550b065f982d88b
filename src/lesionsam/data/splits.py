"""Reproducible train/val/test splits of a data set's cases, as JSON (``splits.json``)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lesionsam.data.layouts import Case, listing
from lesionsam.utils.dataclass_io import atomic_write_bytes

# ---------------------------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------------------------

SPLIT_NAMES = ("train", "val", "test")


def _count(fraction: float, n: int) -> int:
    k = int(math.floor(fraction * n + 0.5))
    return max(k, 1) if fraction > 0 and n > 1 else k


def make_splits(
    cases: Sequence[Case | str], *, seed: int, val_fraction: float = 0.2, test_fraction: float = 0.0
) -> dict[str, list[str]]:
    """A reproducible random split of case ids.

    Ids are sorted first, so the split depends only on the set of ids and ``seed``. A non-zero fraction gets at
    least one case (when there are at least two cases).

    Args:
        cases: cases or case ids.
        seed: random seed.
        val_fraction: fraction of cases for validation, in [0, 1).
        test_fraction: fraction of cases held out for testing, in [0, 1).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted.

    Raises:
        ValueError: duplicate ids, bad fractions, or no case left for training.
    """
    ids = sorted(c.case_id if isinstance(c, Case) else str(c) for c in cases)
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"duplicate case ids: {listing(dupes)}")
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    n = len(ids)
    n_test, n_val = _count(test_fraction, n), _count(val_fraction, n)
    if n - n_test - n_val < 1:
        raise ValueError(
            f"{n} case(s) leave none for training with val_fraction={val_fraction}, test_fraction={test_fraction}"
        )
    order = np.random.default_rng(seed).permutation(n)
    picked = [ids[i] for i in order]
    return {
        "train": sorted(picked[n_test + n_val :]),
        "val": sorted(picked[n_test : n_test + n_val]),
        "test": sorted(picked[:n_test]),
    }


def _check_splits(splits: Any, where: str) -> dict[str, list[str]]:
    if not isinstance(splits, Mapping):
        raise ValueError(f"{where}: splits must be a mapping of split name to case ids, got {type(splits).__name__}")
    out: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for name, ids in splits.items():
        if not isinstance(ids, list | tuple) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"{where}: split {name!r} must be a list of case-id strings")
        for i in ids:
            if i in seen:
                raise ValueError(f"{where}: case {i!r} is in both {seen[i]!r} and {name!r}")
            seen[i] = str(name)
        out[str(name)] = list(ids)
    return out


def write_splits(splits: Mapping[str, Sequence[str]], path: str | os.PathLike[str]) -> Path:
    """Write splits as JSON (atomically: temp file + rename).

    Raises:
        ValueError: not a mapping of names to lists of ids, or an id in two splits.
    """
    checked = _check_splits({k: list(v) for k, v in splits.items()}, str(path))
    return atomic_write_bytes(path, (json.dumps(checked, indent=2) + "\n").encode())


def read_splits(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Read splits written by :func:`write_splits`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not valid JSON or not a mapping of split names to disjoint lists of ids.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"splits file not found: {p} (create one with make_splits + write_splits)")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{p} is not valid JSON: {exc}") from None
    return _check_splits(data, str(p))
