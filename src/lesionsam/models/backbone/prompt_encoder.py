"""The SAM-Med3D prompt encoder: clicks → sparse tokens, a low-res mask → dense embedding."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lesionsam.models.backbone.common import LayerNorm3d


class PositionEmbeddingRandom3D(nn.Module):
    """Random-Fourier positional encoding over three axes (Tancik et al. 2020), as SAM-Med3D.

    A (3, F) Gaussian matrix maps coordinates in [-1, 1]³ to F frequencies; the encoding is
    ``[sin, cos, sin]`` of ``2π · coords @ matrix`` (3F channels — the official concatenation).
    """

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(3, num_pos_feats))

    def _encode(self, coords: Tensor) -> Tensor:
        """coords (..., 3) in [0, 1] → (..., 3F)."""
        proj = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        proj = 2 * math.pi * proj
        return torch.cat([torch.sin(proj), torch.cos(proj), torch.sin(proj)], dim=-1)

    def forward(self, size: tuple[int, int, int]) -> Tensor:
        """Encoding of a dense grid: (3F, X, Y, Z).

        Reproduces the official grid exactly, including its axis order: feature axis 0 follows the
        grid's *second* axis and feature axis 1 its *first* (the official code stacks its x/y cumsums
        that way; the released weights learned it). For a cubic grid every other detail is symmetric.
        """
        device = self.positional_encoding_gaussian_matrix.device
        d, h, w = size

        def centres(n: int) -> Tensor:
            return torch.arange(n, device=device, dtype=torch.float32) + 0.5

        # Official: feature 0 = position along axis 1 / size[0]; feature 1 = along axis 0 / size[1].
        f0 = centres(h)[None, :, None].expand(d, h, w) / d
        f1 = centres(d)[:, None, None].expand(d, h, w) / h
        f2 = centres(w)[None, None, :].expand(d, h, w) / w
        pe = self._encode(torch.stack([f0, f1, f2], dim=-1))
        return pe.permute(3, 0, 1, 2)

    def forward_with_coords(self, coords: Tensor, image_size: tuple[int, int, int]) -> Tensor:
        """Points (B, N, 3) in voxel units of a crop of side ``image_size`` → (B, N, 3F)."""
        scale = torch.tensor(image_size, dtype=torch.float32, device=coords.device)
        return self._encode(coords.float() / scale)


class PromptEncoder3D(nn.Module):
    """Encodes clicks and a previous low-res mask for the SAM-Med3D mask decoder.

    Args:
        embed_dim: prompt embedding width E (divisible by 3).
        image_embedding_size: token grid (G, G, G) of the image embedding.
        input_image_size: crop (S, S, S) in voxels; click coordinates are voxel indices in it.
        mask_in_chans: hidden channels of the mask downscaling convolutions.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        image_embedding_size: tuple[int, int, int],
        input_image_size: tuple[int, int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        if embed_dim % 3:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by 3")
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.pe_layer = PositionEmbeddingRandom3D(embed_dim // 3)
        # 0 = negative click, 1 = positive click.
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(2))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = tuple(4 * s for s in self.image_embedding_size)
        self.mask_downscaling = nn.Sequential(
            nn.Conv3d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans // 4),
            activation(),
            nn.Conv3d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans),
            activation(),
            nn.Conv3d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> Tensor:
        """Positional encoding of the token grid: (1, E, G, G, G)."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def check_points(self, coords: Tensor, labels: Tensor) -> None:
        """Raise ``ValueError`` unless coords (B, N, 3) lie in the crop and labels (B, N) are -1, 0 or 1."""
        if coords.ndim != 3 or coords.shape[-1] != 3:
            raise ValueError(f"points must be (B, N, 3) voxel indices (D, H, W), got shape {tuple(coords.shape)}")
        if labels.shape != coords.shape[:2]:
            raise ValueError(
                f"labels must be (B, N) = {tuple(coords.shape[:2])} to match points, got {tuple(labels.shape)}"
            )
        bad_labels = ~((labels == -1) | (labels == 0) | (labels == 1))
        if bool(bad_labels.any()):
            raise ValueError(
                "click labels must be 1 (positive), 0 (negative) or -1 (padding), "
                f"got {labels[bad_labels][:5].tolist()}"
            )
        real = labels != -1
        side = torch.tensor(self.input_image_size, device=coords.device, dtype=coords.dtype)
        outside = real & ((coords < 0) | (coords > side - 1)).any(-1)
        if bool(outside.any()):
            b, n = (int(v) for v in outside.nonzero()[0])
            raise ValueError(
                f"click {coords[b, n].tolist()} (batch {b}, point {n}) is outside the "
                f"{'x'.join(map(str, self.input_image_size))} crop; clicks are voxel indices (D, H, W) in "
                f"0..{self.input_image_size[0] - 1} of the crop"
            )

    def _embed_points(self, coords: Tensor, labels: Tensor, pad: bool) -> Tensor:
        coords = coords.float() + 0.5  # centre of the voxel
        if pad:
            coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 1, 3)], dim=1)
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)
        emb = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        lab = labels[..., None]
        emb = torch.where(lab == -1, self.not_a_point_embed.weight.to(emb.dtype), emb)
        emb = emb + (lab == 0) * self.point_embeddings[0].weight + (lab == 1) * self.point_embeddings[1].weight
        return emb

    def forward(
        self,
        points: tuple[Tensor, Tensor] | None,
        boxes: Tensor | None,
        masks: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Embed prompts.

        Args:
            points: ``(coords, labels)``: coords (B, N, 3) float voxel indices of the crop in tensor order
                (D, H, W); labels (B, N) int, 1 positive, 0 negative, -1 padding. A padding point is
                appended, as in the official code.
            boxes: not supported by SAM-Med3D (it has no box-corner embeddings); must be None.
            masks: (B, 1, 4G, 4G, 4G) low-res logits of a previous prediction, or None.

        Returns:
            sparse (B, N + 1, E) and dense (B, E, G, G, G) embeddings.
        """
        if boxes is not None:
            raise ValueError(
                "SAM-Med3D has no box prompt embeddings: give clicks (points) or a low-res mask prompt instead"
            )
        bs = points[0].shape[0] if points is not None else masks.shape[0] if masks is not None else 1
        device = self.no_mask_embed.weight.device
        if points is not None:
            coords, labels = points
            self.check_points(coords, labels)
            sparse = self._embed_points(coords.to(device), labels.to(device), pad=True)
        else:
            sparse = torch.empty(bs, 0, self.embed_dim, device=device)
        if masks is not None:
            want = (bs, 1, *self.mask_input_size)
            if tuple(masks.shape) != want:
                raise ValueError(f"mask prompt must have shape {want} (low-res logits), got {tuple(masks.shape)}")
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1).expand(bs, -1, *self.image_embedding_size)
        return sparse, dense
