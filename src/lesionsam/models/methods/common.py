"""Helpers shared by the methods that add parts to the SAM-Med3D backbone."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from lesionsam.models.backbone import Sam3DConfig
from lesionsam.models.backbone.config import BACKBONE_PREFIXES


def upsampling_levels(config: Sam3DConfig, *, owner: str) -> int:
    """Number L of ×2 upsampling steps from the G³ token grid to the S³ crop, log2(patch_size), for a decoder
    that climbs back to the crop through the 4G³ low-res grid (``ValueError`` naming ``owner`` otherwise)."""
    levels = int(round(math.log2(config.patch_size)))
    if 2**levels != config.patch_size or levels < 2:
        raise ValueError(
            f"{owner} needs a power-of-two patch size >= 4 (token grid → crop by ×2 steps, through the 4G³ low-res "
            f"grid), got patch_size {config.patch_size}"
        )
    return levels


def parameter_overhead(model: nn.Module, new_prefixes: Sequence[str], trainable: Sequence[str]) -> dict[str, float]:
    """Parameter counts of a method's new parts against its backbone.

    Args:
        model: the method's model.
        new_prefixes: state-dict prefixes of the new parts (``"adapters."``, ``"lora."``, ...).
        trainable: names of the parameters that train.

    Returns:
        ``backbone`` (the SAM-Med3D parameters), one entry per new part (its prefix without the dot), ``new``
        (their sum), ``ratio`` (new / backbone) and ``trainable`` (the parameters in ``trainable``).
    """
    counts = {"backbone": 0} | {p.rstrip("."): 0 for p in new_prefixes}
    sizes = dict(model.named_parameters())
    for name, p in sizes.items():
        key = "backbone" if name.startswith(BACKBONE_PREFIXES) else name.split(".", 1)[0]
        counts[key] += p.numel()
    new = sum(v for k, v in counts.items() if k != "backbone")
    out: dict[str, float] = dict(counts)
    out["new"] = new
    out["ratio"] = new / max(1, counts["backbone"])
    out["trainable"] = sum(sizes[n].numel() for n in trainable)
    return out


def int_at_least(name: str, value: object, minimum: int) -> int:
    """``value`` as an int when it is a whole number >= ``minimum`` (``ValueError`` naming ``name`` otherwise)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or int(value) != value or value < minimum:  # type: ignore[operator, arg-type]
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)  # type: ignore[arg-type]
