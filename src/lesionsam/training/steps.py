"""The training steps, each one ``nn.Module`` (so ``DistributedDataParallel`` can wrap it): SAM-Med3D's interactive
click step (:class:`InteractiveStep`), its text-referred variant (:class:`~lesionsam.training.text_step.TextStep`)
and the prompt-free step (:class:`AutomaticStep`). A method declares which one trains it
(:attr:`~lesionsam.models.registry.MethodSpec.training`); :func:`build_step` builds it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lesionsam.config import TrainConfig
from lesionsam.data.clicks import ClickSimulator
from lesionsam.losses import StagedLoss
from lesionsam.models import Prompts, SegModel, SegOutput
from lesionsam.models.interface import TrainOptions


def dice_score(pred: Tensor, target: Tensor) -> Tensor:
    """Per-sample Dice of two (B, 1, D, H, W) boolean masks (1 when both are empty)."""
    pred, target = pred.flatten(1).float(), target.flatten(1).float()
    inter = (pred * target).sum(1)
    denom = pred.sum(1) + target.sum(1)
    return torch.where(denom > 0, 2 * inter / denom.clamp_min(1e-8), torch.ones_like(denom))


@dataclass
class StepBatch:
    """The crops of one step as the decoder iterations see them (a text-referred step may double the batch).

    Attributes:
        image, label: (B, 1, S, S, S) float crops and 0/1 targets.
        text: B text prompts given in every iteration (the first iteration has the text alone), or None.
        paired: the batch is a text pair: its second half is the first half's crops with another class's text.
    """

    image: Tensor
    label: Tensor
    text: list[str] | None = None
    paired: bool = False


def click_settings(train: TrainConfig) -> dict[str, int]:
    """The click iterations of a run's ``train`` section, as a click step takes them."""
    return {"num_clicks": train.num_clicks, "mask_only_iterations": train.mask_only_iterations}


class InteractiveStep(nn.Module):
    """SAM-Med3D's interactive training step as one module (so ``DistributedDataParallel`` can wrap it).

    ``forward(image, label, rng)`` → (loss, stats): one encoder pass, ``num_clicks`` decoder iterations with
    simulated clicks and mask feedback, the mean loss over iterations, plus the method's own term from its training
    options (:meth:`~lesionsam.models.interface.TrainOptions.extra_loss` of the last iteration's output: SGP-SAM's
    gate budget). ``stats["gate_rate"]`` is the mean gate-open probability when the output reports gates
    (``extras["gate_probs"]``).

    Subclasses (:class:`~lesionsam.training.text_step.TextStep`) choose each crop's text and add terms through
    :meth:`prompt_batch`, :meth:`encoded_terms` and :meth:`first_terms`.
    """

    def __init__(
        self,
        model: SegModel,
        loss_fn: nn.Module,
        clicks: ClickSimulator,
        *,
        num_clicks: int,
        mask_only_iterations: int,
        options: TrainOptions | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.clicks = clicks
        self.num_clicks = num_clicks
        self.mask_only = mask_only_iterations
        self.options = options

    @classmethod
    def from_config(
        cls, model: SegModel, loss_fn: nn.Module, train: TrainConfig, *, clicks: ClickSimulator, **_: Any
    ) -> InteractiveStep:
        """The step of a run's ``train`` section (its click iterations and the method's training options)."""
        return cls(model, loss_fn, clicks, **click_settings(train), options=train.options)

    def prompt_batch(
        self,
        image: Tensor,
        label: Tensor,
        rng: np.random.Generator,
        target: Tensor | None,
        label_values: Tensor | None,
    ) -> StepBatch:
        """The crops as the iterations see them: here unchanged, with no text."""
        return StepBatch(image, label)

    def encoded_terms(self, total: Tensor, encoded: Any, batch: StepBatch) -> Tensor:
        """``total`` plus the terms computed on the encoded crops, before any decoder iteration (here none)."""
        return total

    def first_terms(self, total: Tensor, out: SegOutput, batch: StepBatch) -> Tensor:
        """``total`` plus the terms of the first iteration's output (here none)."""
        return total

    def forward(
        self,
        image: Tensor,
        label: Tensor,
        rng: np.random.Generator,
        target: Tensor | None = None,
        progress: float = 1.0,
        label_values: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """image, label: (B, 1, S, S, S); label 0/1 float with at least one foreground voxel per sample unless a
        text is given (``progress``, the share of training done, is not used by the interactive step; ``target``
        (B,) the crops' label values and ``label_values`` (B, 1, S, S, S) their label maps, for a text step).

        A crop may have an empty label (a negative crop, ``data.negative_fraction``) only when text is given: its
        clicks then come from the error region of the text-only prediction (a negative click on what was found,
        or a padding click when nothing was), the same rule for the whole batch.
        """
        batch = self.prompt_batch(image, label, rng, target, label_values)
        image, label, text = batch.image, batch.label, batch.text
        gt = label > 0.5
        has_lesion = bool(gt.flatten(1).any(1).all())
        if text is None and not has_lesion:
            raise ValueError(
                "a training crop has no voxel of its target label, so there is no lesion for the first click; "
                "negative crops (data.negative_fraction) need a text-referred method"
            )
        total = image.new_zeros(())
        encoded = self.model.encode(image)
        total = self.encoded_terms(total, encoded, batch)
        later = list(range(1, self.num_clicks))
        mask_only = set(rng.choice(later, size=self.mask_only, replace=False).tolist()) if self.mask_only else set()
        points = labels = low = pred = out = None
        dice = None
        for it in range(self.num_clicks):
            if it == 0 and text is not None:
                prompts = Prompts(text=text)
            elif it == 0:
                points, labels = self.clicks.first(gt, rng)
                prompts = Prompts(points=points, labels=labels)
            elif it in mask_only:
                prompts = Prompts(mask=low, text=text)
            elif points is None:
                points, labels = (
                    self.clicks.first(gt, rng) if has_lesion else self.clicks.next(pred, gt, None, None, rng)
                )
                prompts = Prompts(points=points, labels=labels, mask=low, text=text)
            else:
                points, labels = self.clicks.next(pred, gt, points, labels, rng)
                prompts = Prompts(points=points, labels=labels, mask=low, text=text)
            out = self.model.decode(encoded, prompts)
            total = total + self.loss_fn(out.logits.float(), label)
            if it == 0:
                total = self.first_terms(total, out, batch)
            pred = out.logits.detach() > 0
            low = out.low_res_logits.detach()
            dice = dice_score(pred, gt)
        loss = total / self.num_clicks
        stats = {"dice": float(dice.mean()) if dice is not None else float("nan")}
        if out is not None:
            extra = self.options.extra_loss(out) if self.options is not None else None
            if extra is not None:
                loss = loss + extra
            if "gate_probs" in out.extras:
                stats["gate_rate"] = float(out.extras["gate_probs"].detach().float().mean())
        return loss, stats


class AutomaticStep(nn.Module):
    """The training step of a prompt-free method as one module (for ``DistributedDataParallel``).

    ``forward(image, label, rng, target, progress)`` → (loss, stats): one forward pass with no prompt; the loss gets
    the (B, K+1, S³) logits, the (B, 1, S³) class-index label and, when it is a
    :class:`~lesionsam.losses.StagedLoss`, the method's ``extras["stage1_logits"]`` and the training progress in
    [0, 1]. ``stats["dice"]`` is the mean foreground Dice of the arg-max prediction (:func:`class_dice`).
    """

    def __init__(self, model: SegModel, loss_fn: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    @classmethod
    def from_config(cls, model: SegModel, loss_fn: nn.Module, train: TrainConfig, **_: Any) -> AutomaticStep:
        """The step of a run's ``train`` section (nothing in it changes the prompt-free step)."""
        return cls(model, loss_fn)

    def forward(
        self,
        image: Tensor,
        label: Tensor,
        rng: np.random.Generator | None = None,
        target: Tensor | None = None,
        progress: float = 1.0,
    ) -> tuple[Tensor, dict[str, float]]:
        out = self.model.decode(self.model.encode(image), Prompts())
        if isinstance(self.loss_fn, StagedLoss):
            loss = self.loss_fn(
                out.logits.float(), label, stage1_logits=_float(out.extras.get("stage1_logits")), progress=progress
            )
        else:
            loss = self.loss_fn(out.logits.float(), label)
        dice = class_dice(out.logits.detach().argmax(1, keepdim=True), label, out.logits.shape[1] - 1)
        return loss, {"dice": float(dice.mean())}


def _float(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.float()


def class_dice(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Per-sample mean foreground Dice of two (B, 1, D, H, W) class-index maps over classes 1..K.

    A class absent from both prediction and target is left out of that sample's mean; a sample with no class in
    either scores 1 (nothing to find, nothing found).
    """
    scores = []
    for c in range(1, num_classes + 1):
        p, t = (pred == c).flatten(1).float(), (target == c).flatten(1).float()
        denom = p.sum(1) + t.sum(1)
        scores.append(torch.where(denom > 0, 2 * (p * t).sum(1) / denom.clamp_min(1e-8), torch.nan))
    stacked = torch.stack(scores, 1)
    valid = ~torch.isnan(stacked)
    mean = torch.where(valid, stacked, 0.0).sum(1) / valid.sum(1).clamp_min(1)
    return torch.where(valid.any(1), mean, torch.ones_like(mean))
