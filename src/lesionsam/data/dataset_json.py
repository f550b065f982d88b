"""``dataset.json`` of the Medical Segmentation Decathlon / nnU-Net layout: read it, and its label names.

Kept apart from :mod:`lesionsam.data.datasets` (which needs torch) so that light commands (``evaluate``) can read
label names without importing torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def read_dataset_json(root: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``<root>/dataset.json`` as a dict, or None if there is none.

    Raises:
        ValueError: the file is not a JSON object.
    """
    path = Path(root) / "dataset.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); fix or remove it (the folders alone also work)") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(meta).__name__}")
    return meta


def dataset_labels(meta: Mapping[str, Any] | None) -> dict[int, str] | None:
    """Label value → name from a dataset.json (MSD ``{"0": "background"}`` or nnU-Net ``{"background": 0}``).

    nnU-Net region entries (``"whole tumour": [1, 2, 3]``) contribute their values. None without labels.
    """
    if not meta or not isinstance(meta.get("labels"), Mapping):
        return None
    out: dict[int, str] = {}
    for key, value in meta["labels"].items():
        if str(key).strip().lstrip("-").isdigit():
            out[int(key)] = str(value)
        else:
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, (int, float)) and float(v).is_integer():
                    out.setdefault(int(v), str(key))
    return out or None
