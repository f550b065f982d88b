"""Helpers shared by the methods that add parts to the SAM-Med3D backbone."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from lesionsam.models.checkpoint import BACKBONE_PREFIXES


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
