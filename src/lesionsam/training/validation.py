"""Validation during training: the mean Dice over the validation crops, scored as the predictor will use the model."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lesionsam.data.clicks import ClickSimulator
from lesionsam.models import Prompts, SegModel, competing_logits
from lesionsam.training.steps import class_dice, dice_score
from lesionsam.training.text_terms import regions_won


@torch.no_grad()
def validate(
    model: SegModel,
    val_set: Dataset,
    *,
    device: torch.device,
    val_clicks: int,
    logit_offset: float = 0.0,
    texts: dict[int, list[str]] | None = None,
    autocast: Callable[[], AbstractContextManager[Any]],
) -> float:
    """Mean Dice over validation crops: ``val_clicks`` deterministic centre clicks each, or, for a text-referred
    method (``texts``: the prompts per target label), the label's first text prompt (alone, then with centre clicks;
    with several target labels the text alone is decided against the other labels' first texts, as
    :meth:`~lesionsam.inference.predictor.Predictor.predict_text` does: lesion by lesion with a region classifier
    (:func:`~lesionsam.training.text_terms.regions_won`), else voxel by voxel); for a prompt-free method the mean
    foreground Dice of its arg-max (:func:`~lesionsam.training.steps.class_dice`). Click-prompted logits are
    thresholded after the logit-adjustment offset (``train.logit_adjustment``) is subtracted, as the predictor
    does, so ``best.pt`` is chosen on what the predictor will output.

    The model is scored in eval mode (then put back in train mode) with torch's RNG forked and seeded.
    """
    if model.prompt_free:
        return _mean_over(val_set, model, device, autocast, lambda item: _score_automatic(model, item, device))
    clicks = ClickSimulator(mode="center")

    def score(item: dict[str, Any]) -> float:
        return _score_interactive(model, item, clicks, texts, device=device, rounds=val_clicks, offset=logit_offset)

    return _mean_over(val_set, model, device, autocast, score)


def _mean_over(
    val_set: Dataset,
    model: SegModel,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager[Any]],
    score: Callable[[dict[str, Any]], float],
) -> float:
    """``score`` of every validation item, averaged, in eval mode and with torch's RNG forked and seeded."""
    model.eval()
    scores = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        for idx in range(len(val_set)):  # type: ignore[arg-type]
            with autocast():
                scores.append(score(val_set[idx]))
    model.train()
    return float(np.mean(scores)) if scores else float("nan")


def _score_interactive(
    model: SegModel,
    item: dict[str, Any],
    clicks: ClickSimulator,
    texts: dict[int, list[str]] | None,
    *,
    device: torch.device,
    rounds: int,
    offset: float,
) -> float:
    image = item["image"][None].to(device)
    gt = item["label"][None].to(device) > 0.5
    text = [texts[int(item["target"])][0]] if texts else None
    rivals = [t[0] for v, t in (texts or {}).items() if v != int(item["target"])]
    points = labels = low = pred = None
    encoded = model.encode(image)
    for it in range(rounds):
        if it == 0 and text is not None:
            prompts = Prompts(text=text)
        else:
            if points is None and bool(gt.any()):
                points, labels = clicks.first(gt)
            else:  # after a text-only prediction of a negative crop: click on its errors
                points, labels = clicks.next(pred, gt, points, labels)
            prompts = Prompts(points=points, labels=labels, mask=low, text=text)
        out = model.decode(encoded, prompts)
        logits = out.logits.float() - offset  # as the predictor will threshold them
        pred, low = logits > 0, out.low_res_logits
        if it == 0 and text is not None and rivals and model.scores_regions:
            pred = regions_won(model, encoded, pred, [*text, *rivals])
        elif it == 0 and text is not None and rivals:
            others = torch.cat([model.decode(encoded, Prompts(text=[r])).logits for r in rivals], dim=1)
            pred = competing_logits(logits, others.float() - offset) > 0
    return float(dice_score(pred, gt).mean())


def _score_automatic(model: SegModel, item: dict[str, Any], device: torch.device) -> float:
    out = model(item["image"][None].to(device))
    label = item["label"][None].to(device)
    return float(class_dice(out.logits.argmax(1, keepdim=True), label, out.logits.shape[1] - 1).mean())
