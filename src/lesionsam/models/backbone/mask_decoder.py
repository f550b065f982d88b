"""The SAM-Med3D mask decoder: a two-way transformer between prompt tokens and the image embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lesionsam.models.backbone.common import MLP, LayerNorm3d, MLPBlock


class TokenAttention(nn.Module):
    """Multi-head attention with an optional down-projection of the internal width (SAM's ``Attention``).

    Args:
        embedding_dim: input and output width.
        num_heads: heads; must divide ``embedding_dim // downsample_rate``.
        downsample_rate: internal width = ``embedding_dim // downsample_rate``.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        internal = embedding_dim // downsample_rate
        if internal % num_heads:
            raise ValueError(f"num_heads {num_heads} must divide the internal width {internal}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embedding_dim, internal)
        self.k_proj = nn.Linear(embedding_dim, internal)
        self.v_proj = nn.Linear(embedding_dim, internal)
        self.out_proj = nn.Linear(internal, embedding_dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """q (B, Nq, E), k and v (B, Nk, E) → (B, Nq, E); ``key_mask`` (B, Nk) bool: False keys are ignored."""
        mask = key_mask[:, None, None, :] if key_mask is not None else None
        out = F.scaled_dot_product_attention(
            self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v)), attn_mask=mask
        )
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))


class TwoWayAttentionBlock3D(nn.Module):
    """Token self-attention, token→image cross-attention, MLP, image→token cross-attention."""

    def __init__(
        self,
        *,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int,
        skip_first_layer_pe: bool,
    ) -> None:
        super().__init__()
        self.self_attn = TokenAttention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = TokenAttention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, act=nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = TokenAttention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor, token_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """queries, query_pe (B, T, E); keys, key_pe (B, G³, E); ``token_mask`` (B, T) bool: tokens that are
        False (padding) are ignored as keys, by the tokens and by the image."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries, token_mask)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries, token_mask)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries, token_mask))
        return queries, keys


class TwoWayTransformer3D(nn.Module):
    """The decoder transformer: prompt tokens and image tokens attend to each other ``depth`` times."""

    def __init__(
        self, *, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int, attention_downsample_rate: int = 2
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock3D(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = TokenAttention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor, token_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """image_embedding, image_pe (B, E, G, G, G); point_embedding (B, T, E) → tokens (B, T, E), image (B, G³, E).
        ``token_mask`` (B, T) bool, optional: False tokens (padding) are ignored as keys everywhere, so the outputs of
        the others equal a run without them (None: every token counts, as the official decoder)."""
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe, token_mask)
        q, k = queries + point_embedding, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys


class MaskDecoder3D(nn.Module):
    """Predicts low-res mask logits and their IoU from an image embedding and prompt embeddings.

    Args:
        transformer_dim: prompt embed width E (divisible by 8).
        num_multimask_outputs: masks returned when ``multimask_output=True``.
        depth, num_heads, mlp_dim, attention_downsample_rate: the two-way transformer.
        iou_head_depth, iou_head_hidden_dim: the IoU MLP.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        num_multimask_outputs: int = 3,
        depth: int = 2,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        attention_downsample_rate: int = 2,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = TwoWayTransformer3D(
            depth=depth,
            embedding_dim=transformer_dim,
            num_heads=num_heads,
            mlp_dim=mlp_dim,
            attention_downsample_rate=attention_downsample_rate,
        )
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm3d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose3d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
    ) -> tuple[Tensor, Tensor]:
        """Predict masks.

        Args:
            image_embeddings: (B or 1, E, G, G, G) from the image encoder (repeated if B differs).
            image_pe: (1, E, G, G, G) from ``prompt_encoder.get_dense_pe()``.
            sparse_prompt_embeddings: (B, T, E).
            dense_prompt_embeddings: (B, E, G, G, G).
            multimask_output: return the ``num_multimask_outputs`` ambiguity masks instead of the single one.

        Returns:
            low-res logits (B, M, 4G, 4G, 4G) and IoU predictions (B, M), M = 1 or ``num_multimask_outputs``.
        """
        masks, iou = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        sl = self.selection(multimask_output)
        return masks[:, sl], iou[:, sl]

    @staticmethod
    def selection(multimask_output: bool) -> slice:
        """Which of the ``num_mask_tokens`` outputs are returned: the ambiguity masks, or the single mask."""
        return slice(1, None) if multimask_output else slice(0, 1)

    def predict_masks(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse: Tensor,
        dense: Tensor,
        sparse_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """All ``num_mask_tokens`` masks (B, 1 + M, 4G, 4G, 4G) and IoU (B, 1 + M).

        ``sparse_mask`` (B, T) bool, optional: prompt tokens that are False are padding, ignored by the transformer
        (a fixed number of prompt tokens, as an exported decoder takes, gives what the real ones alone give)."""
        masks, iou, _ = self.predict_masks_and_embedding(image_embeddings, image_pe, sparse, dense, sparse_mask)
        return masks, iou

    def predict_masks_and_embedding(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse: Tensor,
        dense: Tensor,
        sparse_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`predict_masks` and the upscaled mask embedding (B, E/8, 4G, 4G, 4G) the masks are read from (what a
        full-resolution path continues from)."""
        tokens = self.output_tokens(sparse)
        token_mask = None
        if sparse_mask is not None:
            fixed = sparse_mask.new_ones(sparse_mask.shape[0], tokens.shape[1] - sparse.shape[1])
            token_mask = torch.cat([fixed, sparse_mask], dim=1)
        src = image_embeddings
        if src.shape[0] != tokens.shape[0]:
            src = torch.repeat_interleave(src, tokens.shape[0], dim=0)
        src = src + dense
        pos = image_pe if image_pe.shape[0] == tokens.shape[0] else image_pe.expand(tokens.shape[0], -1, -1, -1, -1)
        b, c, *grid = src.shape
        hs, src = self.transformer(src, pos, tokens, token_mask)
        return self.masks_and_embedding_from_tokens(hs, src.transpose(1, 2).reshape(b, c, *grid))

    def output_tokens(self, sparse: Tensor) -> Tensor:
        """[IoU token, mask tokens, prompt tokens]: (B, 1 + num_mask_tokens + T, E)."""
        out = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        out = out.unsqueeze(0).expand(sparse.shape[0], -1, -1).to(sparse.dtype)
        return torch.cat([out, sparse], dim=1)

    def masks_from_tokens(self, hs: Tensor, src: Tensor) -> tuple[Tensor, Tensor]:
        """Transformer outputs → masks and IoU.

        Args:
            hs: (B, T, E) output tokens (IoU token first, then the mask tokens).
            src: (B, E, G, G, G) attended image embedding.
        """
        masks, iou, _ = self.masks_and_embedding_from_tokens(hs, src)
        return masks, iou

    def masks_and_embedding_from_tokens(self, hs: Tensor, src: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`masks_from_tokens` and the upscaled mask embedding (B, E/8, 4G, 4G, 4G)."""
        mask_tokens = hs[:, 1 : 1 + self.num_mask_tokens]
        up = self.output_upscaling(src)  # (B, E/8, 4G, 4G, 4G)
        hyper = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        b, c, *grid = up.shape
        masks = (hyper @ up.reshape(b, c, -1)).reshape(b, -1, *grid)
        return masks, self.iou_prediction_head(hs[:, 0]), up
