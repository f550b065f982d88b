"""Sizes of the SAM-Med3D backbone, as one frozen dataclass, and the named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lesionsam.utils.options import look_up_option

#: State-dict prefixes of SAM-Med3D's own parts (official keys); a method's new parts use others.
BACKBONE_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


@dataclass(frozen=True)
class Sam3DConfig:
    """Every size of a SAM-Med3D model (image encoder, prompt encoder, mask decoder).

    The defaults are the official ``vit_b_ori`` model (SAM-Med3D and SAM-Med3D-turbo): a 128³ crop,
    16³ patches (an 8³ token grid), a ViT-B encoder with global attention at blocks 2, 5, 8, 11 and
    14³ windows elsewhere, and a 384-wide prompt encoder and mask decoder.

    Args:
        img_size: side of the cubic input crop, in voxels. Must be a multiple of ``patch_size``.
        patch_size: side of the cubic patch of the patch embedding, in voxels.
        in_chans: image channels (1 for SAM-Med3D).
        encoder_embed_dim: width of the ViT encoder tokens.
        encoder_depth: number of ViT blocks.
        encoder_num_heads: attention heads per ViT block; must divide ``encoder_embed_dim``.
        encoder_global_attn_indexes: blocks that attend over the whole token grid; the others attend
            within cubic windows of ``window_size`` tokens (the grid is zero-padded up to a multiple).
        window_size: side of an attention window, in tokens.
        mlp_ratio: hidden width of the ViT MLP as a multiple of ``encoder_embed_dim``.
        prompt_embed_dim: width of the prompt encoder, mask decoder and encoder neck output;
            must be divisible by 3 (random-Fourier features over three axes, sin/cos/sin) and by 8
            (decoder upscaling), and ``prompt_embed_dim // 2`` by ``decoder_num_heads``.
        mask_in_chans: hidden channels of the mask-prompt downscaling convolutions; divisible by 4.
        decoder_depth, decoder_num_heads, decoder_mlp_dim, attention_downsample_rate: the two-way
            transformer of the mask decoder (official: 2, 8, 2048, 2).
        num_multimask_outputs: masks predicted when ``multimask_output=True`` (official: 3).
        iou_head_depth, iou_head_hidden_dim: the IoU prediction MLP (official: 3, 256).
    """

    img_size: int = 128
    patch_size: int = 16
    in_chans: int = 1
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 384
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256

    def __post_init__(self) -> None:
        # Lists from YAML become tuples so that the config stays hashable and frozen.
        object.__setattr__(self, "encoder_global_attn_indexes", tuple(int(i) for i in self.encoder_global_attn_indexes))
        self.validate()

    @property
    def grid_size(self) -> int:
        """Side of the encoder token grid (``img_size // patch_size``)."""
        return self.img_size // self.patch_size

    @property
    def low_res_size(self) -> int:
        """Side of the low-resolution mask logits (4 × the token grid)."""
        return 4 * self.grid_size

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent size."""

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"Sam3DConfig: {msg}")

        for name in (
            "img_size",
            "patch_size",
            "in_chans",
            "encoder_embed_dim",
            "encoder_depth",
            "encoder_num_heads",
            "window_size",
            "prompt_embed_dim",
            "mask_in_chans",
            "decoder_num_heads",
            "decoder_mlp_dim",
            "attention_downsample_rate",
            "iou_head_depth",
            "iou_head_hidden_dim",
        ):
            need(int(getattr(self, name)) > 0, f"{name} must be a positive integer, got {getattr(self, name)!r}")
        need(
            self.img_size % self.patch_size == 0,
            f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}; "
            f"use a crop side such as {max(1, round(self.img_size / self.patch_size)) * self.patch_size}",
        )
        need(
            self.encoder_embed_dim % self.encoder_num_heads == 0,
            f"encoder_num_heads {self.encoder_num_heads} does not divide encoder_embed_dim {self.encoder_embed_dim}",
        )
        bad = [i for i in self.encoder_global_attn_indexes if not 0 <= i < self.encoder_depth]
        need(not bad, f"encoder_global_attn_indexes {bad} are outside 0..{self.encoder_depth - 1}")
        need(
            self.prompt_embed_dim % 3 == 0,
            f"prompt_embed_dim {self.prompt_embed_dim} must be divisible by 3 (Fourier features over D, H, W)",
        )
        need(self.prompt_embed_dim % 8 == 0, f"prompt_embed_dim {self.prompt_embed_dim} must be divisible by 8")
        need(
            (self.prompt_embed_dim // self.attention_downsample_rate) % self.decoder_num_heads == 0,
            f"decoder_num_heads {self.decoder_num_heads} must divide "
            f"prompt_embed_dim / attention_downsample_rate = {self.prompt_embed_dim // self.attention_downsample_rate}",
        )
        need(self.mask_in_chans % 4 == 0, f"mask_in_chans {self.mask_in_chans} must be divisible by 4")
        need(self.num_multimask_outputs >= 1, "num_multimask_outputs must be at least 1")

    def replace(self, **changes: object) -> Sam3DConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


#: Named presets. ``sam_med3d_vit_b`` is the official layout of SAM-Med3D and SAM-Med3D-turbo;
#: ``tiny`` is a small model with the same structure, for tests and the CPU demo.
PRESETS: dict[str, Sam3DConfig] = {
    "sam_med3d_vit_b": Sam3DConfig(),
    "tiny": Sam3DConfig(
        img_size=64,
        patch_size=16,
        encoder_embed_dim=96,
        encoder_depth=4,
        encoder_num_heads=4,
        encoder_global_attn_indexes=(1, 3),
        window_size=3,
        prompt_embed_dim=48,
        mask_in_chans=16,
    ),
}


def get_preset(name: str) -> Sam3DConfig:
    """The :class:`Sam3DConfig` of a named preset (``ValueError`` listing the known ones otherwise)."""
    return PRESETS[look_up_option(name, PRESETS, what="backbone preset")]
