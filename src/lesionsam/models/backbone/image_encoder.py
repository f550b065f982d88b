"""The SAM-Med3D image encoder: a 3D ViT with windowed and global attention blocks and a conv neck."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lesionsam.models.backbone.attention import ATTENTION_IMPLS, Attention3D
from lesionsam.models.backbone.common import LayerNorm3d, MLPBlock
from lesionsam.utils.options import look_up_option

#: ``hook(block_index, tokens (B, G, G, G, C)) -> tokens``.
BlockHook = Callable[[int, Tensor], Tensor]


class PatchEmbed3D(nn.Module):
    """Non-overlapping cubic patches → tokens: (B, C_in, D, H, W) → (B, D/p, H/p, W/p, C)."""

    def __init__(self, *, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 4, 1)


class Block3D(nn.Module):
    """Pre-norm transformer block; the window partition (if any) happens inside :class:`Attention3D`."""

    def __init__(
        self, *, dim: int, num_heads: int, mlp_ratio: float, window_size: int, grid_size: int, attn_impl: str
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention3D(
            dim=dim, num_heads=num_heads, window_size=window_size, grid_size=grid_size, impl=attn_impl
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, G, G, G, C) tokens → same shape."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT3D(nn.Module):
    """3D ViT image encoder of SAM-Med3D.

    Args:
        img_size: side of the cubic input crop in voxels.
        patch_size: patch side in voxels (``img_size`` must be a multiple).
        in_chans: input channels.
        embed_dim, depth, num_heads, mlp_ratio: ViT sizes.
        out_chans: channels of the output embedding (the prompt embed dim).
        window_size: window side in tokens for non-global blocks.
        global_attn_indexes: indices of the blocks with global attention.
        attn_impl: ``"fast"`` (exact fold of the padding, default) or ``"naive"`` (official, padded).

    Input ``(B, in_chans, img_size, img_size, img_size)`` float, axes (D, H, W); output
    ``(B, out_chans, G, G, G)`` with ``G = img_size // patch_size``.
    """

    def __init__(
        self,
        *,
        img_size: int = 128,
        patch_size: int = 16,
        in_chans: int = 1,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 384,
        window_size: int = 14,
        global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
        attn_impl: str = "fast",
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed3D(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block3D(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                window_size=0 if i in global_attn_indexes else window_size,
                grid_size=grid,
                attn_impl=attn_impl,
            )
            for i in range(depth)
        )
        #: recompute block activations in the backward pass (saves memory when training).
        self.grad_checkpointing = False
        self.neck = nn.Sequential(
            nn.Conv3d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm3d(out_chans),
            nn.Conv3d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm3d(out_chans),
        )

    def set_attention_impl(self, impl: str) -> None:
        """Switch every block between ``"fast"`` and ``"naive"`` attention (same weights, same outputs)."""
        impl = look_up_option(impl, ATTENTION_IMPLS, what="attention implementation")
        for blk in self.blocks:
            blk.attn.impl = impl

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError``/``TypeError`` unless ``x`` is a (B, in_chans, S, S, S) float crop."""
        want = f"(B, {self.in_chans}, {self.img_size}, {self.img_size}, {self.img_size})"
        if not isinstance(x, Tensor):
            raise TypeError(f"image_encoder expects a torch.Tensor {want}, got {type(x).__name__}")
        if x.ndim != 5:
            raise ValueError(
                f"image_encoder expects a 5-D tensor {want} (batch, channel, D, H, W), got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"image_encoder expects {self.in_chans} channel(s), got {x.shape[1]} in shape {tuple(x.shape)}; "
                "select one MRI channel or stack channels only for a model built with that many in_chans"
            )
        if tuple(x.shape[2:]) != (self.img_size,) * 3:
            raise ValueError(
                f"image_encoder expects a {self.img_size}³ crop {want}, got {tuple(x.shape)}; crop or pad the "
                f"volume to {self.img_size}³ (or load the weights with img_size= to interpolate positions)"
            )
        if not x.is_floating_point():
            raise TypeError(f"image_encoder expects a floating-point image, got dtype {x.dtype}")

    def forward(self, x: Tensor, *, block_hook: BlockHook | None = None) -> Tensor:
        """(B, in_chans, S, S, S) → (B, out_chans, G, G, G).

        Args:
            x: normalised crops.
            block_hook: optional ``hook(i, tokens) -> tokens`` called after block ``i`` on the
                (B, G, G, G, C) tokens; methods use it to add their parts (SGP-SAM's prompting modules,
                RefSAM3D's adapters) without copying the encoder.
        """
        self.check_input(x)
        x = self.patch_embed(x) + self.pos_embed
        for i, blk in enumerate(self.blocks):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
            if block_hook is not None:
                x = block_hook(i, x)
        return self.neck(x.permute(0, 4, 1, 2, 3))
