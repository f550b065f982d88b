"""RefSAM3D's parts (Adapter3D, text projector, text-image cross-attention, multi-level mask decoder, region
classifier), each a module of its own, composed by :class:`~lesionsam.models.methods.refsam3d.RefSAM3D`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lesionsam.models.backbone.common import MLPBlock


class Adapter3D(nn.Module):
    """3D adapter on the channels-last token grid: (B, G, G, G, C) → (B, G, G, G, C), residual.

    ``x + up(GELU(dwconv(down(x))))`` with ``down`` C → hidden and ``up`` hidden → C pointwise (``nn.Linear`` over
    channels) and ``dwconv`` a depthwise ``kernel_size``³ convolution (zero "same" padding). ``up`` starts at zero:
    a fresh adapter is the identity.
    """

    def __init__(self, *, dim: int, hidden: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv3d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, G, G, G, C) tokens, axes (D, H, W) → adapted tokens, same shape."""
        y = self.dwconv(self.down(x).permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
        return x + self.up(self.act(y))


class TextProjector(nn.Module):
    """Cross-modal MLP projector: text embeddings (width D_text) → prompt tokens (width E).

    The pooled sentence embedding becomes one extra token placed first (it gets a learned type embedding
    ``sentence_embed`` so the decoder can tell it from the word tokens); all tokens share one MLP
    (LayerNorm, Linear D_text → E, GELU, Linear E → E).
    """

    def __init__(self, *, text_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.LayerNorm(text_dim), nn.Linear(text_dim, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim)
        )
        self.sentence_embed = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.normal_(self.sentence_embed, std=0.02)

    def forward(self, tokens: Tensor, mask: Tensor, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """Project.

        Args:
            tokens: (B, T, D_text) float word/token embeddings (padding anywhere ``mask`` is False).
            mask: (B, T) bool, True for a real token.
            pooled: (B, D_text) float sentence embedding.

        Returns:
            ``(prompt_tokens, prompt_mask)``: (B, T + 1, E) float with the sentence token first, (B, T + 1) bool.
        """
        x = torch.cat([pooled.unsqueeze(1), tokens], dim=1)
        out = self.mlp(x)
        out = torch.cat([out[:, :1] + self.sentence_embed.to(out.dtype), out[:, 1:]], dim=1)
        return out, torch.cat([mask.new_ones(mask.shape[0], 1), mask.bool()], dim=1)


class TextImageCrossAttention(nn.Module):
    """One stage of the hierarchical cross-attention: text prompt tokens attend to the stage's image tokens.

    Pre-norm: ``t = t + proj(attn(q(LN(t)), k(LN(x)) + pe, v(LN(x)) + pe))`` then ``t = t + MLP(LN(t))``, where the
    image tokens ``x`` (width C) are projected to the prompt width E by ``k``/``v`` and ``pe`` is the grid's
    positional encoding (width E) added to the keys and the values (so the text tokens learn where, see the module
    docstring).

    Args:
        dim: prompt width E.
        image_dim: encoder token width C.
        num_heads: attention heads (must divide E).
        mlp_ratio: MLP hidden width = ``mlp_ratio * E``.
    """

    def __init__(self, *, dim: int, image_dim: int, num_heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"cross-attention heads {num_heads} must divide the prompt width {dim}")
        self.num_heads = num_heads
        self.norm_text = nn.LayerNorm(dim)
        self.norm_image = nn.LayerNorm(image_dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(image_dim, dim)
        self.v = nn.Linear(image_dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, text: Tensor, image: Tensor, image_pe: Tensor) -> Tensor:
        """Refine text prompt tokens with one stage.

        Args:
            text: (B, T, E) prompt tokens.
            image: (B, G, G, G, C) stage tokens, axes (D, H, W).
            image_pe: (1, E, G, G, G) positional encoding of the grid.

        Returns:
            (B, T, E) refined prompt tokens.
        """
        b, t, e = text.shape
        kv = self.norm_image(image.flatten(1, 3))  # (B, G³, C)
        pe = image_pe.flatten(2).transpose(1, 2).to(kv.dtype)  # (1, G³, E)
        q = self._heads(self.q(self.norm_text(text)))
        k = self._heads(self.k(kv) + pe)
        v = self._heads(self.v(kv) + pe)
        att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, e)
        text = text + self.proj(att)
        return text + self.mlp(self.norm_mlp(text))


class MultiLevelMaskDecoder3D(nn.Module):
    """3D mask decoder with multi-level aggregation: image embedding + stage features + SAM low-res logits →
    full-resolution logits.

    U-shaped over levels ``l = 0..L`` of side ``G·2^l`` (L = log2(patch size), so level L is the crop):

    * level 0: ``x = stem(embedding)`` (pointwise E → ch);
    * stage features, deepest first: stage ``j`` (tokens (B, G, G, G, C)) is projected C → ch (pointwise),
      resized trilinearly to level ``j`` and added there;
    * between levels: ``x = GELU(ConvTranspose3d(ch, ch, 2, stride 2)(x))``;
    * at level 2 (side 4G) the SAM decoder's low-res logits are added through a pointwise 1 → ch projection;
    * a convolutional image path gives the crop's own features at levels L − 1 (S/2) and L − 2 (S/4): two blocks
      of (3×3×3 stride-2 convolution, GELU, 3×3×3 convolution, GELU), in_chans → ch/2 → ch, each projected
      pointwise and added at its level. **Why:** every encoder stage lives on the G³ token grid (one token per
      patch-size cube), so without it nothing between the tokens and the crop's voxels sees the image; this path
      sees a lesion-sized neighbourhood (receptive field about 23 voxels at S/4) and can measure a lesion's own
      contrast, border and texture, what tells the lesion classes apart (as UNETR's convolutional skips do);
    * the last transposed convolution (level L − 1 → L) narrows ch → ch_L = max(4, ch // 2);
    * at level L the crop (B, in_chans, S, S, S) is concatenated and ``head`` gives a residual on the trilinearly
      upsampled low-res logits: pointwise (ch_L + in_chans) → ch_L, GELU, a dense 3×3×3 convolution ch_L → ch_L,
      GELU, pointwise ch_L → 1 (zero-initialised). The full-resolution level runs in ``channels_last_3d`` memory
      format. **Why so narrow:** level L has 8× the voxels of level L − 1 and dominates the cost; measured on a
      2-core CPU (64³, batch 2, forward + backward) this level takes 0.12 s, against 0.97 s for a 16-channel head
      with a depthwise 3×3×3 convolution in the default layout (depthwise 3D convolutions are slow on CPU; a dense
      one at 8 channels is faster and mixes channels too).
    * FiLM text conditioning (``condition`` (B, E), the refined sentence token): after each level (once its skips
      are added) and after the head's 3×3×3 convolution, ``x = x·(1 + γ) + β`` with per-channel ``(γ, β)`` from
      one zero-initialised ``Linear(E → 2·Σ widths)``; ``condition=None`` skips it.

    Args:
        embed_dim: image embedding width E.
        image_dim: encoder token width C.
        in_chans: crop channels.
        num_stages: number of stage features (<= L).
        levels: L = log2(patch size).
        channels: ch.
    """

    def __init__(
        self, *, embed_dim: int, image_dim: int, in_chans: int, num_stages: int, levels: int, channels: int
    ) -> None:
        super().__init__()
        if num_stages > levels:
            raise ValueError(f"at most {levels} stage features fit {levels} levels, got {num_stages}")
        self.levels = levels
        self.stem = nn.Conv3d(embed_dim, channels, kernel_size=1)
        self.stage_proj = nn.ModuleList(nn.Linear(image_dim, channels) for _ in range(num_stages))
        full = max(4, channels // 2)
        widths = [channels] * levels + [full]
        self.ups = nn.ModuleList(
            nn.ConvTranspose3d(widths[i], widths[i + 1], kernel_size=2, stride=2) for i in range(levels)
        )
        self.act = nn.GELU()
        self.logit_proj = nn.Conv3d(1, widths[2], kernel_size=1)  # level 2 (side 4G) may be the last level
        # Convolutional image path: the crop's own features at S/2 and S/4 (levels L − 1 and L − 2).
        half = max(4, channels // 2)
        self.image_path = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv3d(in_chans, half, kernel_size=3, stride=2, padding=1),
                    nn.GELU(),
                    nn.Conv3d(half, half, kernel_size=3, padding=1),
                    nn.GELU(),
                ),
                nn.Sequential(
                    nn.Conv3d(half, channels, kernel_size=3, stride=2, padding=1),
                    nn.GELU(),
                    nn.Conv3d(channels, channels, kernel_size=3, padding=1),
                    nn.GELU(),
                ),
            ][: max(0, levels - 1)]
        )
        self.image_proj = nn.ModuleList(
            nn.Conv3d(half if i == 0 else channels, widths[levels - 1 - i], kernel_size=1)
            for i in range(len(self.image_path))
        )
        self.head = nn.Sequential(
            nn.Conv3d(full + in_chans, full, kernel_size=1),
            nn.GELU(),
            nn.Conv3d(full, full, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv3d(full, 1, kernel_size=1),
        )
        self.head.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        # Text conditioning (FiLM): per level and after the head's 3×3×3 convolution, a scale and a shift per
        # channel from the text condition; zero-initialised, so a fresh decoder ignores the text.
        self.film_widths = (*widths, full)
        self.film = nn.Linear(embed_dim, 2 * sum(self.film_widths))
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def _modulations(self, condition: Tensor | None) -> list[tuple[Tensor, Tensor]] | None:
        if condition is None:
            return None
        b = condition.shape[0]
        params = self.film(condition).split([2 * w for w in self.film_widths], dim=1)
        out = []
        for w, p in zip(self.film_widths, params, strict=True):
            scale, shift = p.reshape(b, 2, w, 1, 1, 1).unbind(1)
            out.append((1 + scale, shift))
        return out

    def image_features(self, image: Tensor) -> tuple[Tensor, ...]:
        """The convolutional image path: (B, in_chans, S, S, S) crop → its projected features at S/2, S/4 (as
        many as the path has); they depend on the crop alone, so :meth:`RefSAM3D.encode` computes them once."""
        features = []
        y = image
        for path, proj in zip(self.image_path, self.image_proj, strict=True):
            y = path(y)
            features.append(proj(y))
        return tuple(features)

    def forward(
        self,
        embedding: Tensor,
        stages: Sequence[Tensor],
        low_res_logits: Tensor,
        image: Tensor,
        condition: Tensor | None = None,
        image_features: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """Aggregate.

        Args:
            embedding: (B, E, G, G, G) image embedding.
            stages: stage tokens (B, G, G, G, C), shallow to deep (as :attr:`RefSAM3D.stages`).
            low_res_logits: (B, 1, 4G, 4G, 4G) SAM decoder logits.
            image: (B, in_chans, S, S, S) crop, S = G·2^L.
            condition: (B, E) text condition (the refined sentence token) for the FiLM modulations, or None
                (clicks without text: no modulation).
            image_features: :meth:`image_features` of ``image`` when already computed (None: computed here).

        Returns:
            (B, 1, S, S, S) float full-resolution logits.
        """
        if len(stages) != len(self.stage_proj):
            raise ValueError(f"expected {len(self.stage_proj)} stage features, got {len(stages)}")
        deep_first = list(reversed(stages))
        films = self._modulations(condition)
        features = self.image_features(image.to(embedding.dtype)) if image_features is None else image_features
        image_skips = {self.levels - 1 - i: f for i, f in enumerate(features)}  # level → the crop's own features
        x = self.stem(embedding)
        for level in range(self.levels + 1):
            if level == self.levels:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            if level > 0:
                x = self.act(self.ups[level - 1](x))
            if level < len(deep_first):
                skip = self.stage_proj[level](deep_first[level]).permute(0, 4, 1, 2, 3)
                if skip.shape[2:] != x.shape[2:]:
                    skip = F.interpolate(skip, size=x.shape[2:], mode="trilinear", align_corners=False)
                x = x + skip
            if level == 2:
                x = x + self.logit_proj(low_res_logits.to(x.dtype))
            if level in image_skips:
                x = x + image_skips[level].to(x.dtype)
            if films is not None:
                scale, shift = films[level]
                x = x * scale.to(x.dtype) + shift.to(x.dtype)
        if x.shape[2:] != image.shape[2:]:
            raise ValueError(f"decoder reached {tuple(x.shape[2:])} but the crop is {tuple(image.shape[2:])}")
        base = F.interpolate(low_res_logits, size=image.shape[2:], mode="trilinear", align_corners=False)
        fused = torch.cat([x, image.to(x.dtype)], dim=1).contiguous(memory_format=torch.channels_last_3d)
        h = self.head[2](self.head[1](self.head[0](fused)))
        if films is not None:
            scale, shift = films[-1]
            h = h * scale.to(h.dtype) + shift.to(h.dtype)
        return base + self.head[4](self.head[3](h)).contiguous()


class RegionClassifier(nn.Module):
    """Scores whole regions of a crop (candidate lesions) against texts: which named class is this lesion?

    A region's descriptor is pooled from text-independent features at S/2 — the crop itself (area-downsampled)
    and the decoder's first image-path features — as the mean inside the region, the mean over a shell of
    ``shell`` voxels (at S/2) around it, and their difference; an MLP maps it to ``dim``. A text's sentence
    embedding is mapped linearly to ``dim``; the score is their dot product over ``sqrt(dim)``.

    **Why:** the two synthetic classes differ by their contrast to the surrounding liver (tumours about −25 HU,
    cysts about −45 HU, measured over the training lesions), while the per-volume z-score shifts every
    intensity by up to a quarter of a unit between cases — as much as the classes differ in absolute terms. A
    voxel's own logits cannot see the contrast inside a large lesion; a region compared with its surroundings
    can, and one decision per lesion does not fragment it. Measured on the two-class ``lesionsam text-study``:
    "liver tumour" alone covered 54% of the tumour voxels and 79% of the cyst voxels undecided, 49% and 12%
    decided lesion by lesion ("liver cyst": 69% / 34% → 68% / 9%).

    Args:
        feature_channels: channels of the S/2 features (image path + crop channels).
        text_dim: sentence-embedding width of the text encoder.
        dim: descriptor width.
        shell: shell thickness in S/2 voxels.
    """

    def __init__(self, *, feature_channels: int, text_dim: int, dim: int = 32, shell: int = 3) -> None:
        super().__init__()
        self.shell = shell
        self.region = nn.Sequential(nn.Linear(3 * feature_channels, dim), nn.GELU(), nn.Linear(dim, dim))
        self.text = nn.Linear(text_dim, dim)
        self.scale = dim**-0.5

    def pool(self, features: Tensor, masks: Tensor) -> Tensor:
        """(1, C, s, s, s) features and (K, 1, S, S, S) region masks (S a multiple of s) → (K, 3C): per region the
        feature mean inside, over the shell around it and their difference.

        The masks are area-downsampled to s (fractional weights); the shell is their ``shell``-voxel max-filter
        dilation minus themselves; an empty weight gives zeros."""
        m = F.adaptive_avg_pool3d(masks.to(features.dtype), features.shape[2:])
        k = 2 * self.shell + 1
        around = (F.max_pool3d(m, k, stride=1, padding=self.shell) - m).clamp_min(0.0)

        def mean(w: Tensor) -> Tensor:
            return (features * w).sum((2, 3, 4)) / w.sum((2, 3, 4)).clamp_min(1e-6)

        inside, outside = mean(m), mean(around)
        return torch.cat([inside, outside, inside - outside], dim=1)

    def describe(self, features: Tensor, masks: Tensor) -> Tensor:
        """(1, C, s, s, s) features and (K, 1, S, S, S) region masks → (K, dim) descriptors (:meth:`pool`, MLP)."""
        return self.region(self.pool(features, masks))

    def forward(self, descriptors: Tensor, sentences: Tensor) -> Tensor:
        """(K, dim) region descriptors and (T, text_dim) sentence embeddings → (K, T) float scores."""
        return descriptors @ self.text(sentences.to(descriptors.dtype)).T * self.scale
