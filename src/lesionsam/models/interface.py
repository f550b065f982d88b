"""The one model interface every lesionsam method implements: ``forward(image, prompts) -> SegOutput``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

#: Prompt kinds a method may need or accept.
PROMPT_KINDS = ("points", "boxes", "mask", "text")


@dataclass
class Prompts:
    """Prompts for one batch of crops. Every field is optional; methods declare which they use.

    Attributes:
        points: (B, N, 3) float voxel indices of the crop in tensor order (D, H, W).
        labels: (B, N) int64 click labels: 1 positive, 0 negative, -1 padding. Required with ``points``.
        boxes: (B, 6) float voxel boxes ``(d0, h0, w0, d1, h1, w1)`` (inclusive corners) in the crop.
        mask: (B, 1, 4G, 4G, 4G) float low-res logits of a previous prediction (G = token grid side).
        text: B strings (for example ``"liver tumour"``).
    """

    points: Tensor | None = None
    labels: Tensor | None = None
    boxes: Tensor | None = None
    mask: Tensor | None = None
    text: list[str] | None = None

    def __post_init__(self) -> None:
        if (self.points is None) != (self.labels is None):
            raise ValueError("Prompts: points and labels go together; give both or neither")

    def kinds(self) -> set[str]:
        """The prompt kinds present (subset of ``PROMPT_KINDS``)."""
        return {k for k in PROMPT_KINDS if getattr(self, "points" if k == "points" else k) is not None}

    def to(self, device: torch.device | str) -> Prompts:
        """A copy with every tensor on ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            if isinstance(getattr(self, f.name), Tensor)
            else getattr(self, f.name)
            for f in fields(self)
        }
        return Prompts(**moved)

    def with_mask(self, mask: Tensor | None) -> Prompts:
        """A copy whose low-res mask prompt is ``mask`` (for iterative clicking)."""
        return replace(self, mask=mask)


@dataclass
class SegOutput:
    """What every method returns.

    Attributes:
        low_res_logits: (B, M, 4G, 4G, 4G) float mask logits at the decoder's resolution.
        logits: (B, M, S, S, S) float mask logits at the crop's resolution (trilinear upsampling).
        iou: (B, M) predicted IoU of each mask.
        extras: method-specific tensors, e.g. ``"gates"`` (SGP-SAM) or ``"stage1_logits"`` (H-SAM).
    """

    low_res_logits: Tensor
    logits: Tensor
    iou: Tensor
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainOptions:
    """Base of a method's own training options: the run config's ``train.options`` (SGP-SAM's gate
    budget, RefSAM3D's text-pair terms), declared with the method (``register_method(..., train_options=...)``) and
    checked when the config is read. A subclass adds fields and may add a term to the training loss."""

    def extra_loss(self, out: SegOutput) -> Tensor | None:
        """A term added to the training loss of a click-trained method, from the last decoder iteration's output of
        a crop batch (None: nothing to add)."""
        return None


def competing_logits(own: Tensor, others: Tensor) -> Tensor:
    """Log-odds of a text's class against background and every competing class, per voxel.

    With per-text logits ``own`` (l₀) and ``others`` (l₁ … l_K) and the background's logit fixed at 0, a softmax
    over {background, class 0, …, class K} gives class 0 the log-odds ``l₀ − log(1 + Σₖ exp lₖ)``: positive where
    the text's class beats both background and every other class (probability above one half). With no
    competitor this is ``l₀`` itself; it is never above ``l₀``.

    Args:
        own: (B, 1, ...) float logits of the referred text.
        others: (B, K, ...) float logits of K competing texts on the same crops (K may be 0).
    """
    if others.shape[1] == 0:
        return own
    zero = others.new_zeros((others.shape[0], 1, *others.shape[2:]))
    return own - torch.logsumexp(torch.cat([zero, others], dim=1), dim=1, keepdim=True)


class SegModel(nn.Module):
    """Base class of every method. Subclasses set the prompt kinds they need and accept, and declare the capabilities
    the trainer and predictor may use (:attr:`scores_regions`, :attr:`num_classes`, :meth:`set_grad_checkpointing`).

    The trainer and predictor look only at these declared attributes, never at a method's name, and never probe a
    model for what it happens to have.
    """

    #: Prompt kinds that must be present.
    required_prompts: ClassVar[frozenset[str]] = frozenset()
    #: Prompt kinds that may be present (others raise).
    accepted_prompts: ClassVar[frozenset[str]] = frozenset()
    #: True: the method segments without any prompt; the trainer trains it on whole-volume sliding-window crops
    #: and the predictor's ``--auto`` mode uses it.
    prompt_free: ClassVar[bool] = False
    #: The registry name the model was built under (set by ``build_model``; errors name it, not the class).
    method_name: str | None = None
    #: True: :meth:`region_scores` scores candidate lesions against texts (RefSAM3D's region classifier); the
    #: trainer's per-lesion class term and the predictor's lesion-by-lesion text decision use it.
    scores_regions: ClassVar[bool] = False
    #: True: the model gates parts of its encoder per crop (SGP-SAM); :meth:`gate_decisions` reads the decisions.
    has_gates: ClassVar[bool] = False
    #: Why ``lesionsam export`` cannot write this model's parts as graphs (one line), or None when it can: the image
    #: encoder (a static crop) and the prompt encoder + mask decoder (a fixed maximum of clicks) of SAM-Med3D.
    export_blocker: ClassVar[str | None] = "its parts are not written for export"

    @property
    def num_classes(self) -> int:
        """Lesion classes segmented at once: 1 for a prompted method (one mask per prompt); K for a prompt-free
        multi-class one (K + 1 output channels, channel 0 the background)."""
        return 1

    def region_scores(self, encoded: Any, crop: int, masks: Tensor, texts: Sequence[str]) -> Tensor:
        """(K, T) scores of K region masks (K, 1, S, S, S) of crop ``crop`` of ``encoded`` against T texts; a region
        belongs to the text with the highest score. Only where :attr:`scores_regions` is True."""
        raise NotImplementedError(f"{self.display_name} has no region classifier (scores_regions is False)")

    def gate_decisions(self, encoded: Any) -> Tensor:
        """(B, n_gates) float 0/1 gate decisions of what :meth:`encode` returned. Only where :attr:`has_gates`."""
        raise NotImplementedError(f"{self.display_name} has no gates (has_gates is False)")

    def step_statistics(self, output: SegOutput) -> dict[str, float]:
        """Statistics of the method's own that a training step logs beside its loss and Dice (e.g. SGP-SAM's
        ``gate_rate``), from the step's last output; none by default."""
        return {}

    def set_grad_checkpointing(self, enabled: bool) -> None:
        """Recompute activations in the backward pass instead of storing them (less memory, more time); a model
        with nothing to checkpoint ignores it."""

    @property
    def display_name(self) -> str:
        """``method 'sam_med3d'`` for messages (the class name for a model built outside the registry)."""
        return f"method {self.method_name!r}" if self.method_name else type(self).__name__

    def check_prompts(self, prompts: Prompts) -> None:
        """Raise ``ValueError`` if a required prompt kind is missing or an unsupported one is given."""
        given = prompts.kinds()
        missing = self.required_prompts - given
        if missing:
            raise ValueError(f"{self.display_name} needs prompt(s) {sorted(missing)}; got {sorted(given) or 'none'}")
        extra = given - self.accepted_prompts - self.required_prompts
        if extra:
            ok = sorted(self.accepted_prompts | self.required_prompts) or ["none"]
            raise ValueError(f"{self.display_name} does not take prompt(s) {sorted(extra)}; it accepts {ok}")

    @property
    def img_size(self) -> int:
        """Side S of the cubic crop the model takes, in voxels."""
        raise NotImplementedError

    @property
    def low_res_size(self) -> int:
        """Side of the low-resolution logits (the mask prompt's size): S / 4 for SAM-Med3D's 16³ patches."""
        raise NotImplementedError

    def encode(self, image: Tensor) -> Any:
        """The part of the forward pass that depends on the image only.

        The trainer and the predictor call it once per crop and then :meth:`decode` once per round of clicks;
        they never look inside what it returns. The default caches nothing: it returns the image and
        :meth:`decode` runs the whole forward.
        """
        return image

    def decode(self, encoded: Any, prompts: Prompts, *, multimask_output: bool = False) -> SegOutput:
        """The prompt-dependent part of the forward pass, on what :meth:`encode` returned."""
        return self.forward(encoded, prompts)

    def forward(self, image: Tensor, prompts: Prompts) -> SegOutput:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class TextCompetition:
    """How text alone naming one trained class is decided against the other trained classes' texts (``rivals``): the
    one rule of the training's validation and the predictor's text mode.

    With no rival the text's own logits stand. A model with a region classifier (:attr:`SegModel.scores_regions`)
    decides lesion by lesion (:attr:`by_region`: the caller scores each connected component of the text's mask
    against ``(text, *rivals)`` with :meth:`SegModel.region_scores`); any other model decides voxel by voxel:
    :meth:`logits` are the text's :func:`competing_logits` against every rival's.

    Attributes:
        rivals: the competing texts, in order.
        by_region: the decision is lesion by lesion.
    """

    rivals: tuple[str, ...]
    by_region: bool

    @classmethod
    def of(cls, model: SegModel, rivals: Sequence[str]) -> TextCompetition:
        """The competition of ``model``'s text-alone output against ``rivals`` (none: no competition)."""
        rivals = tuple(rivals)
        return cls(rivals, bool(rivals) and model.scores_regions)

    @property
    def by_voxel(self) -> bool:
        """The decision is voxel by voxel (:meth:`logits` differ from the text's own)."""
        return bool(self.rivals) and not self.by_region

    def logits(self, model: SegModel, encoded: Any, own: Tensor, *, offset: float = 0.0) -> Tensor:
        """The text's logits after the voxel-by-voxel decision (``own`` itself unless :attr:`by_voxel`).

        Args:
            model: the model; each rival's text alone is decoded on ``encoded`` (what ``model.encode`` gave).
            own: (B, 1, ...) float logits of the text alone on those crops, ``offset`` already subtracted.
            offset: the logit-adjustment offset, subtracted from every rival's logits as from ``own``.
        """
        if not self.by_voxel:
            return own
        n = own.shape[0]
        others = [model.decode(encoded, Prompts(text=[r] * n)).logits[:, :1].float() - offset for r in self.rivals]
        return competing_logits(own, torch.cat(others, dim=1))
