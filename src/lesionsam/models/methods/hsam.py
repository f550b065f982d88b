"""H-SAM: prompt-free, multi-class, two-stage hierarchical decoding on the SAM-Med3D backbone.

Cheng et al., CVPR 2024, "Unleashing the Potential of SAM for Medical Adaptation via Hierarchical Decoding", carried
from 2D SAM to the 3D SAM-Med3D backbone. The official parts are passed in unchanged (keys ``image_encoder.*``,
``prompt_encoder.*``, ``mask_decoder.*``); the new parts live under their own prefixes:

* ``lora.<i>`` -- a low-rank update of encoder block ``i``'s ``attn.qkv`` (:class:`QKVLoRA`):
  ``qkv(x) = W x + b + (alpha / r) · B A x`` with A (r, C) Kaiming-uniform (as LoRA / PEFT) and B (3C, r) zero, so
  a fresh model's image embedding is exactly the backbone's. **How:** the ``nn.Linear`` stays as it is (official keys
  ``image_encoder.blocks.<i>.attn.qkv.weight/bias`` unchanged) and a forward hook on it adds ``(alpha/r)·B A x`` to
  its output. Both attention paths stay exact. The padded tokens of the windowed blocks
  (``shared/spec/sam_med3d_attention.md``) are zeros after ``norm1``, so their LoRA term is zero and their q, k, v
  remain the bias alone: the fast path calls ``qkv(...)`` on the real tokens only (the hook fires) and reads the
  padded ones from ``qkv.bias`` (``_bias_qkv``), the naive path calls ``qkv(...)`` on the zero-padded windows; the
  two still agree (tested). The hook is registered on the module object, so a :class:`Sam3D` sharing these parts
  sees the update too (build H-SAM from a fresh ``Sam3D``; a second H-SAM on the same parts raises); as a bound
  method of :class:`QKVLoRA` it survives ``copy.deepcopy`` and gradient checkpointing.
* ``hsam_decoder.*`` -- everything else (:class:`HSAMDecoder`): the stage-1 class tokens, the stage-2 prior-guided
  transformer, the hierarchical pixel decoder and the stage-2 hypernetwork.

Notation: B batch, K foreground classes (``options.num_classes``), K + 1 output channels (channel 0 = background),
E prompt embed dim, G token grid side, N = G³ image tokens, S = G · patch crop side; every grid has axes (D, H, W).

**Stage 1 (prior mask)** -- the official SAM-Med3D decoder with learned class tokens instead of user prompts: the
K + 1 class tokens ``hsam_decoder.class_tokens`` (B, K + 1, E) are the sparse prompt and the prompt encoder's
``no_mask_embed`` the dense one. The two-way transformer runs once on the official token sequence ``[IoU token,
mask tokens, class tokens]`` (the pretrained weights always saw the IoU and mask tokens, so they stay). Each class
token's output goes through the official single-mask hypernetwork ``output_hypernetworks_mlps[0]`` (shared by all
classes: pretrained, and the class is told apart by its token) and is dotted with the official ``output_upscaling``
of the attended image embedding: stage-1 low-res logits (B, K + 1, 4G, 4G, 4G). :meth:`HSAM.stage1` reproduces
``MaskDecoder3D.predict_masks`` with the official submodules to also return the transformer's image tokens, the 2G
intermediate and the 4G upscaled features (mask_decoder.py is not changed).

**Prior, stage 2 and the hierarchical pixel decoder**: the maths is in :mod:`lesionsam.models.methods.hsam_parts`,
where those parts live.

**Outputs** (:class:`SegOutput`): ``logits`` (B, K + 1, S³) stage-2 logits; ``low_res_logits`` (B, K + 1, 4G³) their
average over each (patch/4)³ block; ``iou`` (B, K + 1) all ones -- H-SAM predicts no mask quality (its channels are
classes, not alternatives to rank), so nothing should select by it; ``extras["stage1_low_res_logits"]`` (B, K + 1,
4G³), ``extras["stage1_logits"]`` (B, K + 1, S³) their trilinear upsampling, and ``extras["prior"]`` (B, K + 1, G³).
Channel 0 is the background; a label map is ``logits.argmax(1)``. The training loss registered as ``"hsam"`` (in
``lesionsam.losses``) is meant to combine ``(1 − w)·L(stage1_logits) + w·L(logits)`` with w rising over training.

**Prompts**: none. ``required_prompts`` and ``accepted_prompts`` are empty (clicks, masks or text raise the standard
``check_prompts`` error) and ``prompt_free`` is True.

**Freezing** (:func:`build_hsam`; :meth:`HSAM.freeze_backbone_`): the image encoder is frozen when
``options.freeze_encoder`` (default), its LoRA trains; the SAM mask decoder trains (as in H-SAM / SAMed) except what
a prompt-free decoding never reaches (IoU head, hypernetworks of mask tokens 1..M); of the prompt encoder only
``no_mask_embed`` trains; every new part trains (:meth:`HSAM.trainable_parameter_names`: what the loss reaches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lesionsam.models.backbone import Sam3D, Sam3DConfig, build_sam3d
from lesionsam.models.backbone.common import MLP
from lesionsam.models.backbone.image_encoder import ImageEncoderViT3D
from lesionsam.models.backbone.mask_decoder import MaskDecoder3D
from lesionsam.models.backbone.prompt_encoder import PromptEncoder3D
from lesionsam.models.config import ModelConfig
from lesionsam.models.interface import Prompts, SegOutput
from lesionsam.models.methods.common import int_at_least, parameter_overhead, upsampling_levels
from lesionsam.models.methods.hsam_parts import (
    HierarchicalPixelDecoder,
    PriorGuidedDecoder,
    QKVLoRA,
    class_balance_weights,
    cross_attention_guidance,
    has_lora_hook,
    prior_from_logits,
    self_attention_guidance,
)
from lesionsam.models.registry import register_method
from lesionsam.utils.options import look_up_option

#: State-dict prefixes of the parts H-SAM adds to the backbone.
NEW_PREFIXES = ("lora.", "hsam_decoder.")

#: Encoder layers that can carry LoRA.
LORA_TARGETS = ("qkv",)


@dataclass(frozen=True)
class HSAMOptions:
    """Options of H-SAM (``model.options`` of the ``hsam`` method).

    Attributes:
        num_classes: number K of foreground classes; the model outputs K + 1 channels, channel 0 the background.
        lora_rank: rank r of the LoRA update of each encoder block's qkv projection.
        lora_alpha: LoRA scale numerator: the update is ``(lora_alpha / lora_rank) · B A x``.
        lora_targets: encoder layers with LoRA; only ``"qkv"`` (every block's attention qkv).
        class_weights: None (default): the class-balanced self-attention weighs classes by their inverse predicted
            frequency in each crop (from the stage-1 prior, at run time). Or K + 1 positive weights, background
            first, used instead (e.g. inverse training-set class frequencies; normalised to mean 1). Weights, not
            frequencies.
        decoder_channels: channels ch of the hierarchical pixel decoder (4ch, 2ch, then ch per level; ch // 2,
            at least 2, at the crop's full resolution).
        freeze_encoder: freeze the whole image encoder (its LoRA update trains); False trains it too.
    """

    num_classes: int = 1
    lora_rank: int = 4
    lora_alpha: float = 4.0
    lora_targets: str = "qkv"
    class_weights: tuple[float, ...] | None = None
    decoder_channels: int = 16
    freeze_encoder: bool = True

    def __post_init__(self) -> None:
        for name, least in (("num_classes", 1), ("lora_rank", 1), ("decoder_channels", 2)):
            object.__setattr__(self, name, int_at_least(f"HSAMOptions.{name}", getattr(self, name), least))
        alpha = self.lora_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"HSAMOptions.lora_alpha must be a finite number > 0, got {alpha!r}")
        object.__setattr__(self, "lora_alpha", float(alpha))
        look_up_option(self.lora_targets, LORA_TARGETS, what="H-SAM LoRA target")
        if not isinstance(self.freeze_encoder, bool):
            raise ValueError(f"HSAMOptions.freeze_encoder must be true or false, got {self.freeze_encoder!r}")
        if self.class_weights is not None:
            try:
                if isinstance(self.class_weights, (str, bytes)):
                    raise TypeError
                weights = tuple(float(w) for w in self.class_weights)
            except (TypeError, ValueError):
                raise ValueError(
                    f"HSAMOptions.class_weights must be a list of K + 1 numbers or null, got {self.class_weights!r}"
                ) from None
            want = self.num_classes + 1
            if len(weights) != want:
                raise ValueError(
                    f"HSAMOptions.class_weights needs {want} weights (background first, then the {self.num_classes} "
                    f"foreground class(es)), got {len(weights)}: {list(weights)}"
                )
            if not all(math.isfinite(w) and w > 0 for w in weights):
                raise ValueError(f"HSAMOptions.class_weights must all be finite and > 0, got {list(weights)}")
            object.__setattr__(self, "class_weights", weights)

    @property
    def num_output_channels(self) -> int:
        """K + 1: the foreground classes plus the background (channel 0)."""
        return self.num_classes + 1


def _num_levels(config: Sam3DConfig) -> int:
    return upsampling_levels(config, owner="H-SAM's hierarchical pixel decoder")


# ---------------------------------------------------------------------------------------------------- LoRA
class HSAMDecoder(nn.Module):
    """The parts H-SAM adds besides LoRA (state-dict prefix ``hsam_decoder.``).

    * ``class_tokens`` (K + 1, E): stage 1's learned sparse prompt (N(0, 1), as SAM's own tokens);
    * ``refine``: :class:`PriorGuidedDecoder` (stage 2's transformer, with ``class_queries``);
    * ``pixel_decoder``: :class:`HierarchicalPixelDecoder`;
    * ``hypernet``: MLP E → E → width, one per-voxel weight vector per refined class query.

    Args:
        config: backbone sizes.
        options: :class:`HSAMOptions`.
    """

    def __init__(self, *, config: Sam3DConfig, options: HSAMOptions) -> None:
        super().__init__()
        dim, channels = config.prompt_embed_dim, options.num_output_channels
        self.grid = config.grid_size
        self.class_tokens = nn.Embedding(channels, dim)
        self.refine = PriorGuidedDecoder(
            dim=dim, num_heads=config.decoder_num_heads, num_channels=channels, mlp_dim=4 * dim
        )
        self.pixel_decoder = HierarchicalPixelDecoder(
            embed_dim=dim, in_chans=config.in_chans, levels=_num_levels(config), channels=options.decoder_channels
        )
        self.hypernet = MLP(dim, dim, self.pixel_decoder.out_channels, 3)
        weights = None if options.class_weights is None else torch.tensor(options.class_weights)
        self.register_buffer("class_weights", weights, persistent=False)

    def set_guidance_scales(self, value: float) -> None:
        """Set every head's γ (self-attention) and λ (cross-attention) to ``value`` (0 switches the prior off)."""
        with torch.no_grad():
            self.refine.self_attn.guidance_scale.fill_(value)
            self.refine.cross_attn.guidance_scale.fill_(value)

    def stage2(self, stage1: Stage1Output, prior: Tensor, image: Tensor, image_pe: Tensor) -> Tensor:
        """Stage-2 decoding guided by a prior.

        Args:
            stage1: :class:`Stage1Output` of the same crops.
            prior: (B, K + 1, G, G, G) class probabilities (:func:`prior_from_logits`); used only as attention
                guidance.
            image: (B, in_chans, S, S, S) crops.
            image_pe: (1, E, G, G, G) positional encoding of the grid.

        Returns:
            (B, K + 1, S, S, S) float stage-2 logits (contiguous).
        """
        b, n, e = stage1.image_tokens.shape
        p = prior.flatten(2)
        if p.shape != (b, stage1.class_tokens.shape[1], n):
            raise ValueError(
                f"prior must be (B, K+1, G, G, G) = ({b}, {stage1.class_tokens.shape[1]}, {self.grid}, {self.grid}, "
                f"{self.grid}), got {tuple(prior.shape)}"
            )
        weights = class_balance_weights(p, self.class_weights)
        pe = image_pe.flatten(2).transpose(1, 2)
        tokens, queries = self.refine(
            stage1.image_tokens,
            pe,
            stage1.class_tokens,
            self_attention_guidance(p, weights),
            cross_attention_guidance(p),
        )
        grid = (self.grid,) * 3
        feats = self.pixel_decoder(
            tokens.transpose(1, 2).reshape(b, e, *grid), stage1.features_2g, stage1.features_4g, image
        )
        hyper = self.hypernet(queries).to(feats.dtype)  # (B, K + 1, width)
        channels_last = feats.permute(0, 2, 3, 4, 1)  # (B, S, S, S, width), a view in channels-last memory
        logits = channels_last.reshape(b, -1, feats.shape[1]) @ hyper.transpose(1, 2)  # (B, S³, K + 1)
        return logits.transpose(1, 2).reshape(b, -1, *feats.shape[2:]).contiguous()


# ---------------------------------------------------------------------------------------------------- model
@dataclass
class Stage1Output:
    """What :meth:`HSAM.stage1` returns.

    Attributes:
        low_res_logits: (B, K + 1, 4G, 4G, 4G) float stage-1 logits (channel 0 background).
        class_tokens: (B, K + 1, E) transformer outputs of the class tokens.
        image_tokens: (B, G³, E) attended image tokens (the two-way transformer's keys), in (D, H, W) raster order.
        features_2g: (B, E/4, 2G, 2G, 2G) output of the decoder's first upscaling step (after LayerNorm, GELU).
        features_4g: (B, E/8, 4G, 4G, 4G) the decoder's upscaled embedding (what the hypernetwork is dotted with).
    """

    low_res_logits: Tensor
    class_tokens: Tensor
    image_tokens: Tensor
    features_2g: Tensor
    features_4g: Tensor


@dataclass
class HSAMEncodedImage:
    """What :meth:`HSAM.encode` returns.

    Attributes:
        embedding: (B, E, G, G, G) float image embedding (LoRA-adapted encoder), axes (D, H, W).
        image: (B, in_chans, S, S, S) the crop itself (the pixel decoder concatenates it at full resolution).
    """

    embedding: Tensor
    image: Tensor


class HSAM(Sam3D):
    """H-SAM (Cheng et al., CVPR 2024, "Unleashing the Potential of SAM for Medical Adaptation via Hierarchical
    Decoding") on SAM-Med3D: LoRA on the encoder's qkv, a stage-1 prior from the SAM decoder with learned class
    tokens, and a prior-guided stage 2 with a hierarchical pixel decoder (see the module docstring for every part
    and decision). Prompt-free and multi-class: K + 1 output channels, channel 0 the background.

    Args:
        image_encoder, prompt_encoder, mask_decoder: the SAM-Med3D parts (official keys unchanged; LoRA hooks are
            registered on the encoder's qkv layers).
        config: the sizes the parts were built with.
        options: :class:`HSAMOptions`. The constructor does not change ``requires_grad``; :func:`build_hsam` applies
            the freezing policy.

    Raises:
        ValueError: a patch size that is not a power of two >= 4, or parts that already carry another H-SAM's LoRA.
    """

    required_prompts = frozenset()
    accepted_prompts = frozenset()
    prompt_free = True
    export_blocker = (
        "it is prompt-free (hierarchical two-stage decoder over whole-volume windows), which is not exported"
    )

    def __init__(
        self,
        *,
        image_encoder: ImageEncoderViT3D,
        prompt_encoder: PromptEncoder3D,
        mask_decoder: MaskDecoder3D,
        config: Sam3DConfig,
        options: HSAMOptions | None = None,
    ) -> None:
        super().__init__(
            image_encoder=image_encoder, prompt_encoder=prompt_encoder, mask_decoder=mask_decoder, config=config
        )
        self.options = options or HSAMOptions()
        if len(mask_decoder.output_upscaling) != 5:
            raise ValueError("H-SAM expects the official SAM-Med3D output_upscaling (ConvT, LN, GELU, ConvT, GELU)")
        qkv_layers = [blk.attn.qkv for blk in image_encoder.blocks]
        if any(has_lora_hook(layer) for layer in qkv_layers):
            raise ValueError(
                "these SAM-Med3D parts already carry the LoRA hooks of another H-SAM model; build H-SAM from a fresh "
                "Sam3D (build_sam3d) or use that model"
            )
        self.lora = nn.ModuleList(
            QKVLoRA(
                in_features=layer.in_features,
                out_features=layer.out_features,
                rank=self.options.lora_rank,
                alpha=self.options.lora_alpha,
            )
            for layer in qkv_layers
        )
        self.hsam_decoder = HSAMDecoder(config=config, options=self.options)
        for layer, lora in zip(qkv_layers, self.lora, strict=True):
            layer.register_forward_hook(lora.hook)

    @classmethod
    def from_sam3d(cls, sam: Sam3D, options: HSAMOptions | None = None) -> HSAM:
        """H-SAM sharing the parts (the same module objects, not copies) of a built :class:`Sam3D`."""
        return cls.sharing_parts_of(sam, options=options)  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        """K: foreground classes."""
        return self.options.num_classes

    @property
    def num_output_channels(self) -> int:
        """K + 1: output channels, channel 0 the background."""
        return self.options.num_output_channels

    # ---------------------------------------------------------------------------------------------- freezing
    def frozen_parameter_names(self) -> list[str]:
        """Backbone parameters the policy freezes: the image encoder (with ``freeze_encoder``), the prompt encoder
        except ``no_mask_embed``, and the mask decoder's IoU head and hypernetworks of mask tokens 1..M (unused)."""
        unused_hyper = tuple(
            f"mask_decoder.output_hypernetworks_mlps.{i}." for i in range(1, self.mask_decoder.num_mask_tokens)
        )
        frozen = []
        for name, _ in self.named_parameters():
            if name.startswith("image_encoder."):
                if self.options.freeze_encoder:
                    frozen.append(name)
            elif name.startswith("prompt_encoder."):
                if not name.startswith("prompt_encoder.no_mask_embed."):
                    frozen.append(name)
            elif name.startswith(("mask_decoder.iou_prediction_head.", *unused_hyper)):
                frozen.append(name)
        return frozen

    def trainable_parameter_names(self) -> list[str]:
        """Parameters that train under the policy: LoRA, the new decoder parts, the used SAM mask decoder and
        ``no_mask_embed`` (and the image encoder without ``freeze_encoder``)."""
        frozen = set(self.frozen_parameter_names())
        return [n for n, _ in self.named_parameters() if n not in frozen]

    def freeze_backbone_(self) -> HSAM:
        """Set ``requires_grad`` by the policy: False on :meth:`frozen_parameter_names`, True on every other one."""
        frozen = set(self.frozen_parameter_names())
        for name, p in self.named_parameters():
            p.requires_grad_(name not in frozen)
        return self

    # ---------------------------------------------------------------------------------------------- forward
    def encode(self, image: Tensor) -> HSAMEncodedImage:  # type: ignore[override]
        """(B, C, S, S, S) normalised crops, axes (D, H, W) → :class:`HSAMEncodedImage` (LoRA embedding and crop)."""
        return HSAMEncodedImage(embedding=self.image_encoder(image), image=image)

    def stage1(self, embedding: Tensor) -> Stage1Output:
        """The SAM-Med3D decoder with the learned class tokens as the sparse prompt and ``no_mask_embed`` as the
        dense one (``MaskDecoder3D.predict_masks`` step by step, official submodules, shared hypernetwork 0).

        Args:
            embedding: (B, E, G, G, G) image embedding.

        Returns:
            :class:`Stage1Output`.
        """
        decoder = self.mask_decoder
        b, e, *grid = embedding.shape
        sparse = self.hsam_decoder.class_tokens.weight.unsqueeze(0).expand(b, -1, -1).to(embedding.dtype)
        tokens = decoder.output_tokens(sparse)  # (B, 1 + num_mask_tokens + K + 1, E)
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1, 1).to(embedding.dtype)
        pos = self.prompt_encoder.get_dense_pe().expand(b, -1, -1, -1, -1)
        hs, keys = decoder.transformer(embedding + dense, pos, tokens)
        src = keys.transpose(1, 2).reshape(b, e, *grid)
        up = decoder.output_upscaling
        features_2g = up[2](up[1](up[0](src)))
        features_4g = up[4](up[3](features_2g))
        class_out = hs[:, 1 + decoder.num_mask_tokens :]
        hyper = decoder.output_hypernetworks_mlps[0](class_out)  # (B, K + 1, E/8)
        c, *low_grid = features_4g.shape[1:]
        low = (hyper @ features_4g.reshape(b, c, -1)).reshape(b, -1, *low_grid)
        return Stage1Output(
            low_res_logits=low,
            class_tokens=class_out,
            image_tokens=keys,
            features_2g=features_2g,
            features_4g=features_4g,
        )

    def prior(self, stage1_low_res_logits: Tensor) -> Tensor:
        """(B, K + 1, 4G³) stage-1 logits → (B, K + 1, G, G, G) prior (:func:`prior_from_logits`)."""
        return prior_from_logits(stage1_low_res_logits, self.config.grid_size)

    def decode(  # type: ignore[override]
        self, encoded: HSAMEncodedImage, prompts: Prompts, *, multimask_output: bool = False
    ) -> SegOutput:
        """Both stages on a cached :class:`HSAMEncodedImage`.

        Args:
            encoded: from :meth:`encode`.
            prompts: must be empty (``Prompts()``).
            multimask_output: must be False (the channels are classes).

        Returns:
            :class:`SegOutput`: low-res (B, K + 1, 4G³) and full-res (B, K + 1, S³) stage-2 logits, ``iou`` (B, K + 1)
            ones, ``extras["stage1_low_res_logits"]`` (B, K + 1, 4G³), ``extras["stage1_logits"]`` (B, K + 1, S³)
            and ``extras["prior"]`` (B, K + 1, G, G, G).

        Raises:
            TypeError: ``encoded`` is not a :class:`HSAMEncodedImage`.
            ValueError: any prompt, or ``multimask_output=True``.
        """
        if not isinstance(encoded, HSAMEncodedImage):
            raise TypeError(
                f"HSAM.decode expects the HSAMEncodedImage returned by HSAM.encode, got {type(encoded).__name__}; "
                "call model.decode(model.encode(image), Prompts())"
            )
        self.check_prompts(prompts)
        if multimask_output:
            raise ValueError(
                "H-SAM outputs one channel per class (background first); call it with multimask_output=False"
            )
        s1 = self.stage1(encoded.embedding)
        prior = self.prior(s1.low_res_logits)
        logits = self.hsam_decoder.stage2(s1, prior, encoded.image, self.prompt_encoder.get_dense_pe())
        low = F.avg_pool3d(logits, kernel_size=logits.shape[-1] // s1.low_res_logits.shape[-1])
        return SegOutput(
            low_res_logits=low,
            logits=logits,
            iou=logits.new_ones(logits.shape[:2]),
            extras={
                "stage1_low_res_logits": s1.low_res_logits,
                "stage1_logits": self.upsample(s1.low_res_logits),
                "prior": prior,
            },
        )

    def forward(self, image: Tensor, prompts: Prompts | None = None, *, multimask_output: bool = False) -> SegOutput:
        """Segment crops without prompts.

        Args:
            image: (B, C, S, S, S) float normalised crops, axes (D, H, W).
            prompts: None or an empty :class:`Prompts` (any prompt raises).
            multimask_output: must be False.

        Returns:
            :class:`SegOutput` (see :meth:`decode`).
        """
        return self.decode(self.encode(image), prompts or Prompts(), multimask_output=multimask_output)


def hsam_overhead(model: HSAM) -> dict[str, float]:
    """Parameter counts of the new parts against the backbone.

    Returns:
        ``backbone`` (the SAM-Med3D parameters), ``lora``, ``hsam_decoder``, ``new`` (their sum), ``ratio``
        (new / backbone) and ``trainable`` (parameters of :meth:`HSAM.trainable_parameter_names`).
    """
    return parameter_overhead(model, NEW_PREFIXES, model.trainable_parameter_names())


def build_hsam(
    config: Sam3DConfig | None = None, options: HSAMOptions | None = None, *, attn_impl: str = "fast"
) -> HSAM:
    """Build a randomly initialised H-SAM (zero LoRA: the encoder equals its backbone) and apply the freezing policy.

    Example:
        >>> from lesionsam.models.backbone import get_preset
        >>> model = build_hsam(get_preset("tiny"), HSAMOptions(num_classes=2))
    """
    return HSAM.from_sam3d(build_sam3d(config, attn_impl=attn_impl), options).freeze_backbone_()


def _build(config: ModelConfig, options: HSAMOptions | None) -> HSAM:
    return build_hsam(config.backbone, options, attn_impl=config.attention)


register_method(
    "hsam",
    options=HSAMOptions,
    description="H-SAM: prompt-free hierarchical decoding (multi-class)",
    loss="hsam",
    training="automatic",
    full_res_note="its hierarchical pixel decoder already decodes at full resolution from the crop",
)(_build)
