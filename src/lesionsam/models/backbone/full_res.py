"""An optional full-resolution path of the mask decoder: a light convolutional stem on the crop whose features at
1/1, 1/2, ... of the crop's resolution are added into the decoder's upsampling from its 4G³ grid to the S³ crop (the
pattern of SAM 2's mask decoder, which adds stride-4 and stride-8 encoder features into its upsampling).

Why: at SAM-Med3D's 1.5 mm and 128³, one low-res logit is 6 mm, so a lesion under 1 cm³ is about two logits across
and its boundary is whatever trilinear upsampling makes of them. The path gives the decoder the crop's own voxels.

**Stem** (:class:`FullResStem`, run in ``encode``, once per crop): ``Conv3d(in, c, 3) + GELU`` at 1/1, then per
further level ``Conv3d(c·2^(k-1), c·2^k, kernel 2, stride 2) + GELU`` at 1/2^k, for the L = log2(patch / 4) levels
between the crop and the 4G³ low-res grid (L = 2 for SAM-Med3D's 16³ patches: 1/1 with c channels, 1/2 with 2c).
Each level's features then go through their 1×1 projection (the skip projection of the decoder's upsampling: it
does not depend on the prompt, so it is computed here, once per crop, and not at every click).

**Head** (:class:`FullResHead`, run in ``decode``): the decoder's upscaled mask embedding (B, E/8, 4G³) and its mask
logits of every mask token (B, T, 4G³), concatenated and projected (1×1) to c·2^(L-1) channels; then, from the
coarsest level to the crop: trilinear ×2 upsampling, the stem's projected features of that level added, and a
3×3×3 convolution + GELU to c·2^(k-1) channels; at the crop's own resolution the features are added and a ReLU
applied, and a 1×1 convolution gives one channel per mask token. That last convolution is **zero-initialised**:
``logits = upsample(low_res_logits) + residual``. A fresh path therefore adds exactly zero, and a model built from
official weights with the path present gives the official outputs; the last convolution gets a gradient from the
first step and every other part from the second.

**Cost.** No 3×3×3 convolution runs at the crop's resolution per decode: on CPU one such convolution of 8 channels at
128³ costs several times the whole SAM-Med3D decode (oneDNN, 2 threads). At 1/1 the head does one trilinear
upsampling, an in-place add and ReLU, and the 1×1 output of the returned mask tokens only, channels-last (the
stem returns its finest features channels-last); spatial context at 1/1 comes from the stem's 3×3×3 convolution
(once per crop) and the 1/2 level's.

``low_res_logits`` are not changed by the path (they are the mask prompt of the next click).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: State-dict prefix of the path in a model (not a backbone prefix: official weights leave it as built).
FULL_RES_PREFIX = "full_res."


def full_res_levels(patch_size: int) -> int:
    """Number L of ×2 steps from the 4G³ low-res grid up to the crop: log2(patch_size / 4) (``ValueError`` unless
    ``patch_size`` is a power of two >= 8)."""
    levels = int(round(math.log2(max(1, patch_size)))) - 2
    if levels < 1 or 2 ** (levels + 2) != patch_size:
        raise ValueError(
            f"the full-resolution decoder path (model.full_res_channels) needs a power-of-two patch size >= 8 (the "
            f"low-res grid is 4 tokens per patch side), got patch_size {patch_size}"
        )
    return levels


@dataclass
class FullResEncoded:
    """What ``encode`` returns for a model with the full-resolution path (cache it to decode many prompts).

    Attributes:
        embedding: (B, E, G, G, G) image embedding.
        features: the stem's features of the crop, finest first: (B, c·2^k, S/2^k, S/2^k, S/2^k) for k = 0..L-1.
    """

    embedding: Tensor
    features: tuple[Tensor, ...]


def _pointwise(conv: nn.Conv3d, x: Tensor, rows: slice | None = None) -> Tensor:
    """A 1×1×1 convolution as a matrix product over the channels of channels-last voxels (on CPU, oneDNN's 3D
    convolution of few channels at large grids is many times slower); ``rows`` selects output channels.

    x (B, Cin, D, H, W), best channels-last → (B, Cout, D, H, W) channels-last (a view of (B, D, H, W, Cout)).
    """
    weight, bias = conv.weight.flatten(1), conv.bias
    if rows is not None:
        weight = weight[rows]
        bias = None if bias is None else bias[rows]
    out = F.linear(x.permute(0, 2, 3, 4, 1), weight.to(x.dtype), None if bias is None else bias.to(x.dtype))
    return out.permute(0, 4, 1, 2, 3)


class FullResStem(nn.Module):
    """The crop → projected features at 1/1, 1/2, ..., 1/2^(L-1) (channels c, 2c, ..., c·2^(L-1)).

    Args:
        in_chans: image channels.
        channels: c, the channels at the crop's resolution.
        levels: L (:func:`full_res_levels`).
    """

    def __init__(self, *, in_chans: int, channels: int, levels: int) -> None:
        super().__init__()
        widths = [channels * 2**k for k in range(levels)]
        self.widths = tuple(widths)
        self.convs = nn.ModuleList([nn.Conv3d(in_chans, widths[0], kernel_size=3, padding=1)])
        self.convs.extend(nn.Conv3d(a, b, kernel_size=2, stride=2) for a, b in zip(widths, widths[1:], strict=False))
        self.skips = nn.ModuleList(nn.Conv3d(w, w, kernel_size=1) for w in widths)
        self.act = nn.GELU()

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        """(B, in_chans, S, S, S) → L tensors, finest first (see :class:`FullResEncoded`); the finest channels-last."""
        out = []
        x = image
        for k, (conv, skip) in enumerate(zip(self.convs, self.skips, strict=True)):
            x = self.act(conv(x))
            # the crop's level is used channels-last (in place, then a matrix product), the others by a convolution
            out.append(_pointwise(skip, x) if k == 0 else _pointwise(skip, x).contiguous())
        return tuple(out)


class FullResHead(nn.Module):
    """The decoder's 4G³ mask embedding and logits + the stem's features → (B, T, S³) residual logits.

    Args:
        embed_channels: channels of the decoder's upscaled mask embedding (E/8).
        num_mask_tokens: T, the decoder's mask tokens (one residual channel each).
        channels: c (as the stem's).
        levels: L (as the stem's).
    """

    def __init__(self, *, embed_channels: int, num_mask_tokens: int, channels: int, levels: int) -> None:
        super().__init__()
        widths = [channels * 2**k for k in range(levels)]
        self.entry = nn.Conv3d(embed_channels + num_mask_tokens, widths[-1], kernel_size=1)
        # level k >= 1 (1/2^k): a 3×3×3 convolution c·2^k → c·2^(k-1); the crop's level has none (see the module)
        self.convs = nn.ModuleList(nn.Conv3d(w, widths[k - 1], kernel_size=3, padding=1) for k, w in enumerate(widths))
        del self.convs[0]
        self.act = nn.GELU()
        self.out = nn.Conv3d(channels, num_mask_tokens, kernel_size=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def levels(self) -> int:
        """L, the ×2 steps from the 4G³ grid to the crop."""
        return len(self.convs) + 1

    def forward(
        self, embedding: Tensor, masks: Tensor, features: tuple[Tensor, ...], selection: slice | None = None
    ) -> Tensor:
        """Residual logits of the selected mask tokens.

        Args:
            embedding: (B, E/8, 4G, 4G, 4G) the decoder's upscaled mask embedding.
            masks: (B, T, 4G, 4G, 4G) its low-res logits of every mask token.
            features: the stem's features, finest first (:class:`FullResEncoded`), batch 1 or B.
            selection: the mask tokens returned (as the decoder's masks); None: all T.

        Returns:
            (B, M, S, S, S) float residual to add to the upsampled low-res logits (zero for a fresh head).
        """
        if len(features) != self.levels:
            raise ValueError(
                f"the full-resolution head has {self.levels} level(s) but got {len(features)} stem feature map(s)"
            )
        x = _pointwise(self.entry, torch.cat([embedding, masks.to(embedding.dtype)], dim=1))
        for k in reversed(range(self.levels)):
            skip = features[k]
            if skip.shape[0] != x.shape[0]:
                skip = skip.expand(x.shape[0], *skip.shape[1:])
            if k:  # oneDNN's convolution wants the default memory format (channels-last falls back to a slow one)
                x = F.interpolate(x.contiguous(), size=skip.shape[-3:], mode="trilinear", align_corners=False)
                x = self.act(self.convs[k - 1](x + skip.to(x.dtype)))
            else:  # channels-last and in place: the crop's level holds the largest tensors
                x = x.contiguous(memory_format=torch.channels_last_3d)
                x = F.interpolate(x, size=skip.shape[-3:], mode="trilinear", align_corners=False)
                x = x.add_(skip.to(x.dtype)).relu_()
        return _pointwise(self.out, x, selection)


class FullResPath(nn.Module):
    """The stem and the head (state-dict keys ``full_res.stem.*`` and ``full_res.head.*`` in a model).

    Args:
        in_chans: image channels.
        embed_dim: prompt embed width E of the mask decoder (its upscaled embedding has E/8 channels).
        num_mask_tokens: the decoder's mask tokens (1 + num_multimask_outputs).
        patch_size: the encoder's patch side (sets the levels: :func:`full_res_levels`).
        channels: c, the channels at the crop's resolution (>= 1).
    """

    def __init__(self, *, in_chans: int, embed_dim: int, num_mask_tokens: int, patch_size: int, channels: int) -> None:
        super().__init__()
        if isinstance(channels, bool) or int(channels) != channels or channels < 1:
            raise ValueError(f"model.full_res_channels must be an integer >= 1, got {channels!r}")
        levels = full_res_levels(patch_size)
        self.channels = int(channels)
        self.stem = FullResStem(in_chans=in_chans, channels=self.channels, levels=levels)
        self.head = FullResHead(
            embed_channels=embed_dim // 8, num_mask_tokens=num_mask_tokens, channels=self.channels, levels=levels
        )

    def residual(self, embedding: Tensor, masks: Tensor, features: tuple[Tensor, ...], selection: slice) -> Tensor:
        """The head's (B, M, S³) residual of the selected mask tokens (``selection``: as the decoder's masks)."""
        return self.head(embedding, masks, features, selection)
