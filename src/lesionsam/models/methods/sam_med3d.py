"""Plain SAM-Med3D (and SAM-Med3D-turbo weights): click-prompted, the baseline every method builds on.

Registered three times, as the same model with different training losses:

* ``sam_med3d`` — the model as released (used for inference with official weights; trains with DiceCE);
* ``finetune`` — the fine-tuning baseline of the SGP-SAM ablations: SAM-Med3D + DiceCE;
* ``finetune_zoom`` — SAM-Med3D fine-tuned with the Zoom Loss (Dice + voxel-balanced focal).
"""

from __future__ import annotations

from lesionsam.models.backbone import Sam3D, build_sam3d
from lesionsam.models.config import ModelConfig
from lesionsam.models.registry import register_method, register_preset


def _build(config: ModelConfig, options: None) -> Sam3D:
    return build_sam3d(config.backbone, attn_impl=config.attention, full_res_channels=config.full_res_channels)


register_method(
    "sam_med3d",
    description="SAM-Med3D / SAM-Med3D-turbo with click and mask prompts",
    loss="dice_ce",
    full_res=True,
)(_build)
register_method(
    "finetune", description="ablation: SAM-Med3D fine-tuned with DiceCE (baseline)", loss="dice_ce", full_res=True
)(_build)
register_preset(
    "finetune_zoom",
    of="finetune",
    loss="zoom",
    loss_options={"balance": "none"},  # as sgp_sam's (lesionsam sweep --stage loss)
    description="ablation: SAM-Med3D fine-tuned with the Zoom Loss",
)
