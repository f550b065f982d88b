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
from lesionsam.data.click_rounds import ClickRounds, Decoded, Round
from lesionsam.data.clicks import ClickSimulator
from lesionsam.evaluation.dice import dice
from lesionsam.losses import BatchLoss
from lesionsam.models import Prompts, SegModel, SegOutput
from lesionsam.models.interface import TrainOptions

#: What a step returns: ``"loss"`` (the scalar tensor to back-propagate) and its statistics (floats: ``"dice"`` and
#: the method's own, :meth:`~lesionsam.models.SegModel.step_statistics`).
StepResult = dict[str, Any]


@dataclass
class TrainBatch:
    """One training batch as the trainer hands it to a step.

    Attributes:
        image: (B, 1, S, S, S) float crops.
        label: (B, 1, S, S, S) the target: 0/1 float for a prompted step, class indices for the automatic step.
        rng: the epoch's NumPy generator (clicks, texts; a step draws from it in a fixed order).
        target: (B,) the crops' target label values (a text step chooses each crop's text by it), or None.
        label_values: (B, 1, S, S, S) the crops' label maps (a text step's text pairs), or None.
        progress: the share of training done, in [0, 1] (H-SAM's staged loss).
    """

    image: Tensor
    label: Tensor
    rng: np.random.Generator | None = None
    target: Tensor | None = None
    label_values: Tensor | None = None
    progress: float = 1.0


@dataclass
class StepBatch:
    """The crops of one step as the decoder iterations (and the loss) see them (a text-referred step may double the
    batch).

    Attributes:
        image, label: (B, 1, S, S, S) float crops and 0/1 targets.
        text: B text prompts given in every iteration (the first iteration has the text alone), or None.
        paired: the batch is a text pair: its second half is the first half's crops with another class's text.
        progress: the share of training done, in [0, 1].
    """

    image: Tensor
    label: Tensor
    text: list[str] | None = None
    paired: bool = False
    progress: float = 1.0


def click_settings(train: TrainConfig) -> dict[str, int]:
    """The click iterations of a run's ``train`` section, as a click step takes them."""
    return {"num_clicks": train.num_clicks, "mask_only_iterations": train.mask_only_iterations}


class InteractiveStep(nn.Module):
    """SAM-Med3D's interactive training step as one module (so ``DistributedDataParallel`` can wrap it).

    ``forward(batch)`` → ``{"loss", "dice", ...}``: one encoder pass, ``num_clicks`` decoder iterations with
    simulated clicks and mask feedback (:class:`~lesionsam.data.click_rounds.ClickRounds`), the mean loss over
    iterations (each ``loss_fn(output, batch)``), plus the method's own term from its training options
    (:meth:`~lesionsam.models.interface.TrainOptions.extra_loss` of the last iteration's output: SGP-SAM's gate
    budget). The statistics are the last iteration's Dice and the model's own
    (:meth:`~lesionsam.models.SegModel.step_statistics`, e.g. SGP-SAM's ``gate_rate``).

    Subclasses (:class:`~lesionsam.training.text_step.TextStep`) choose each crop's text and add terms through
    :meth:`prompt_batch`, :meth:`encoded_terms` and :meth:`first_terms`.
    """

    def __init__(
        self,
        model: SegModel,
        loss_fn: BatchLoss,
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
        cls, model: SegModel, loss_fn: BatchLoss, train: TrainConfig, *, clicks: ClickSimulator, **_: Any
    ) -> InteractiveStep:
        """The step of a run's ``train`` section (its click iterations and the method's training options)."""
        return cls(model, loss_fn, clicks, **click_settings(train), options=train.options)

    def prompt_batch(self, batch: TrainBatch) -> StepBatch:
        """The crops as the iterations see them: here unchanged, with no text."""
        return StepBatch(batch.image, batch.label, progress=batch.progress)

    def encoded_terms(self, total: Tensor, encoded: Any, batch: StepBatch) -> Tensor:
        """``total`` plus the terms computed on the encoded crops, before any decoder iteration (here none)."""
        return total

    def first_terms(self, total: Tensor, out: SegOutput, batch: StepBatch) -> Tensor:
        """``total`` plus the terms of the first iteration's output (here none)."""
        return total

    def forward(self, batch: TrainBatch) -> StepResult:
        """``batch.label`` 0/1 float with at least one foreground voxel per crop unless a text is given (a text
        step uses ``batch.target`` and ``batch.label_values``; ``progress`` reaches the loss).

        A crop may have an empty label (a negative crop, ``data.negative_fraction``) only when text is given: its
        clicks then come from the error region of the text-only prediction (a negative click on what was found,
        or a padding click when nothing was), the same rule for the whole batch.
        """
        crops = self.prompt_batch(batch)
        gt = crops.label > 0.5
        if crops.text is None and not bool(gt.flatten(1).any(1).all()):
            raise ValueError(
                "a training crop has no voxel of its target label, so there is no lesion for the first click; "
                "negative crops (data.negative_fraction) need a text-referred method"
            )
        total = crops.image.new_zeros(())
        encoded = self.model.encode(crops.image)
        total = self.encoded_terms(total, encoded, crops)
        rng = batch.rng
        later = list(range(1, self.num_clicks))
        mask_only = set(rng.choice(later, size=self.mask_only, replace=False).tolist()) if self.mask_only else set()
        rounds = ClickRounds.batch(
            self.clicks, gt, rng, rounds=self.num_clicks, text_first=crops.text is not None, mask_only=mask_only
        )
        out: SegOutput | None = None

        def decode(r: Round) -> Decoded:
            nonlocal total, out
            prompts = Prompts(points=r.points, labels=r.labels, mask=r.mask, text=crops.text)
            out = self.model.decode(encoded, prompts)
            total = total + self.loss_fn(out, crops)
            if r.index == 0:
                total = self.first_terms(total, out, crops)
            return Decoded(out.logits.detach() > 0, out.low_res_logits.detach())

        last = rounds.run(decode)
        loss = total / self.num_clicks
        result: StepResult = {"dice": float(dice(last.pred, gt).mean()) if last is not None else float("nan")}
        if out is not None:
            extra = self.options.extra_loss(out) if self.options is not None else None
            if extra is not None:
                loss = loss + extra
            result.update(self.model.step_statistics(out))
        return {"loss": loss, **result}


class AutomaticStep(nn.Module):
    """The training step of a prompt-free method as one module (for ``DistributedDataParallel``).

    ``forward(batch)`` → ``{"loss", "dice", ...}``: one forward pass with no prompt; the loss gets the output, with
    its (B, K+1, S³) logits (and whatever else of it the loss reads: H-SAM's staged loss its stage-1 logits and the
    batch's training progress, :func:`~lesionsam.losses.batch_loss`) and the batch's (B, 1, S³) class-index label.
    ``"dice"`` is the mean foreground Dice of the arg-max prediction (:func:`class_dice`), beside the model's own
    statistics (:meth:`~lesionsam.models.SegModel.step_statistics`).
    """

    def __init__(self, model: SegModel, loss_fn: BatchLoss) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    @classmethod
    def from_config(cls, model: SegModel, loss_fn: BatchLoss, train: TrainConfig, **_: Any) -> AutomaticStep:
        """The step of a run's ``train`` section (nothing in it changes the prompt-free step)."""
        return cls(model, loss_fn)

    def forward(self, batch: TrainBatch) -> StepResult:
        out = self.model.decode(self.model.encode(batch.image), Prompts())
        loss = self.loss_fn(out, batch)
        score = class_dice(out.logits.detach().argmax(1, keepdim=True), batch.label, out.logits.shape[1] - 1)
        return {"loss": loss, "dice": float(score.mean()), **self.model.step_statistics(out)}


def class_dice(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Per-sample mean foreground Dice (:func:`~lesionsam.evaluation.dice.dice`) of two (B, 1, D, H, W) class-index
    maps over classes 1..K.

    A class absent from both prediction and target is left out of that sample's mean; a sample with no class in
    either scores 1 (nothing to find, nothing found).
    """
    scores = []
    for c in range(1, num_classes + 1):
        p, t = pred == c, target == c
        present = (p | t).flatten(1).any(1)
        scores.append(torch.where(present, dice(p, t), torch.nan))
    stacked = torch.stack(scores, 1)
    valid = ~torch.isnan(stacked)
    mean = torch.where(valid, stacked, 0.0).sum(1) / valid.sum(1).clamp_min(1)
    return torch.where(valid.any(1), mean, torch.ones_like(mean))
