"""SAM-Med3D backbone: the official parts, keys and semantics, with an exact fast window attention."""

from lesionsam.models.backbone.attention import ATTENTION_IMPLS, Attention3D
from lesionsam.models.backbone.config import PRESETS, Sam3DConfig, get_preset
from lesionsam.models.backbone.full_res import FullResEncoded, FullResPath
from lesionsam.models.backbone.image_encoder import ImageEncoderViT3D
from lesionsam.models.backbone.mask_decoder import MaskDecoder3D
from lesionsam.models.backbone.prompt_encoder import PromptEncoder3D
from lesionsam.models.backbone.sam3d import Sam3D, build_sam3d

__all__ = [
    "ATTENTION_IMPLS",
    "Attention3D",
    "FullResEncoded",
    "FullResPath",
    "ImageEncoderViT3D",
    "MaskDecoder3D",
    "PRESETS",
    "PromptEncoder3D",
    "Sam3D",
    "Sam3DConfig",
    "build_sam3d",
    "get_preset",
]
