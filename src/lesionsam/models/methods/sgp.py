"""SGP-SAM: SAM-Med3D with Self-Gated Prompting Modules (SGPM) in the image encoder.

Registered twice, as the same model with different training losses:

* ``sgp_sam`` — SGP-SAM as published: SGPM + Zoom Loss (Dice + voxel-balanced focal);
* ``sgp_dice`` — ablation: SGPM trained with Dice only.

An SGPM sits after a chosen encoder block (default: after each global-attention block). It holds

* a **gating unit** ("multi-channel gating"): global average pooling of the (B, G, G, G, C) token grid,
  LayerNorm, MLP C → C/r → 2 giving (skip, keep) logits per sample. While training (``gate="learned"``)
  the decision is a Gumbel-softmax straight-through sample (0/1 forward, soft gradient); at inference it
  is the hard argmax (deterministic);
* a **Multi-Scale Feature Fusion** block (MSFF): LayerNorm, pointwise reduction C → C/r, GELU,
  parallel depthwise 3D convolutions at several dilations (receptive fields), GELU, concatenation and a
  pointwise fusion back to C whose weight and bias start at zero. Its output is added to the tokens as a
  prompt: ``tokens + gate * msff(tokens)``. A freshly built SGP-SAM therefore equals its backbone exactly.

**Skipped means not computed.** Outside gradient-carrying training of a learned gate, the MSFF runs only on
the samples whose gate is open (they are index-selected, fused and scattered back); with every gate closed
it is not called at all. While training a learned gate with gradients enabled, MSFF runs on *every* sample:
the straight-through gradient of the keep probability is ``<dL/d tokens_out, msff(tokens)>``, which needs
``msff(tokens)`` for closed samples too (their forward contribution is still exactly zero). Gate mode
``"off"`` never runs the MSFF; ``"on"`` always runs it. The gating unit itself (a pooling and a tiny MLP)
runs in every mode, so ``gate_probs`` can always be logged.

Pointwise (1×1×1) convolutions are written as ``nn.Linear`` over the channel axis of the channels-last
token grid (the same operation, without permutes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lesionsam.models.backbone import FullResPath, Sam3D, Sam3DConfig, build_sam3d
from lesionsam.models.backbone.image_encoder import ImageEncoderViT3D
from lesionsam.models.backbone.mask_decoder import MaskDecoder3D
from lesionsam.models.backbone.prompt_encoder import PromptEncoder3D
from lesionsam.models.config import ModelConfig
from lesionsam.models.interface import Prompts, SegOutput
from lesionsam.models.methods.sgp_budget import SGPTrainOptions, gate_budget
from lesionsam.models.methods.sgp_high_res import high_res_summary, high_res_width
from lesionsam.models.registry import register_method, register_preset
from lesionsam.utils.options import look_up_option

#: Gate modes: a learned self-gate, or the always-open / always-closed ablations.
GATE_MODES = ("learned", "on", "off")

#: Statistics of the token grid a gating unit can pool (concatenated in the order given).
GATE_POOLS = ("mean", "max", "std")

#: Default logit margin keep − skip of a fresh gate: P(open) = sigmoid(3) ≈ 0.95 under Gumbel sampling.
DEFAULT_GATE_OPEN_BIAS = 3.0


@dataclass(frozen=True)
class SGPOptions:
    """Options of SGP-SAM (``model.options`` of the ``sgp_sam`` and ``sgp_dice`` methods).

    Attributes:
        blocks: encoder block indices after which an SGPM sits; None: every global-attention block of the
            backbone (``encoder_global_attn_indexes``; 2, 5, 8, 11 for ViT-B). Checked against the encoder
            depth when the model is built.
        gate: ``"learned"`` (self-gated), ``"on"`` (always open) or ``"off"`` (always closed, = backbone).
        reduction: channel reduction r of the gating MLP (C → C/r → 2) and of the fusion block (C → C/r).
        dilations: dilation of each parallel depthwise convolution of the fusion block (one branch each).
        kernel_size: side of the depthwise kernels (odd).
        gumbel_tau: temperature of the Gumbel-softmax while training (shapes the straight-through gradient;
            the hard sample's distribution is ``softmax(logits)`` whatever the temperature).
        gate_open_bias: initial logit margin keep − skip. The keep probability of a fresh gate is about
            ``sigmoid(gate_open_bias)`` (0.95 for the default 3.0), so the fusion blocks receive gradients
            from the start; at inference a fresh gate is open.
        gate_pool: the per-sample statistics of the (G, G, G, C) token grid the gating unit sees, concatenated:
            any of ``"mean"``, ``"max"``, ``"std"`` (over the grid, per channel). The default ``("mean",)`` is the
            paper's global average pooling; a small lesion covers few of the G³ tokens (1 of 512 for ViT-B), so
            its trace in the mean is diluted about G³-fold and the gate sees nearly the same input for every crop
            of an organ. ``max`` keeps the most extreme token per channel and ``std`` the heterogeneity of the
            crop, so the decision can depend on what the crop holds (cost: two reductions over G³ x C tokens,
            negligible next to one encoder block). The gate's first layer widens to ``len(gate_pool) x C`` inputs
            (checkpoints trained with another ``gate_pool`` do not load).
        high_res: the gate and fusion block of every SGPM also see a per-token summary of the full-resolution
            path's stem features (needs ``model.full_res_channels``; :mod:`lesionsam.models.methods.sgp_high_res`).
    """

    blocks: tuple[int, ...] | None = None
    gate: str = "learned"
    reduction: int = 4
    dilations: tuple[int, ...] = (1, 2, 3)
    kernel_size: int = 3
    gumbel_tau: float = 1.0
    gate_open_bias: float = DEFAULT_GATE_OPEN_BIAS
    gate_pool: tuple[str, ...] = ("mean",)
    high_res: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.high_res, bool):
            raise ValueError(f"SGPOptions.high_res must be true or false, got {self.high_res!r}")
        if self.blocks is not None:
            blocks = tuple(int(b) for b in self.blocks)
            if any(b < 0 for b in blocks):
                raise ValueError(f"SGPOptions.blocks must be non-negative block indices, got {list(blocks)}")
            if len(set(blocks)) != len(blocks):
                raise ValueError(f"SGPOptions.blocks has duplicates: {list(blocks)}; list each block once")
            object.__setattr__(self, "blocks", tuple(sorted(blocks)))
        look_up_option(self.gate, GATE_MODES, what="SGP gate mode")
        if int(self.reduction) < 1:
            raise ValueError(f"SGPOptions.reduction must be an integer >= 1, got {self.reduction!r}")
        dilations = tuple(int(d) for d in self.dilations)
        if not dilations or any(d < 1 for d in dilations):
            raise ValueError(f"SGPOptions.dilations must be a non-empty list of integers >= 1, got {self.dilations}")
        object.__setattr__(self, "dilations", dilations)
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"SGPOptions.kernel_size must be odd and >= 1 (same-size padding), got {self.kernel_size}")
        if not self.gumbel_tau > 0:
            raise ValueError(f"SGPOptions.gumbel_tau must be > 0, got {self.gumbel_tau}")
        if not math.isfinite(self.gate_open_bias):
            raise ValueError(f"SGPOptions.gate_open_bias must be finite, got {self.gate_open_bias}")
        pools = (self.gate_pool,) if isinstance(self.gate_pool, str) else tuple(self.gate_pool)
        if not pools or len(set(pools)) != len(pools):
            raise ValueError(
                f"SGPOptions.gate_pool must list distinct statistics among {list(GATE_POOLS)}, got {self.gate_pool!r}"
            )
        for pool in pools:
            look_up_option(pool, GATE_POOLS, what="SGP gate pooling")
        object.__setattr__(self, "gate_pool", pools)

    def resolve_blocks(self, config: Sam3DConfig) -> tuple[int, ...]:
        """The block indices for a backbone of these sizes (``ValueError`` if one is not in the encoder)."""
        blocks = self.blocks if self.blocks is not None else tuple(sorted(config.encoder_global_attn_indexes))
        bad = [b for b in blocks if not 0 <= b < config.encoder_depth]
        if bad:
            raise ValueError(
                f"SGPOptions.blocks {bad} are not blocks of the image encoder (depth {config.encoder_depth}: "
                f"indices 0..{config.encoder_depth - 1}; global-attention blocks "
                f"{list(config.encoder_global_attn_indexes)})"
            )
        return blocks


class GatingUnit(nn.Module):
    """Multi-channel gating: (B, G, G, G, C) tokens → (B, 2) logits (index 0 = skip, 1 = keep).

    Global pooling over the grid (``pool``: mean, and optionally max and std per channel, concatenated: P·C
    values), LayerNorm, Linear P·C → hidden, GELU, Linear hidden → 2. The last layer starts with small weights
    (std 0.01) and bias ``(0, open_bias)``, so a fresh gate is open with probability about ``sigmoid(open_bias)``
    whatever the input.
    """

    def __init__(self, *, dim: int, hidden: int, open_bias: float, pool: Sequence[str] = ("mean",)) -> None:
        super().__init__()
        self.pool = tuple(look_up_option(p, GATE_POOLS, what="SGP gate pooling") for p in pool)
        width = dim * len(self.pool)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, 2)
        with torch.no_grad():
            nn.init.normal_(self.fc2.weight, std=0.01)
            self.fc2.bias.copy_(torch.tensor([0.0, float(open_bias)]))

    def pooled(self, x: Tensor) -> Tensor:
        """x: (B, G, G, G, C) → (B, P·C): the pooled statistics, in ``pool`` order."""
        flat = x.flatten(1, 3)  # (B, G³, C)
        stats = {
            "mean": lambda: flat.mean(dim=1),
            "max": lambda: flat.amax(dim=1),
            "std": lambda: flat.std(dim=1, correction=0),
        }
        return torch.cat([stats[p]() for p in self.pool], dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, G, G, G, C) → (B, 2) float logits (skip, keep)."""
        return self.fc2(self.act(self.fc1(self.norm(self.pooled(x)))))


class MultiScaleFusion3D(nn.Module):
    """Multi-Scale Feature Fusion over the token grid: (N, G, G, G, C) → (N, G, G, G, C) prompt.

    LayerNorm, pointwise reduction C → hidden, GELU, one depthwise ``kernel_size``³ convolution per dilation
    (zero "same" padding), GELU, concatenation (hidden · len(dilations) channels) and a pointwise fusion back
    to C. The fusion's weight and bias are zero-initialised: a fresh block outputs exactly zero.
    """

    def __init__(self, *, dim: int, hidden: int, kernel_size: int = 3, dilations: Sequence[int] = (1, 2, 3)) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.reduce = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.branches = nn.ModuleList(
            nn.Conv3d(hidden, hidden, kernel_size, padding=d * (kernel_size // 2), dilation=d, groups=hidden, bias=True)
            for d in dilations
        )
        self.fuse = nn.Linear(hidden * len(self.branches), dim)
        nn.init.zeros_(self.fuse.weight)
        nn.init.zeros_(self.fuse.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, G, G, G, C) tokens, axes (D, H, W) → (N, G, G, G, C) prompt to add to them."""
        y = self.act(self.reduce(self.norm(x))).permute(0, 4, 1, 2, 3)  # (N, hidden, G, G, G)
        y = torch.cat([self.act(branch(y)) for branch in self.branches], dim=1)
        return self.fuse(y.permute(0, 2, 3, 4, 1))


class SelfGatedPromptingModule(nn.Module):
    """One SGPM: a :class:`GatingUnit` deciding per sample whether to add a :class:`MultiScaleFusion3D` prompt.

    Args:
        dim: token width C of the encoder.
        reduction: channel reduction r (hidden width ``max(1, C // r)`` of gate and fusion).
        kernel_size, dilations: depthwise branches of the fusion block.
        gate_mode: ``"learned"``, ``"on"`` or ``"off"`` (see :data:`GATE_MODES`).
        gumbel_tau: Gumbel-softmax temperature while training.
        gate_open_bias: initial keep − skip logit margin.
        gate_pool: the statistics the gating unit pools (:attr:`SGPOptions.gate_pool`).
        high_res_dim: width of a high-resolution summary added to what gate and fusion see (``high_res``:
            ``nn.Linear(high_res_dim, C)``); 0: none.
    """

    def __init__(
        self,
        *,
        dim: int,
        reduction: int = 4,
        kernel_size: int = 3,
        dilations: Sequence[int] = (1, 2, 3),
        gate_mode: str = "learned",
        gumbel_tau: float = 1.0,
        gate_open_bias: float = DEFAULT_GATE_OPEN_BIAS,
        gate_pool: Sequence[str] = ("mean",),
        high_res_dim: int = 0,
    ) -> None:
        super().__init__()
        hidden = max(1, dim // reduction)
        self.high_res = nn.Linear(high_res_dim, dim) if high_res_dim else None
        self.gate = GatingUnit(dim=dim, hidden=hidden, open_bias=gate_open_bias, pool=gate_pool)
        self.msff = MultiScaleFusion3D(dim=dim, hidden=hidden, kernel_size=kernel_size, dilations=dilations)
        self.gate_mode = look_up_option(gate_mode, GATE_MODES, what="SGP gate mode")
        self.gumbel_tau = float(gumbel_tau)

    def set_gate_mode(self, mode: str) -> None:
        """Switch between ``"learned"``, ``"on"`` and ``"off"`` (same weights)."""
        self.gate_mode = look_up_option(mode, GATE_MODES, what="SGP gate mode")

    def forward(self, x: Tensor, high_res: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Gate and prompt the tokens after one encoder block.

        Args:
            x: (B, G, G, G, C) tokens, axes (D, H, W).
            high_res: (B, G, G, G, high_res_dim) summary of the crop at high resolution (with ``high_res_dim``).

        Returns:
            ``(tokens, gate, keep_prob)``: (B, G, G, G, C) prompted tokens; (B,) float32 decisions in {0, 1}
            (with the straight-through gradient while training a learned gate); (B,) float32 keep
            probability ``softmax(logits)[:, 1]`` of the gating unit (differentiable; in the forced modes it
            is reported but not used).
        """
        if (self.high_res is None) != (high_res is None):
            raise ValueError("an SGPM takes a high-resolution summary exactly when it was built with high_res_dim")
        seen = x if self.high_res is None else x + self.high_res(high_res.to(x.dtype))  # type: ignore[union-attr]
        logits = self.gate(seen).float()
        keep_prob = logits.softmax(dim=-1)[:, 1]
        batch = x.shape[0]
        if self.gate_mode == "off":
            return x, x.new_zeros(batch, dtype=torch.float32), keep_prob
        if self.gate_mode == "on":
            return x + self.msff(seen), x.new_ones(batch, dtype=torch.float32), keep_prob
        if self.training:
            sample = F.gumbel_softmax(logits, tau=self.gumbel_tau, hard=True)[:, 1]
            # Value exactly 0/1 by construction, gradient the straight-through one of gumbel_softmax.
            gate = sample.detach().round() + (sample - sample.detach())
            if torch.is_grad_enabled():
                # Straight-through: the gate's gradient needs msff(x) for closed samples too, so run it on all.
                return x + gate.to(x.dtype).view(batch, 1, 1, 1, 1) * self.msff(seen), gate, keep_prob
        else:
            gate = (logits.argmax(dim=-1) == 1).float()
        return self._prompt_open_samples(x, seen, gate), gate, keep_prob

    def _prompt_open_samples(self, x: Tensor, seen: Tensor, gate: Tensor) -> Tensor:
        """Add ``msff(seen)`` to the samples whose (hard, gradient-free) gate is 1, computing it for those only."""
        open_idx = gate.detach().nonzero().flatten()
        n_open = open_idx.numel()
        if n_open == 0:
            return x
        if n_open == x.shape[0]:
            return x + self.msff(seen)
        prompt = self.msff(seen.index_select(0, open_idx))
        return x.index_add(0, open_idx, prompt.to(x.dtype))  # autocast may give a lower-precision prompt


@dataclass
class EncodedImage:
    """What :meth:`SGPSam.encode` returns (cache it to decode many prompts).

    Attributes:
        embedding: (B, E, G, G, G) float image embedding, axes (D, H, W).
        gates: (B, n_modules) float32 gate decisions in {0, 1}, columns in block order (``SGPSam.sgpm_blocks``).
        gate_probs: (B, n_modules) float32 keep probabilities of the gating units.
        full_res: the full-resolution path's stem features of the crops (finest first), or None without the path.
    """

    embedding: Tensor
    gates: Tensor
    gate_probs: Tensor
    full_res: tuple[Tensor, ...] | None = None


class SGPSam(Sam3D):
    """SGP-SAM (self-gated prompting + Zoom Loss for 3D lesion segmentation; "SGP-SAM", 2026): SAM-Med3D with
    Self-Gated Prompting Modules after chosen image-encoder blocks.

    The SAM-Med3D parts are built outside and passed in (official state-dict keys unchanged); the SGPMs are
    built here from ``options`` and live in ``self.sgpm``, an ``nn.ModuleDict`` keyed by block index
    (state-dict keys ``sgpm.<block>.gate.*`` and ``sgpm.<block>.msff.*``). They are applied through the
    encoder's ``block_hook``, so the encoder is not copied. With zero-initialised fusion blocks a fresh model
    (or one loaded from official SAM-Med3D weights) gives exactly the backbone's output.

    The forward returns a :class:`SegOutput` whose ``extras`` hold ``"gates"`` (B, n_modules) float 0/1
    decisions and ``"gate_probs"`` (B, n_modules) keep probabilities, columns in :attr:`sgpm_blocks` order.

    Args:
        image_encoder, prompt_encoder, mask_decoder: the SAM-Med3D parts.
        config: the sizes the parts were built with.
        options: :class:`SGPOptions` (blocks are checked against ``config.encoder_depth``).
        full_res: an optional full-resolution decoder path (as :class:`Sam3D`'s).

    Raises:
        ValueError: a block index outside the encoder, or an unknown gate mode.
    """

    has_gates = True
    export_blocker = "its gates decide per crop whether a prompting module runs (data-dependent control flow)"

    def __init__(
        self,
        *,
        image_encoder: ImageEncoderViT3D,
        prompt_encoder: PromptEncoder3D,
        mask_decoder: MaskDecoder3D,
        config: Sam3DConfig,
        options: SGPOptions | None = None,
        full_res: FullResPath | None = None,
    ) -> None:
        super().__init__(
            image_encoder=image_encoder,
            prompt_encoder=prompt_encoder,
            mask_decoder=mask_decoder,
            config=config,
            full_res=full_res,
        )
        opts = options or SGPOptions()
        blocks = opts.resolve_blocks(config)
        self.options = replace(opts, blocks=blocks)
        if opts.high_res and full_res is None:
            raise ValueError(
                "SGPOptions.high_res draws on the full-resolution decoder path's stem: set model.full_res_channels"
            )
        high_res_dim = high_res_width(full_res.stem.widths) if opts.high_res and full_res is not None else 0
        self.sgpm = nn.ModuleDict(
            {
                str(b): SelfGatedPromptingModule(
                    dim=config.encoder_embed_dim,
                    reduction=opts.reduction,
                    kernel_size=opts.kernel_size,
                    dilations=opts.dilations,
                    gate_mode=opts.gate,
                    gumbel_tau=opts.gumbel_tau,
                    gate_open_bias=opts.gate_open_bias,
                    gate_pool=opts.gate_pool,
                    high_res_dim=high_res_dim,
                )
                for b in blocks
            }
        )

    @classmethod
    def from_sam3d(cls, sam: Sam3D, options: SGPOptions | None = None) -> SGPSam:
        """SGP-SAM sharing the parts (the same module objects, not copies) of a built :class:`Sam3D`."""
        return cls.sharing_parts_of(sam, options=options)  # type: ignore[return-value]

    @property
    def sgpm_blocks(self) -> tuple[int, ...]:
        """Encoder block indices carrying an SGPM, ascending (the column order of the gate tensors)."""
        return tuple(int(k) for k in self.sgpm)

    @property
    def gate_mode(self) -> str:
        """The current gate mode (``"learned"``, ``"on"`` or ``"off"``)."""
        return self.options.gate

    def set_gate_mode(self, mode: str) -> None:
        """Switch every SGPM to gate mode ``mode`` (ablations on the same weights)."""
        mode = look_up_option(mode, GATE_MODES, what="SGP gate mode")
        for module in self.sgpm.values():
            module.set_gate_mode(mode)
        self.options = replace(self.options, gate=mode)

    def encode(self, image: Tensor) -> EncodedImage:  # type: ignore[override]
        """(B, C, S, S, S) normalised crops, axes (D, H, W) → :class:`EncodedImage` (embedding and gates)."""
        gates: list[Tensor] = []
        probs: list[Tensor] = []
        stem = self.full_res_features(image)
        summary = high_res_summary(stem, self.config.grid_size) if self.options.high_res and stem else None

        def hook(index: int, tokens: Tensor) -> Tensor:
            key = str(index)
            if key not in self.sgpm:
                return tokens
            tokens, gate, prob = self.sgpm[key](tokens, summary)
            gates.append(gate)
            probs.append(prob)
            return tokens

        embedding = self.image_encoder(image, block_hook=hook if len(self.sgpm) else None)
        batch = image.shape[0]
        empty = embedding.new_zeros(batch, 0, dtype=torch.float32)
        return EncodedImage(
            embedding=embedding,
            gates=torch.stack(gates, dim=1) if gates else empty,
            gate_probs=torch.stack(probs, dim=1) if probs else empty,
            full_res=stem,
        )

    def decode(  # type: ignore[override]
        self, encoded: EncodedImage, prompts: Prompts, *, multimask_output: bool = False
    ) -> SegOutput:
        """Decode prompts against a cached :class:`EncodedImage`, as SAM-Med3D, adding the gates to ``extras``."""
        if not isinstance(encoded, EncodedImage):
            raise TypeError(
                f"SGPSam.decode expects the EncodedImage returned by SGPSam.encode, got {type(encoded).__name__}; "
                "call model.decode(model.encode(image), prompts)"
            )
        out = self.decode_embedding(
            encoded.embedding, prompts, multimask_output=multimask_output, full_res_features=encoded.full_res
        )
        out.extras["gates"] = encoded.gates
        out.extras["gate_probs"] = encoded.gate_probs
        return out

    def step_statistics(self, output: SegOutput) -> dict[str, float]:
        """``gate_rate``: the mean gate-open probability of the output's crops (``extras["gate_probs"]``)."""
        probs = output.extras.get("gate_probs")
        return {} if probs is None else {"gate_rate": float(probs.detach().float().mean())}

    def gate_decisions(self, encoded: EncodedImage) -> Tensor:  # type: ignore[override]
        """(B, n_modules) float32 0/1 decisions of the SGPMs for the encoded crops (columns in block order)."""
        return encoded.gates

    @staticmethod
    def gate_cost(out: SegOutput, target: float | None = None) -> Tensor:
        """The gate budget term of an output: :func:`gate_budget` of its ``extras["gate_probs"]``."""
        return gate_budget(out.extras["gate_probs"], target)


def build_sgp_sam(
    config: Sam3DConfig | None = None,
    options: SGPOptions | None = None,
    *,
    attn_impl: str = "fast",
    full_res_channels: int | None = None,
) -> SGPSam:
    """Build a randomly initialised SGP-SAM (zero-initialised fusion: equal to its backbone), with a fresh
    full-resolution decoder path when ``full_res_channels`` is given (as :func:`build_sam3d`).

    Example:
        >>> from lesionsam.models.backbone import get_preset
        >>> model = build_sgp_sam(get_preset("tiny"), SGPOptions(gate="learned"))
    """
    return SGPSam.from_sam3d(build_sam3d(config, attn_impl=attn_impl, full_res_channels=full_res_channels), options)


def _build(config: ModelConfig, options: SGPOptions | None) -> SGPSam:
    return build_sgp_sam(
        config.backbone, options, attn_impl=config.attention, full_res_channels=config.full_res_channels
    )


#: The Zoom Loss's focal term used by default: the plain (unbalanced) focal loss, chosen by validation Dice in
#: ``lesionsam sweep --stage loss`` (the two best readings, plain and alpha-balanced, compared over three seeds; the
#: published full balance floods the organ). The README gives the table.
ZOOM_DEFAULTS = {"balance": "none"}

register_method(
    "sgp_sam",
    options=SGPOptions,
    description="SGP-SAM: self-gated prompting + Zoom Loss",
    loss="zoom",
    loss_options=ZOOM_DEFAULTS,
    train_options=SGPTrainOptions,
    full_res=True,
)(_build)
register_preset("sgp_dice", of="sgp_sam", loss="dice", description="ablation: SGPM trained with Dice")
