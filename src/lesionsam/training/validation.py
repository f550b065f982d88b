"""Validation during training: the mean Dice over the validation crops, scored as the predictor will use the model."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lesionsam.data.click_rounds import ClickRounds, Decoded, Round
from lesionsam.data.clicks import ClickSimulator
from lesionsam.evaluation.dice import dice
from lesionsam.models import Prompts, SegModel
from lesionsam.models.interface import TextCompetition
from lesionsam.training.steps import class_dice
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
    with several target labels the text alone is decided against the other labels' first texts by the rule
    :meth:`~lesionsam.inference.predictor.Predictor.predict_text` follows,
    :class:`~lesionsam.models.interface.TextCompetition`: lesion by lesion with a region classifier
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
    """Dice of one validation crop after ``rounds`` click rounds (:class:`~lesionsam.data.click_rounds.ClickRounds`:
    centre clicks, the previous low-res logits fed back; a text-referred method's round 0 is its text alone)."""
    image = item["image"][None].to(device)
    gt = item["label"][None].to(device) > 0.5
    text = [texts[int(item["target"])][0]] if texts else None
    competition = TextCompetition.of(model, [t[0] for v, t in (texts or {}).items() if v != int(item["target"])])
    encoded = model.encode(image)

    def decode(r: Round) -> Decoded:
        out = model.decode(encoded, Prompts(points=r.points, labels=r.labels, mask=r.mask, text=text))
        logits = out.logits.float() - offset  # as the predictor will threshold them
        pred = logits > 0
        if r.index == 0 and text is not None and competition.by_region:
            pred = regions_won(model, encoded, pred, [*text, *competition.rivals])
        elif r.index == 0 and text is not None and competition.by_voxel:
            pred = competition.logits(model, encoded, logits, offset=offset) > 0
        return Decoded(pred, out.low_res_logits)

    last = ClickRounds.batch(clicks, gt, None, rounds=rounds, text_first=text is not None).run(decode)
    assert last is not None, "validation needs at least one click round (train.val_clicks >= 1)"
    return float(dice(last.pred, gt).mean())


def _score_automatic(model: SegModel, item: dict[str, Any], device: torch.device) -> float:
    out = model(item["image"][None].to(device))
    label = item["label"][None].to(device)
    return float(class_dice(out.logits.argmax(1, keepdim=True), label, out.logits.shape[1] - 1).mean())
