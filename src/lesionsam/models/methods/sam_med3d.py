"""Plain SAM-Med3D (and SAM-Med3D-turbo weights): click-prompted, the baseline every method builds on."""

from __future__ import annotations

from lesionsam.models.backbone import Sam3D, build_sam3d
from lesionsam.models.config import ModelConfig
from lesionsam.models.registry import register_method


@register_method("sam_med3d", description="SAM-Med3D / SAM-Med3D-turbo with click and mask prompts")
def build(config: ModelConfig, options: None) -> Sam3D:
    return build_sam3d(config.backbone, attn_impl=config.attention)
