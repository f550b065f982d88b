"""H-SAM's parts: the LoRA update of the encoder's qkv projections, the prior guidance (class-balanced mask-guided
self-attention, learnable mask cross-attention), the stage-2 prior-guided decoder and the hierarchical pixel
decoder, composed by :class:`~lesionsam.models.methods.hsam.HSAM` (whose module docstring gives the whole method).

Notation as in :mod:`lesionsam.models.methods.hsam`: B batch, K foreground classes, K + 1 output channels (channel 0 =
background), E prompt embed dim, G token grid side, N = G³ image tokens, S = G · patch crop side; axes (D, H, W).

**Prior** -- ``p = avgpool_{4³}(softmax_c(z1))``: a softmax over the K + 1 classes (the public code's softmax over a
size-1 axis, a constant, is not reproduced), then the exact mean over each token's 4³ low-res voxels (a proper
resampling; the public code's ``tensor.resize_`` reinterprets memory). ``p`` is (B, K + 1, G, G, G), sums to 1 over
classes, keeps its gradient (stage 2's loss also trains stage 1) and enters stage 2 only through the attention
guidance below (:func:`prior_from_logits`).

**Stage 2** (:class:`PriorGuidedDecoder`, at the G³ token grid: N = 512 tokens for ViT-B at 128³, 64 for the tiny
preset; the 4G³ grid has 64× the tokens, 4096× the cost of full attention), on the stage-1 image tokens X (B, N, E)
with the grid's positional encoding PE and queries T = stage-1 class-token outputs + learned ``class_queries`` Q
(B, K + 1, E):

* class-balanced mask-guided self-attention (image tokens i, j)::

      M_ij = Σ_c ω_c p_c(i) p_c(j),   attn_ij = softmax_j(q_i·k_j / √d + γ_h · log(M_ij + ε)),   ε = 1e-4

  with a learnable per-head scale γ_h (init 1). The class weights ω are the inverse predicted frequency
  ``ω_c = 1 / (f_c + 1/N)``, ``f_c = mean_j p_c(j)`` per sample (detached: a statistic, smoothed by one token), or,
  with ``options.class_weights``, those fixed weights normalised to mean 1. With the adaptive ω and γ = 1 the prior
  factor is ``exp(bias_ij) = M_ij ≈ N Σ_c p_c(i) π_c(j)``, ``π_c = p_c / Σ_j p_c(j)`` the class's normalised
  spatial distribution: a query of class c attends within class c, and an uncertain query gives every class the
  same total prior mass whatever its volume, so a small lesion class is not out-voted by the background's many
  tokens (the inverse-frequency balance of the paper). A uniform prior gives a constant bias: plain attention.
* learnable mask cross-attention (class query c, image token j)::

      attn_cj = softmax_j(q_c·k_j / √d + λ_h · log(p_c(j) + ε))

  with a learnable per-head scale λ_h (init 1), so query c reads the tokens stage 1 assigned to class c.
* around them, SAM's two-way layout: X ← LN(X + CMSA), X ← LN(X + MLP); T ← LN(T + LMCA), T ← LN(T + MLP); then the
  image tokens attend to the refined queries, X ← LN(X + Attn(X, T)).

With ``γ = λ = 0`` stage 2 no longer depends on the prior (the tests check both directions).

**Hierarchical pixel decoder** (:class:`HierarchicalPixelDecoder`) -- U-shaped over levels l = 0..L, side G·2^l,
L = log2(patch) (4 for patch 16): level 0 is the stage-2 image tokens (pointwise E → 4ch); each level up is a
transposed convolution ×2 and GELU; stage 1's 2G features (E/4, after the first upscaling) are added at level 1 and
its 4G features (E/8) at level 2 (pointwise projections), so both stages' upsampled features merge; levels 0..2 end
with a channel LayerNorm (the branches enter at one scale) and levels 1..L-1 with a residual dense 3×3×3 convolution;
at the crop's resolution (level L) the crop itself is concatenated and one dense 3×3×3 convolution gives
``max(2, ch // 2)`` features, in ``torch.channels_last_3d`` (on CPU a dense conv at 8 channels in channels-last is
several times faster than a depthwise one). Widths: 4ch, 2ch, then ch, ch = ``options.decoder_channels``. Weights are
He-initialised so that, from the start, the output depends on every level (with PyTorch's default init the deep
levels reach the crop attenuated ~1e-5). The final logits (B, K + 1, S, S, S) are the per-voxel dot product of these
features with a hypernetwork (MLP E → E → width) of each refined class query, as SAM's mask head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lesionsam.models.backbone.common import LayerNorm3d, MLPBlock
from lesionsam.models.backbone.mask_decoder import TokenAttention

#: Floor inside the logarithm of the attention guidance: log(1e-4) ≈ −9.2 per unit of scale.
GUIDANCE_EPS = 1e-4


class QKVLoRA(nn.Module):
    """Low-rank update of one ``qkv`` ``nn.Linear`` (C → 3C), applied by a forward hook on that layer.

    ``qkv(x) + scale · B A x`` with A (r, C) Kaiming-uniform, B (3C, r) zero (a fresh update is exactly zero) and
    ``scale = alpha / r``. Parameters ``A`` and ``B`` (state-dict keys ``lora.<i>.A``, ``lora.<i>.B``).
    """

    def __init__(self, *, in_features: int, out_features: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.scale = float(alpha) / rank

    def delta(self, x: Tensor) -> Tensor:
        """(..., C) layer input → (..., 3C) update ``scale · B A x``."""
        return F.linear(F.linear(x, self.A), self.B) * self.scale

    def hook(self, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
        """Forward hook of the qkv layer: its (..., 3C) output plus the update of its (..., C) input."""
        return output + self.delta(args[0]).to(output.dtype)


def has_lora_hook(layer: nn.Module) -> bool:
    return any(isinstance(getattr(h, "__self__", None), QKVLoRA) for h in layer._forward_hooks.values())


# ---------------------------------------------------------------------------------------------------- prior
def prior_from_logits(low_res_logits: Tensor, grid: int) -> Tensor:
    """Stage-1 prior at the token grid: softmax over classes, then the mean over each token's block of voxels.

    Args:
        low_res_logits: (B, K + 1, 4G, 4G, 4G) float stage-1 logits, axes (D, H, W).
        grid: G.

    Returns:
        (B, K + 1, G, G, G) float32 probabilities (sum 1 over the class axis).
    """
    side = low_res_logits.shape[-1]
    if low_res_logits.ndim != 5 or side % grid or tuple(low_res_logits.shape[2:]) != (side,) * 3:
        raise ValueError(f"expected (B, K+1, 4G, 4G, 4G) logits for G = {grid}, got {tuple(low_res_logits.shape)}")
    prob = low_res_logits.float().softmax(dim=1)
    return F.avg_pool3d(prob, kernel_size=side // grid)


def class_balance_weights(prior: Tensor, class_weights: Tensor | None = None) -> Tensor:
    """Class weights ω of the class-balanced self-attention.

    Args:
        prior: (B, K + 1, N) float probabilities at the N tokens.
        class_weights: (K + 1,) fixed positive weights, or None for the inverse predicted frequency
            ``1 / (f_c + 1/N)`` with ``f_c`` the mean prior of class c in the sample (detached).

    Returns:
        (B, K + 1) float32 weights (the fixed ones normalised to mean 1).
    """
    if class_weights is not None:
        w = class_weights.to(device=prior.device, dtype=torch.float32)
        return (w / w.mean()).unsqueeze(0).expand(prior.shape[0], -1)
    n = prior.shape[-1]
    freq = prior.detach().float().mean(dim=-1)
    return 1.0 / (freq + 1.0 / n)


def self_attention_guidance(prior: Tensor, weights: Tensor) -> Tensor:
    """``log(M + ε)``, ``M_ij = Σ_c ω_c p_c(i) p_c(j)``: (B, K + 1, N) prior and (B, K + 1) weights → (B, N, N)."""
    p = prior.float()
    affinity = (p * weights.unsqueeze(-1)).transpose(1, 2) @ p
    return torch.log(affinity + GUIDANCE_EPS)


def cross_attention_guidance(prior: Tensor) -> Tensor:
    """``log(p_c(j) + ε)``: (B, K + 1, N) prior → (B, K + 1, N) guidance of class query c on token j."""
    return torch.log(prior.float() + GUIDANCE_EPS)


# ---------------------------------------------------------------------------------------------------- stage 2
class GuidedAttention(nn.Module):
    """Multi-head attention with a per-head learnable multiple of a guidance map added to its logits.

    ``softmax_j(q_i·k_j / √d + s_h · g_ij) v_j`` with ``s`` (heads,) initialised to ``init_scale``
    (``guidance_scale``); without guidance it is plain attention.

    Args:
        dim: token width E.
        num_heads: heads (must divide E).
        init_scale: initial guidance scale of every head.
    """

    def __init__(self, *, dim: int, num_heads: int, init_scale: float = 1.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"guided attention heads {num_heads} must divide the width {dim}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.guidance_scale = nn.Parameter(torch.full((num_heads,), float(init_scale)))

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, guidance: Tensor | None = None) -> Tensor:
        """q (B, Nq, E), k and v (B, Nk, E), guidance (B, Nq, Nk) or None → (B, Nq, E)."""
        qh, kh, vh = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        bias = None
        if guidance is not None:
            bias = (self.guidance_scale.view(1, -1, 1, 1) * guidance.unsqueeze(1)).to(qh.dtype)
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=bias)
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))


class PriorGuidedDecoder(nn.Module):
    """Stage 2's transformer: class-balanced mask-guided self-attention over the image tokens, learnable mask
    cross-attention of the class queries, MLPs, and image-to-query attention (see the module docstring).

    Args:
        dim: width E.
        num_heads: heads of every attention.
        num_channels: K + 1 (learned class queries ``class_queries``, one per output channel).
        mlp_dim: hidden width of the two MLPs.
    """

    def __init__(self, *, dim: int, num_heads: int, num_channels: int, mlp_dim: int) -> None:
        super().__init__()
        self.class_queries = nn.Embedding(num_channels, dim)
        self.self_attn = GuidedAttention(dim=dim, num_heads=num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp_image = MLPBlock(dim, mlp_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = GuidedAttention(dim=dim, num_heads=num_heads)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp_query = MLPBlock(dim, mlp_dim)
        self.norm4 = nn.LayerNorm(dim)
        self.image_to_query = TokenAttention(dim, num_heads)
        self.norm5 = nn.LayerNorm(dim)

    def forward(
        self, image: Tensor, image_pe: Tensor, tokens: Tensor, self_guidance: Tensor, cross_guidance: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Refine.

        Args:
            image: (B, N, E) stage-1 image tokens.
            image_pe: (1 or B, N, E) positional encoding of the grid.
            tokens: (B, K + 1, E) stage-1 class-token outputs.
            self_guidance: (B, N, N) ``log(M + ε)``.
            cross_guidance: (B, K + 1, N) ``log(p + ε)``.

        Returns:
            ``(image, queries)``: (B, N, E) refined image tokens and (B, K + 1, E) refined class queries.
        """
        qpe = self.class_queries.weight.unsqueeze(0).to(tokens.dtype)
        pe = image_pe.to(image.dtype)
        x = image + pe
        image = self.norm1(image + self.self_attn(x, x, image, self_guidance))
        image = self.norm2(image + self.mlp_image(image))
        queries = tokens + qpe
        queries = self.norm3(queries + self.cross_attn(queries + qpe, image + pe, image, cross_guidance))
        queries = self.norm4(queries + self.mlp_query(queries))
        image = self.norm5(image + self.image_to_query(image + pe, queries + qpe, queries))
        return image, queries


class HierarchicalPixelDecoder(nn.Module):
    """U-shaped pixel decoder from the G³ token grid to the S³ crop, merging stage 1's and stage 2's features.

    Levels l = 0..L of side G·2^l (L = log2(patch)); widths ``4ch, 2ch, ch, ..., ch`` and ``out_channels`` at
    level L (see the module docstring).

    Args:
        embed_dim: E.
        in_chans: crop channels (concatenated at level L).
        levels: L (>= 2).
        channels: ch.
    """

    def __init__(self, *, embed_dim: int, in_chans: int, levels: int, channels: int) -> None:
        super().__init__()
        if levels < 2:
            raise ValueError(f"the hierarchical pixel decoder needs at least 2 levels, got {levels}")
        self.levels = levels
        widths = [channels * 2 ** max(0, 2 - level) for level in range(levels)] + [max(2, channels // 2)]
        self.widths = tuple(widths)
        self.stem = nn.Conv3d(embed_dim, widths[0], kernel_size=1)
        self.ups = nn.ModuleList(
            nn.ConvTranspose3d(widths[level - 1], widths[level], kernel_size=2, stride=2)
            for level in range(1, levels + 1)
        )
        self.skip_2g = nn.Conv3d(embed_dim // 4, widths[1], kernel_size=1)
        self.skip_4g = nn.Conv3d(embed_dim // 8, widths[2], kernel_size=1)
        self.refine = nn.ModuleList(
            nn.Conv3d(widths[level], widths[level], kernel_size=3, padding=1) for level in range(1, levels)
        )
        self.head = nn.Conv3d(widths[levels] + in_chans, widths[levels], kernel_size=3, padding=1)
        self.norms = nn.ModuleList(LayerNorm3d(widths[level]) for level in range(3))
        self.act = nn.GELU()
        self._init_weights()

    def _init_weights(self) -> None:
        """He-normal weights (gain √2 over each output voxel's true fan-in), zero biases: the signal of every level
        keeps its scale up to the crop (PyTorch's default init shrinks it about 3× per layer)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
                # A ConvTranspose3d(k = stride = 2) output voxel sees one input voxel: fan-in = in channels.
                k = m.kernel_size[0] * m.kernel_size[1] * m.kernel_size[2]
                fan_in = m.in_channels * (1 if isinstance(m, nn.ConvTranspose3d) else k)
                nn.init.normal_(m.weight, std=math.sqrt(2.0 / fan_in))
                nn.init.zeros_(m.bias)

    @property
    def out_channels(self) -> int:
        """Width of the full-resolution features."""
        return self.widths[-1]

    def forward(self, image_tokens: Tensor, features_2g: Tensor, features_4g: Tensor, image: Tensor) -> Tensor:
        """Decode.

        Args:
            image_tokens: (B, E, G, G, G) stage-2 image tokens.
            features_2g: (B, E/4, 2G, 2G, 2G) stage-1 features after the first upscaling.
            features_4g: (B, E/8, 4G, 4G, 4G) stage-1 upscaled features.
            image: (B, in_chans, S, S, S) crop, S = G·2^L.

        Returns:
            (B, out_channels, S, S, S) float features in ``torch.channels_last_3d`` memory format.
        """
        x = self.norms[0](self.stem(image_tokens))
        for level in range(1, self.levels + 1):
            if level == self.levels:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            x = self.act(self.ups[level - 1](x))
            if level == 1:
                x = self.norms[1](x + self.skip_2g(features_2g.to(x.dtype)))
            elif level == 2:
                x = self.norms[2](x + self.skip_4g(features_4g.to(x.dtype)))
            if level < self.levels:
                x = x + self.act(self.refine[level - 1](x))
        if x.shape[2:] != image.shape[2:]:
            raise ValueError(f"pixel decoder reached {tuple(x.shape[2:])} but the crop is {tuple(image.shape[2:])}")
        crop = image.to(x.dtype).contiguous(memory_format=torch.channels_last_3d)
        x = torch.cat([x, crop], dim=1).contiguous(memory_format=torch.channels_last_3d)
        return self.act(self.head(x))
