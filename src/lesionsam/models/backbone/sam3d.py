"""The SAM-Med3D model: image encoder + prompt encoder + mask decoder, with a working 3D forward."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from lesionsam.models.backbone.config import Sam3DConfig
from lesionsam.models.backbone.full_res import FullResEncoded, FullResPath
from lesionsam.models.backbone.image_encoder import ImageEncoderViT3D
from lesionsam.models.backbone.mask_decoder import MaskDecoder3D
from lesionsam.models.backbone.prompt_encoder import PromptEncoder3D
from lesionsam.models.interface import Prompts, SegModel, SegOutput


class Sam3D(SegModel):
    """SAM-Med3D (Wang et al., "SAM-Med3D: Towards General-purpose Segmentation Models for Volumetric
    Medical Images", 2023) with the official parts and state-dict keys.

    The parts are built outside and passed in (``build_sam3d``), so methods can swap or extend them.
    Unlike the official ``Sam3D.forward`` (a 2D leftover that fails on 3D input), this forward runs:
    encode the crop, embed the prompts, decode, upsample the low-res logits trilinearly to the crop.
    Images are expected already normalised (z-score); there is no ``pixel_mean``/``pixel_std``.

    Args:
        image_encoder: :class:`ImageEncoderViT3D`.
        prompt_encoder: :class:`PromptEncoder3D`.
        mask_decoder: :class:`MaskDecoder3D`.
        config: the sizes the parts were built with.
        full_res: an optional full-resolution decoder path (:class:`FullResPath`, state-dict keys ``full_res.*``);
            None (the default, the official model): ``encode`` returns the image embedding itself and ``logits`` are
            the trilinear upsampling of the low-res logits. With it, ``encode`` returns a :class:`FullResEncoded`
            and ``logits`` get the path's residual (zero while the path is fresh).
    """

    required_prompts = frozenset()
    accepted_prompts = frozenset({"points", "mask"})
    export_blocker = None

    def __init__(
        self,
        *,
        image_encoder: ImageEncoderViT3D,
        prompt_encoder: PromptEncoder3D,
        mask_decoder: MaskDecoder3D,
        config: Sam3DConfig,
        full_res: FullResPath | None = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.config = config
        self.full_res = full_res

    @property
    def img_size(self) -> int:
        return self.config.img_size

    @property
    def low_res_size(self) -> int:
        return self.config.low_res_size

    @classmethod
    def sharing_parts_of(cls, sam: Sam3D, **kwargs: Any) -> Sam3D:
        """A model of this class built on the parts (the same module objects, not copies) of ``sam``; methods
        that add parts (SGP-SAM, RefSAM3D) pass their own keyword arguments through ``kwargs``. The full-resolution
        path of ``sam``, if any, is shared too (a class whose constructor takes no ``full_res`` cannot carry one)."""
        if sam.full_res is not None:
            kwargs = {"full_res": sam.full_res, **kwargs}
        return cls(
            image_encoder=sam.image_encoder,
            prompt_encoder=sam.prompt_encoder,
            mask_decoder=sam.mask_decoder,
            config=sam.config,
            **kwargs,
        )

    def set_grad_checkpointing(self, enabled: bool) -> None:
        """Checkpoint the image encoder's blocks (recomputed in the backward pass) while training."""
        self.image_encoder.grad_checkpointing = bool(enabled)

    def encode(self, image: Tensor) -> object:
        """(B, C, S, S, S) normalised crop → what :meth:`decode` needs (cache it for many prompts): the (B, E, G, G, G)
        image embedding itself, or with the full-resolution path a :class:`FullResEncoded` (embedding and the stem's
        features)."""
        embedding = self.image_encoder(image)
        if self.full_res is None:
            return embedding
        return FullResEncoded(embedding=embedding, features=self.full_res.stem(image))

    def full_res_features(self, image: Tensor) -> tuple[Tensor, ...] | None:
        """The full-resolution path's stem features of (B, C, S, S, S) crops (None without the path); for methods
        whose ``encode`` returns their own type."""
        return None if self.full_res is None else self.full_res.stem(image)

    def decode(self, encoded: object, prompts: Prompts, *, multimask_output: bool = False) -> SegOutput:
        """Decode prompts against what :meth:`encode` returned."""
        if isinstance(encoded, FullResEncoded):
            return self.decode_embedding(
                encoded.embedding, prompts, multimask_output=multimask_output, full_res_features=encoded.features
            )
        if not isinstance(encoded, Tensor):
            raise TypeError(
                f"{self.display_name}: decode expects what encode returned (an image embedding tensor or a "
                f"FullResEncoded), got {type(encoded).__name__}"
            )
        return self.decode_embedding(encoded, prompts, multimask_output=multimask_output)

    def decode_embedding(
        self,
        embedding: Tensor,
        prompts: Prompts,
        *,
        multimask_output: bool = False,
        full_res_features: tuple[Tensor, ...] | None = None,
    ) -> SegOutput:
        """Decode prompts against a cached embedding (B, E, G, G, G) and, with the full-resolution path, the stem's
        features of the same crops (:class:`FullResEncoded`)."""
        if (self.full_res is None) != (full_res_features is None):
            raise TypeError(
                f"{self.display_name}: "
                + (
                    "the model has a full-resolution path but decode got no stem features: decode what encode returned"
                    if full_res_features is None
                    else "decode got full-resolution features but the model has no full-resolution path"
                )
            )
        self.check_prompts(prompts)
        points = (prompts.points, prompts.labels) if prompts.points is not None else None
        sparse, dense = self.prompt_encoder(points=points, boxes=prompts.boxes, masks=prompts.mask)
        if points is None and prompts.mask is None and embedding.shape[0] > 1:
            sparse = sparse.expand(embedding.shape[0], -1, -1)
            dense = dense.expand(embedding.shape[0], -1, -1, -1, -1)
        if self.full_res is None or full_res_features is None:
            low, iou = self.mask_decoder(
                image_embeddings=embedding,
                image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
            return SegOutput(low_res_logits=low, logits=self.upsample(low), iou=iou)
        masks, iou, up = self.mask_decoder.predict_masks_and_embedding(
            embedding, self.prompt_encoder.get_dense_pe(), sparse, dense
        )
        sl = self.mask_decoder.selection(multimask_output)
        low = masks[:, sl]
        logits = self.upsample(low) + self.full_res.residual(up, masks, full_res_features, sl)
        return SegOutput(low_res_logits=low, logits=logits, iou=iou[:, sl])

    def upsample(self, low_res_logits: Tensor) -> Tensor:
        """(B, M, 4G, 4G, 4G) → (B, M, S, S, S) trilinear (align_corners=False), as the official scripts."""
        return F.interpolate(low_res_logits, size=(self.img_size,) * 3, mode="trilinear", align_corners=False)

    def forward(self, image: Tensor, prompts: Prompts | None = None, *, multimask_output: bool = False) -> SegOutput:
        """Segment crops.

        Args:
            image: (B, C, S, S, S) float normalised crops, axes (D, H, W).
            prompts: clicks and/or a previous low-res mask (see :class:`Prompts`).
            multimask_output: return the three ambiguity masks.

        Returns:
            :class:`SegOutput` with low-res (B, M, 4G³) and full-res (B, M, S³) logits and IoU (B, M).
        """
        return self.decode(self.encode(image), prompts or Prompts(), multimask_output=multimask_output)


def build_sam3d(
    config: Sam3DConfig | None = None, *, attn_impl: str = "fast", full_res_channels: int | None = None
) -> Sam3D:
    """Build a randomly initialised SAM-Med3D from its sizes (the official ``vit_b_ori`` by default), with a fresh
    full-resolution decoder path of ``full_res_channels`` channels at the crop's resolution when given
    (:class:`FullResPath`; None: none, the official model).

    Example:
        >>> from lesionsam.models.backbone import build_sam3d, get_preset
        >>> model = build_sam3d(get_preset("tiny"))
    """
    cfg = config or Sam3DConfig()
    grid = cfg.grid_size
    return Sam3D(
        image_encoder=ImageEncoderViT3D(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            in_chans=cfg.in_chans,
            embed_dim=cfg.encoder_embed_dim,
            depth=cfg.encoder_depth,
            num_heads=cfg.encoder_num_heads,
            mlp_ratio=cfg.mlp_ratio,
            out_chans=cfg.prompt_embed_dim,
            window_size=cfg.window_size,
            global_attn_indexes=cfg.encoder_global_attn_indexes,
            attn_impl=attn_impl,
        ),
        prompt_encoder=PromptEncoder3D(
            embed_dim=cfg.prompt_embed_dim,
            image_embedding_size=(grid, grid, grid),
            input_image_size=(cfg.img_size,) * 3,
            mask_in_chans=cfg.mask_in_chans,
        ),
        mask_decoder=MaskDecoder3D(
            transformer_dim=cfg.prompt_embed_dim,
            num_multimask_outputs=cfg.num_multimask_outputs,
            depth=cfg.decoder_depth,
            num_heads=cfg.decoder_num_heads,
            mlp_dim=cfg.decoder_mlp_dim,
            attention_downsample_rate=cfg.attention_downsample_rate,
            iou_head_depth=cfg.iou_head_depth,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        ),
        config=cfg,
        full_res=None
        if full_res_channels is None
        else FullResPath(
            in_chans=cfg.in_chans,
            embed_dim=cfg.prompt_embed_dim,
            num_mask_tokens=cfg.num_multimask_outputs + 1,
            patch_size=cfg.patch_size,
            channels=full_res_channels,
        ),
    )
