"""The model section of a run config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lesionsam.models.backbone.attention import ATTENTION_IMPLS
from lesionsam.models.backbone.config import Sam3DConfig, get_preset
from lesionsam.utils.dataclass_io import to_dict
from lesionsam.utils.options import look_up_option


@dataclass(frozen=True)
class ModelConfig:
    """Which method to build, on which backbone sizes, from which weights.

    Attributes:
        method: a registered method name (``lesionsam.models.known_methods()``), e.g. ``"sam_med3d"``.
        preset: the backbone preset the sizes start from (``"sam_med3d_vit_b"``, ``"tiny"``).
        backbone: the backbone sizes. In YAML, give only the fields that differ from ``preset``;
            the saved config always holds all of them.
        checkpoint: an official SAM-Med3D / SAM-Med3D-turbo file to initialise the backbone from
            (a local path; nothing is downloaded), or None for random initialisation.
        attention: ``"fast"`` (exact fold of the window padding) or ``"naive"`` (official, slow).
        options: method-specific settings, checked by the method's own options dataclass.
        full_res_channels: None (default): no full-resolution decoder path (the official decoder; the key is left
            out of a written config). An integer c >= 1: a fresh, zero-initialised full-resolution path whose stem
            has c channels at the crop's resolution (:class:`~lesionsam.models.backbone.full_res.FullResPath`;
            8 is a good start). Only for methods that declare it (``lesionsam methods``).
    """

    method: str = "sam_med3d"
    preset: str = "sam_med3d_vit_b"
    backbone: Sam3DConfig = field(default_factory=Sam3DConfig)
    checkpoint: str | None = None
    attention: str = "fast"
    options: dict[str, Any] = field(default_factory=dict)
    full_res_channels: int | None = field(default=None, metadata={"omit_none": True})

    def __post_init__(self) -> None:
        look_up_option(self.attention, ATTENTION_IMPLS, what="attention implementation")
        c = self.full_res_channels
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
            raise ValueError(f"model.full_res_channels must be an integer >= 1 (or null: no path), got {c!r}")

    @classmethod
    def _from_dict_hook(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Fill ``backbone`` from ``preset`` and apply the YAML's backbone fields on top."""
        preset = data.get("preset", cls.preset)
        base = to_dict(get_preset(preset))
        base.update(data.get("backbone") or {})
        data["backbone"] = base
        return data

    @classmethod
    def from_preset(cls, preset: str, **kwargs: Any) -> ModelConfig:
        """A config whose backbone is the named preset."""
        return cls(preset=preset, backbone=get_preset(preset), **kwargs)
