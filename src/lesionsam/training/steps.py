"""The training steps, each one ``nn.Module`` (so ``DistributedDataParallel`` can wrap it): SAM-Med3D's interactive
click step (:class:`InteractiveStep`) and the prompt-free step (:class:`AutomaticStep`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from lesionsam.data.clicks import ClickSimulator
from lesionsam.losses import StagedLoss
from lesionsam.models import Prompts, SegModel, competing_logits
from lesionsam.models.methods.sgp import gate_budget
from lesionsam.training.text_terms import region_class_loss, text_margin_loss


def dice_score(pred: Tensor, target: Tensor) -> Tensor:
    """Per-sample Dice of two (B, 1, D, H, W) boolean masks (1 when both are empty)."""
    pred, target = pred.flatten(1).float(), target.flatten(1).float()
    inter = (pred * target).sum(1)
    denom = pred.sum(1) + target.sum(1)
    return torch.where(denom > 0, 2 * inter / denom.clamp_min(1e-8), torch.ones_like(denom))


class InteractiveStep(nn.Module):
    """SAM-Med3D's interactive training step as one module (so ``DistributedDataParallel`` can wrap it).

    ``forward(image, label, rng)`` → (loss, stats): one encoder pass, ``num_clicks`` decoder iterations with
    simulated clicks and mask feedback, the mean loss over iterations (+ ``gate_cost`` ×
    :func:`~lesionsam.models.methods.sgp.gate_budget` of the gate-open probabilities, with ``gate_target``, when the
    model reports gates in ``extras["gate_probs"]``).
    """

    def __init__(
        self,
        model: SegModel,
        loss_fn: nn.Module,
        clicks: ClickSimulator,
        *,
        num_clicks: int,
        mask_only_iterations: int,
        gate_cost: float = 0.0,
        gate_target: float | None = None,
        texts: dict[int, list[str]] | None = None,
        text_pairs: bool = False,
        text_contrast: float = 0.0,
        text_competition: float = 0.0,
        region_classes: float = 0.0,
    ) -> None:
        super().__init__()
        if region_classes and not model.scores_regions:
            raise ValueError(
                f"train.region_classes needs a model with a region classifier (refsam3d), not {model.display_name}"
            )
        self.region_classes = region_classes
        self.texts = texts or {}
        self.text_pairs = text_pairs and len(self.texts) > 1
        self.text_contrast = text_contrast
        self.text_competition = text_competition
        self.model = model
        self.loss_fn = loss_fn
        self.clicks = clicks
        self.num_clicks = num_clicks
        self.mask_only = mask_only_iterations
        self.gate_cost = gate_cost
        self.gate_target = gate_target

    def forward(
        self,
        image: Tensor,
        label: Tensor,
        rng: np.random.Generator,
        target: Tensor | None = None,
        progress: float = 1.0,
        label_values: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """image, label: (B, 1, S, S, S); label 0/1 float with at least one foreground voxel per sample
        (``progress``, the share of training done, is not used by the interactive step).

        For text-referred methods, ``target`` (B,) holds each crop's label value; a text prompt for it is drawn
        from ``texts`` and given in every iteration, and the first iteration has the text alone (no click). When
        the model also works without text, one batch in four gets no text (clicks only), so both uses train.

        With ``text_pairs`` (and ``label_values``, the crops' label values (B, 1, S, S, S)), a text batch doubles:
        each crop comes again with another target label's text and that label's voxels as target; with
        ``text_contrast`` the text-only logits of the two halves also get :func:`text_margin_loss`, and with
        ``text_competition`` the loss again on their competing logits (each half against background and the other
        half's text, :func:`~lesionsam.models.interface.competing_logits`); with ``region_classes`` every lesion of
        either class in a pair's crop is classified between the pair's two texts (:func:`region_class_loss`). All
        three weights are effective: the returned loss grows by weight × term.

        A crop may have an empty label (a negative crop, ``data.negative_fraction``) only when text is given: its
        clicks then come from the error region of the text-only prediction (a negative click on what was found,
        or a padding click when nothing was), the same rule for the whole batch.
        """
        gt = label > 0.5
        has_lesion = bool(gt.flatten(1).any(1).all())
        text = None
        if self.texts:
            if target is None:
                raise ValueError("a text-referred method needs each crop's target label value")
            text = [str(rng.choice(self.texts[int(t)])) for t in target.tolist()]
            if "text" not in self.model.required_prompts and rng.random() < 0.25 and has_lesion:
                text = None
        paired = False
        if text is not None and self.text_pairs and label_values is not None and target is not None:
            paired = True
            others = [int(rng.choice([v for v in self.texts if v != int(t)])) for t in target.tolist()]
            text = text + [str(rng.choice(self.texts[v])) for v in others]
            other_label = torch.stack([label_values[i] == v for i, v in enumerate(others)]).to(label.dtype)
            image, label = torch.cat([image, image]), torch.cat([label, other_label])
            gt = label > 0.5
            has_lesion = bool(gt.flatten(1).any(1).all())
        if text is None and not has_lesion:
            raise ValueError(
                "a training crop has no voxel of its target label, so there is no lesion for the first click; "
                "negative crops (data.negative_fraction) need a text-referred method"
            )
        total = image.new_zeros(())
        encoded = self.model.encode(image)
        if paired and self.region_classes:
            region = region_class_loss(self.model, encoded, label, text)  # type: ignore[arg-type]
            total = total + self.num_clicks * self.region_classes * region
        later = list(range(1, self.num_clicks))
        mask_only = set(rng.choice(later, size=self.mask_only, replace=False).tolist()) if self.mask_only else set()
        points = labels = low = pred = None
        gates: list[Tensor] = []
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
            if it == 0 and paired and (self.text_contrast or self.text_competition):
                half = label.shape[0] // 2
                a, b = out.logits[:half].float(), out.logits[half:].float()
                if self.text_contrast:
                    margin = text_margin_loss(a, b, label[:half] > 0.5, label[half:] > 0.5)
                    total = total + self.num_clicks * self.text_contrast * margin
                if self.text_competition:
                    competing = torch.cat([competing_logits(a, b), competing_logits(b, a)])
                    total = total + self.num_clicks * self.text_competition * self.loss_fn(competing, label)
            pred = out.logits.detach() > 0
            low = out.low_res_logits.detach()
            if "gate_probs" in out.extras:
                gates.append(out.extras["gate_probs"])
            dice = dice_score(pred, gt)
        loss = total / self.num_clicks
        stats = {"dice": float(dice.mean()) if dice is not None else float("nan")}
        if gates:
            probs = gates[-1]
            if self.gate_cost:
                loss = loss + self.gate_cost * gate_budget(probs, self.gate_target)
            stats["gate_rate"] = float(probs.detach().float().mean())
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
