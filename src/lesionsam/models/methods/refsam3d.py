"""RefSAM3D: SAM-Med3D adapted to text-referred 3D segmentation.

Gao & Lu, 2024, "RefSAM3D: Adapting SAM with Cross-modal Reference for 3D Medical Image Segmentation". The
official SAM-Med3D parts are passed in unchanged (keys ``image_encoder.*``, ``prompt_encoder.*``,
``mask_decoder.*``); the new parts live under their own prefixes:

* ``adapters.<i>`` -- a 3D adapter per encoder block ``i`` (:class:`Adapter3D`): pointwise down-projection
  C → C/r, depthwise 3×3×3 convolution over the (D, H, W) token grid, GELU, pointwise up-projection back to C
  (weight and bias zero-initialised), added as a residual. **Placement:** the adapter sits *after* block ``i``,
  as a residual on the block's output (``tokens = tokens + adapter(tokens)``), applied through the encoder's
  ``block_hook``; the encoder is not copied. Zero-initialised, a fresh model's image embedding is exactly the
  backbone's.
* ``text.*`` -- the text encoder ``build_text_encoder(options.text_encoder)`` (``lesionsam.models.text_encoders``).
* ``text_projector.*`` -- the cross-modal MLP projector (:class:`TextProjector`): the text tokens (B, T, D_text)
  and the pooled sentence embedding (B, D_text) become T + 1 prompt tokens of width E (the prompt embed dim).
* ``cross_attn.<k>`` -- hierarchical cross-attention (:class:`TextImageCrossAttention`), one per encoder stage
  ``k`` (default: after blocks depth/4·(1..4) − 1, i.e. 2, 5, 8, 11 for ViT-B and 0, 1, 2, 3 for the tiny
  preset). **Direction:** the text prompt tokens are the queries and attend to the stage's image tokens
  (projected C → E, plus the prompt encoder's grid positional encoding on the keys *and* the values); each stage
  refines the text prompt tokens of the previous one (pre-norm attention + MLP, both residual). **Why the values
  carry positions:** a text token that attends to the tokens of the referred lesion then holds their positional
  encoding, the same random-Fourier code a click embedding holds, so the SAM decoder is told *where* as well as
  *what* (with content-only values a token knows what the lesion looks like but not where it is). The refined tokens are
  appended to the sparse prompt embeddings of the SAM-Med3D mask decoder, after the click embeddings when
  clicks are given too.
* ``ref_decoder.*`` -- the 3D mask decoder with multi-level aggregation (:class:`MultiLevelMaskDecoder3D`):
  U-shaped, from the G³ image embedding up to the S³ crop with transposed convolutions, skip-adding the stage
  features (projected to the decoder's channels and resized), the SAM decoder's low-res logits and a small
  convolutional path's features of the crop itself at S/2 and S/4, then the crop is concatenated and a final
  3D convolution gives a residual on the trilinearly upsampled low-res logits. Its last layer is
  zero-initialised, so a fresh decoder returns exactly ``Sam3D.upsample(low_res)``.
  **Text-conditioned (FiLM):** with a text prompt, every level's features and the full-resolution head's hidden
  features are scaled and shifted per channel by a linear map of the refined sentence token (zero-initialised:
  a fresh decoder ignores the text; clicks without text get no modulation). **Why:** without it the text reaches
  the mask only through the SAM decoder's 4G³ logits, whose image features come from G³ tokens of patch-size
  voxels; the two synthetic lesion classes differ by about 20 HU and texture over a few voxels, which only the
  decoder's finer levels (the convolutional image path and the crop itself) can resolve (the two-class
  ``lesionsam text-study`` measures it: README).

* ``region_head.*`` -- a region classifier (:class:`RegionClassifier`, :meth:`RefSAM3D.region_scores`): scores a
  whole candidate lesion of a crop against texts from text-independent features pooled inside it and in a shell
  around it; text alone uses it to decide, lesion by lesion, which of the trained classes a found lesion is.

Outputs: ``SegOutput.low_res_logits`` are the SAM decoder's (B, 1, 4G, 4G, 4G), ``logits`` the aggregated
full-resolution (B, 1, S, S, S) ones, ``extras["text_tokens"]`` the refined prompt tokens (B, T + 1, E) and
``extras["text_mask"]`` (B, T + 1) bool.

**What equals the backbone.** Adapters start at zero, so ``encode(image).embedding`` equals ``Sam3D.encode(image)``
bit for bit, and :meth:`RefSAM3D.decode_sam` without text tokens equals ``Sam3D.decode`` for the same clicks. The
full :meth:`RefSAM3D.decode` always adds the text tokens to the decoder's prompts, so its low-res logits differ
from plain SAM-Med3D's from the start (text is the required prompt).

**Freezing** (``options.freeze_backbone``, default True): the builder sets ``requires_grad=False`` on every
backbone parameter except the encoder blocks' LayerNorms (``image_encoder.blocks.<i>.norm1/norm2``) and, with
``options.train_mask_decoder`` (default True), the SAM mask decoder: the patch embedding, positions, attention,
MLPs and neck of the encoder and the prompt encoder stay fixed; adapters, norms, the mask decoder and all new parts
train. **Why the mask decoder trains:** RefSAM3D's 3D mask decoder is the SAM decoder extended (the paper
enhances it for 3D masks), and a frozen click decoder must read a text token as if it were a click; measured on
the synthetic two-class study, a frozen decoder left text-only validation Dice near zero. The text
encoder keeps its own setting (the built-in one trains, a Hugging Face CLIP model is frozen by default).
:meth:`RefSAM3D.trainable_parameter_names` lists what trains; :meth:`RefSAM3D.freeze_backbone_` applies the policy
again (e.g. after ``requires_grad_(True)``). A trainer with ``freeze_encoder`` additionally freezes the whole
``image_encoder.*`` (norms included; the adapters are not in it).

Padding: texts of different token counts in one batch are padded by the text encoder; the padded prompt
positions are replaced by the prompt encoder's ``not_a_point_embed`` (as SAM-Med3D pads clicks), so they still
take part in the decoder's attention, exactly as padding clicks do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lesionsam.models.backbone import Sam3D, Sam3DConfig, build_sam3d
from lesionsam.models.backbone.config import BACKBONE_PREFIXES
from lesionsam.models.backbone.image_encoder import ImageEncoderViT3D
from lesionsam.models.backbone.mask_decoder import MaskDecoder3D
from lesionsam.models.backbone.prompt_encoder import PromptEncoder3D
from lesionsam.models.config import ModelConfig
from lesionsam.models.interface import Prompts, SegOutput
from lesionsam.models.methods.common import parameter_overhead, upsampling_levels
from lesionsam.models.methods.refsam3d_pairs import RefSAM3DTrainOptions
from lesionsam.models.methods.refsam3d_parts import (
    Adapter3D,
    MultiLevelMaskDecoder3D,
    RegionClassifier,
    TextImageCrossAttention,
    TextProjector,
)
from lesionsam.models.registry import register_method
from lesionsam.models.text import TextEncoder
from lesionsam.models.text_encoders import build_text_encoder

#: State-dict prefixes of the parts RefSAM3D adds to the backbone.
NEW_PREFIXES = ("adapters.", "text.", "text_projector.", "cross_attn.", "ref_decoder.", "region_head.")

#: Number of encoder stages of the default hierarchy.
DEFAULT_NUM_STAGES = 4


@dataclass(frozen=True)
class RefSAM3DOptions:
    """Options of RefSAM3D (``model.options`` of the ``refsam3d`` method).

    Attributes:
        text_encoder: ``"builtin"`` (small trainable encoder, no files) or a local directory holding a Hugging
            Face CLIP text model / open_clip checkpoint (see ``lesionsam.models.text_encoders.build_text_encoder``).
        adapter_reduction: channel reduction r of the 3D adapters (C → C/r → C).
        stages: encoder block indices whose outputs form the hierarchy, shallow to deep; None: four evenly spaced
            stages ending at the last block (depth/4·(1..4) − 1). At most log2(patch_size) stages (the number of
            ×2 upsampling levels of the decoder). Checked against the encoder depth when the model is built.
        decoder_channels: channels of the multi-level mask decoder (small: it runs at the crop's resolution).
        freeze_backbone: freeze the backbone except the encoder blocks' LayerNorms (adapters and new parts train).
        train_mask_decoder: with ``freeze_backbone``, keep the SAM mask decoder trainable (part of RefSAM3D's 3D
            decoder); False freezes it too.
    """

    text_encoder: str = "builtin"
    adapter_reduction: int = 4
    stages: tuple[int, ...] | None = None
    decoder_channels: int = 16
    freeze_backbone: bool = True
    train_mask_decoder: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.text_encoder, str) or not self.text_encoder.strip():
            raise ValueError(
                f"RefSAM3DOptions.text_encoder must be 'builtin' or a directory path, got {self.text_encoder!r}"
            )
        if int(self.adapter_reduction) < 1:
            raise ValueError(f"RefSAM3DOptions.adapter_reduction must be an integer >= 1, got {self.adapter_reduction}")
        if int(self.decoder_channels) < 1:
            raise ValueError(f"RefSAM3DOptions.decoder_channels must be an integer >= 1, got {self.decoder_channels}")
        if self.stages is not None:
            stages = tuple(int(s) for s in self.stages)
            if not stages:
                raise ValueError("RefSAM3DOptions.stages is empty: give at least one block index, or null for default")
            if any(s < 0 for s in stages) or len(set(stages)) != len(stages):
                raise ValueError(f"RefSAM3DOptions.stages must be distinct non-negative block indices, got {stages}")
            object.__setattr__(self, "stages", tuple(sorted(stages)))

    def resolve_stages(self, config: Sam3DConfig) -> tuple[int, ...]:
        """The stage block indices for a backbone of these sizes (``ValueError`` if they do not fit it)."""
        depth = config.encoder_depth
        if self.stages is None:
            if depth < DEFAULT_NUM_STAGES:
                raise ValueError(
                    f"RefSAM3D needs an encoder of depth >= {DEFAULT_NUM_STAGES} for its default four stages, got "
                    f"depth {depth}; set model.options.stages to fewer block indices"
                )
            step = depth // DEFAULT_NUM_STAGES
            stages = tuple(step * (k + 1) - 1 for k in range(DEFAULT_NUM_STAGES - 1)) + (depth - 1,)
        else:
            stages = self.stages
        bad = [s for s in stages if not 0 <= s < depth]
        if bad:
            raise ValueError(
                f"RefSAM3DOptions.stages {bad} are not blocks of the image encoder (depth {depth}: indices "
                f"0..{depth - 1})"
            )
        levels = _num_levels(config)
        if len(stages) > levels:
            raise ValueError(
                f"RefSAM3D aggregates at most {levels} stages for patch size {config.patch_size} (one per ×2 "
                f"upsampling level), got {len(stages)}: {list(stages)}"
            )
        return stages


def _num_levels(config: Sam3DConfig) -> int:
    return upsampling_levels(config, owner="RefSAM3D's multi-level decoder")


@dataclass
class RefEncodedImage:
    """What :meth:`RefSAM3D.encode` returns (cache it to decode many prompts).

    Attributes:
        embedding: (B, E, G, G, G) float image embedding (adapted encoder), axes (D, H, W).
        stages: per stage, (B, G, G, G, C) float tokens after that block and its adapter, shallow to deep.
        image: (B, in_chans, S, S, S) the crop itself (the multi-level decoder concatenates it).
        image_features: the decoder's convolutional image-path features of the crop (S/2 first), computed once
            per crop and reused by every decode.
    """

    embedding: Tensor
    stages: tuple[Tensor, ...]
    image: Tensor
    image_features: tuple[Tensor, ...] | None = None


class RefSAM3D(Sam3D):
    """RefSAM3D (Gao & Lu, 2024, "RefSAM3D: Adapting SAM with Cross-modal Reference for 3D Medical Image
    Segmentation"): SAM-Med3D with 3D adapters, a text prompt, hierarchical text-image cross-attention and a
    multi-level 3D mask decoder (see the module docstring for every part and decision).

    Prompts: ``text`` (B strings) is required; clicks and a previous low-res mask are optional.

    Args:
        image_encoder, prompt_encoder, mask_decoder: the SAM-Med3D parts (official keys unchanged).
        config: the sizes the parts were built with.
        options: :class:`RefSAM3DOptions`. The constructor does not change ``requires_grad``;
            :func:`build_refsam3d` applies ``freeze_backbone``.

    Raises:
        ValueError: stages that do not fit the encoder or the decoder levels.
    """

    required_prompts = frozenset()
    accepted_prompts = frozenset({"text", "points", "mask"})
    scores_regions = True
    export_blocker = (
        "its text prompts need the text encoder and the text-conditioned multi-level decoder, which are not exported"
    )

    def __init__(
        self,
        *,
        image_encoder: ImageEncoderViT3D,
        prompt_encoder: PromptEncoder3D,
        mask_decoder: MaskDecoder3D,
        config: Sam3DConfig,
        options: RefSAM3DOptions | None = None,
    ) -> None:
        super().__init__(
            image_encoder=image_encoder, prompt_encoder=prompt_encoder, mask_decoder=mask_decoder, config=config
        )
        opts = options or RefSAM3DOptions()
        stages = opts.resolve_stages(config)
        self.options = replace(opts, stages=stages)
        dim, embed = config.encoder_embed_dim, config.prompt_embed_dim
        hidden = max(1, dim // opts.adapter_reduction)
        self.adapters = nn.ModuleList(Adapter3D(dim=dim, hidden=hidden) for _ in range(config.encoder_depth))
        self.text: TextEncoder = build_text_encoder(opts.text_encoder)
        self.text_projector = TextProjector(text_dim=self.text.dim, embed_dim=embed)
        heads = config.decoder_num_heads if embed % config.decoder_num_heads == 0 else 1
        self.cross_attn = nn.ModuleList(
            TextImageCrossAttention(dim=embed, image_dim=dim, num_heads=heads) for _ in stages
        )
        self.ref_decoder = MultiLevelMaskDecoder3D(
            embed_dim=embed,
            image_dim=dim,
            in_chans=config.in_chans,
            num_stages=len(stages),
            levels=_num_levels(config),
            channels=opts.decoder_channels,
        )
        first_path = self.ref_decoder.image_proj[0].out_channels if len(self.ref_decoder.image_proj) else 0
        self.region_head = RegionClassifier(feature_channels=first_path + config.in_chans, text_dim=self.text.dim)

    @classmethod
    def from_sam3d(cls, sam: Sam3D, options: RefSAM3DOptions | None = None) -> RefSAM3D:
        """RefSAM3D sharing the parts (the same module objects, not copies) of a built :class:`Sam3D`."""
        return cls.sharing_parts_of(sam, options=options)  # type: ignore[return-value]

    @property
    def stages(self) -> tuple[int, ...]:
        """Encoder block indices of the hierarchy's stages, shallow to deep."""
        assert self.options.stages is not None
        return self.options.stages

    # ---------------------------------------------------------------------------------------------- freezing
    @staticmethod
    def _is_block_norm(name: str) -> bool:
        parts = name.split(".")
        return len(parts) >= 4 and parts[:2] == ["image_encoder", "blocks"] and parts[3] in ("norm1", "norm2")

    def frozen_parameter_names(self) -> list[str]:
        """Backbone parameters the ``freeze_backbone`` policy freezes (all but the encoder blocks' LayerNorms and,
        with ``train_mask_decoder``, the SAM mask decoder)."""
        if not self.options.freeze_backbone:
            return []
        keep = ("mask_decoder.",) if self.options.train_mask_decoder else ()
        return [
            n
            for n, _ in self.named_parameters()
            if n.startswith(BACKBONE_PREFIXES) and not self._is_block_norm(n) and not n.startswith(keep)
        ]

    def trainable_parameter_names(self) -> list[str]:
        """Parameters that train under the options: adapters, encoder block norms and the new parts (all of the
        backbone too without ``freeze_backbone``), minus any the text encoder froze itself."""
        frozen = set(self.frozen_parameter_names())
        text_frozen = {f"text.{n}" for n, p in self.text.named_parameters() if not p.requires_grad}
        return [n for n, _ in self.named_parameters() if n not in frozen and n not in text_frozen]

    def freeze_backbone_(self) -> RefSAM3D:
        """Set ``requires_grad`` by the policy: False on :meth:`frozen_parameter_names`, True on the other
        backbone parameters, adapters and new parts except the text encoder (which keeps its own setting)."""
        frozen = set(self.frozen_parameter_names())
        for name, p in self.named_parameters():
            if not name.startswith("text."):
                p.requires_grad_(name not in frozen)
        return self

    # ---------------------------------------------------------------------------------------------- forward
    def encode(self, image: Tensor) -> RefEncodedImage:  # type: ignore[override]
        """(B, C, S, S, S) normalised crops, axes (D, H, W) → :class:`RefEncodedImage` (adapted embedding,
        stage tokens and the crop)."""
        stage_set = set(self.stages)
        stage_tokens: list[Tensor] = []

        def hook(index: int, tokens: Tensor) -> Tensor:
            tokens = self.adapters[index](tokens)
            if index in stage_set:
                stage_tokens.append(tokens)
            return tokens

        embedding = self.image_encoder(image, block_hook=hook)
        return RefEncodedImage(
            embedding=embedding,
            stages=tuple(stage_tokens),
            image=image,
            image_features=self.ref_decoder.image_features(image.to(embedding.dtype)),
        )

    def encode_text(self, texts: Sequence[str], stages: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Text prompts → refined prompt tokens.

        Args:
            texts: B strings.
            stages: stage tokens (B, G, G, G, C), shallow to deep.

        Returns:
            ``(tokens, mask)``: (B, T + 1, E) float prompt tokens (sentence token first; padded positions hold
            ``prompt_encoder.not_a_point_embed``) and (B, T + 1) bool, True for real tokens.
        """
        emb = self.text(list(texts))
        device = stages[0].device if stages else self.prompt_encoder.no_mask_embed.weight.device
        tokens, mask = self.text_projector(emb.tokens.to(device), emb.mask.to(device), emb.pooled.to(device))
        pe = self.prompt_encoder.get_dense_pe()
        for attn, stage in zip(self.cross_attn, stages, strict=True):
            tokens = attn(tokens, stage, pe)
        pad = self.prompt_encoder.not_a_point_embed.weight.to(tokens.dtype)
        return torch.where(mask.unsqueeze(-1), tokens, pad), mask

    def decode_sam(
        self,
        embedding: Tensor,
        prompts: Prompts,
        prompt_tokens: Tensor | None = None,
        *,
        multimask_output: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """The SAM-Med3D decoder on an embedding with clicks / mask and extra sparse prompt tokens.

        With ``prompt_tokens=None`` this is exactly ``Sam3D.decode``'s low-res logits and IoU (no prompt check).

        Args:
            embedding: (B, E, G, G, G).
            prompts: clicks and/or a low-res mask (text is ignored here).
            prompt_tokens: (B, T, E) tokens appended after the click embeddings, or None.
            multimask_output: return the ambiguity masks.

        Returns:
            low-res logits (B, M, 4G, 4G, 4G) and IoU (B, M).
        """
        batch = embedding.shape[0]
        points = (prompts.points, prompts.labels) if prompts.points is not None else None
        sparse, dense = self.prompt_encoder(points=points, boxes=prompts.boxes, masks=prompts.mask)
        if sparse.shape[0] != batch:
            sparse = sparse.expand(batch, -1, -1)
        if dense.shape[0] != batch:
            dense = dense.expand(batch, -1, -1, -1, -1)
        if prompt_tokens is not None:
            sparse = torch.cat([sparse.to(prompt_tokens.dtype), prompt_tokens], dim=1)
        return self.mask_decoder(
            image_embeddings=embedding,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    def decode(  # type: ignore[override]
        self, encoded: RefEncodedImage, prompts: Prompts, *, multimask_output: bool = False
    ) -> SegOutput:
        """Decode a text prompt (and optional clicks / mask) against a cached :class:`RefEncodedImage`.

        Args:
            encoded: from :meth:`encode`.
            prompts: ``text`` (B strings, required), optional clicks and low-res mask.
            multimask_output: must be False: RefSAM3D predicts one mask per text.

        Returns:
            :class:`SegOutput`: low-res (B, 1, 4G³) SAM decoder logits, full-res (B, 1, S³) aggregated logits,
            IoU (B, 1), ``extras["text_tokens"]`` (B, T + 1, E) and ``extras["text_mask"]`` (B, T + 1).

        Raises:
            TypeError: ``encoded`` is not a :class:`RefEncodedImage`.
            ValueError: missing text, a text count that is not B, or ``multimask_output=True``.
        """
        if not isinstance(encoded, RefEncodedImage):
            raise TypeError(
                f"RefSAM3D.decode expects the RefEncodedImage returned by RefSAM3D.encode, got "
                f"{type(encoded).__name__}; call model.decode(model.encode(image), prompts)"
            )
        self.check_prompts(prompts)
        if multimask_output:
            raise ValueError("RefSAM3D predicts one mask per text prompt; call it with multimask_output=False")
        batch = encoded.embedding.shape[0]
        if prompts.text is None:
            # Clicks (and/or a mask) without text: the SAM decoder alone, then the multi-level decoder.
            if prompts.points is None and prompts.mask is None:
                raise ValueError('RefSAM3D needs a text prompt (Prompts(text=["liver tumour"])) or clicks')
            low, iou = self.decode_sam(encoded.embedding, prompts)
            logits = self.ref_decoder(
                encoded.embedding, encoded.stages, low, encoded.image, image_features=encoded.image_features
            )
            return SegOutput(low_res_logits=low, logits=logits, iou=iou)
        texts = prompts.text
        if isinstance(texts, str) or len(texts) != batch:
            got = "a single string" if isinstance(texts, str) else f"{len(texts)} text(s)"
            raise ValueError(
                f"RefSAM3D needs one text prompt per crop: the batch has {batch} crop(s) but prompts.text has {got}; "
                "pass Prompts(text=[...]) with B strings"
            )
        tokens, mask = self.encode_text(texts, encoded.stages)
        low, iou = self.decode_sam(encoded.embedding, prompts, tokens)
        logits = self.ref_decoder(
            encoded.embedding,
            encoded.stages,
            low,
            encoded.image,
            condition=tokens[:, 0],
            image_features=encoded.image_features,
        )
        return SegOutput(low_res_logits=low, logits=logits, iou=iou, extras={"text_tokens": tokens, "text_mask": mask})

    def region_scores(self, encoded: RefEncodedImage, crop: int, masks: Tensor, texts: Sequence[str]) -> Tensor:
        """How much each region of one crop looks like each text's class (:class:`RegionClassifier`).

        Args:
            encoded: from :meth:`encode` (any batch size).
            crop: which crop of ``encoded`` the regions lie in.
            masks: (K, 1, S, S, S) region masks (bool or float) on that crop.
            texts: T text prompts.

        Returns:
            (K, T) float scores; a region belongs to the text with the highest score.
        """
        image = encoded.image[crop : crop + 1]
        features = [F.avg_pool3d(image, 2)]
        if encoded.image_features:
            features.append(encoded.image_features[0][crop : crop + 1])
        shape = features[-1].shape[2:]
        fused = torch.cat([f if f.shape[2:] == shape else F.adaptive_avg_pool3d(f, shape) for f in features], dim=1)
        sentences = self.text(list(texts)).pooled.to(fused.device)
        return self.region_head(self.region_head.describe(fused.float(), masks.to(fused.device)), sentences.float())


def refsam3d_overhead(model: RefSAM3D) -> dict[str, float]:
    """Parameter counts of the new parts against the backbone.

    Returns:
        ``backbone`` (the SAM-Med3D parameters), one entry per new part (``adapters``, ``text``,
        ``text_projector``, ``cross_attn``, ``ref_decoder``), ``new`` (their sum), ``ratio`` (new / backbone) and
        ``trainable`` (parameters of :meth:`RefSAM3D.trainable_parameter_names`).
    """
    return parameter_overhead(model, NEW_PREFIXES, model.trainable_parameter_names())


def build_refsam3d(
    config: Sam3DConfig | None = None, options: RefSAM3DOptions | None = None, *, attn_impl: str = "fast"
) -> RefSAM3D:
    """Build a randomly initialised RefSAM3D (zero-initialised adapters and decoder head) and apply
    ``options.freeze_backbone``.

    Example:
        >>> from lesionsam.models.backbone import get_preset
        >>> model = build_refsam3d(get_preset("tiny"))
    """
    model = RefSAM3D.from_sam3d(build_sam3d(config, attn_impl=attn_impl), options)
    if model.options.freeze_backbone:
        model.freeze_backbone_()
    return model


def _build(config: ModelConfig, options: RefSAM3DOptions | None) -> RefSAM3D:
    return build_refsam3d(config.backbone, options, attn_impl=config.attention)


register_method(
    "refsam3d",
    options=RefSAM3DOptions,
    description="RefSAM3D: text-referred 3D segmentation",
    loss="dice_ce",
    training="text",
    train_options=RefSAM3DTrainOptions,
    full_res_note="its ref_decoder already refines the mask at full resolution from a conv path on the crop",
)(_build)
