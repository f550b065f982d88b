"""The training step of a text-referred method (RefSAM3D): SAM-Med3D's click iterations after a text prompt for each
crop's class, with the method's text-pair terms
(:class:`~lesionsam.models.methods.refsam3d_pairs.RefSAM3DTrainOptions`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from lesionsam.config import TrainConfig
from lesionsam.data.clicks import ClickSimulator
from lesionsam.losses import BatchLoss
from lesionsam.models import SegModel, SegOutput, competing_logits
from lesionsam.models.methods.refsam3d_pairs import RefSAM3DTrainOptions
from lesionsam.training.steps import InteractiveStep, StepBatch, TrainBatch, click_settings
from lesionsam.training.text_terms import region_class_loss, text_margin_loss


class TextStep(InteractiveStep):
    """:class:`~lesionsam.training.steps.InteractiveStep` with a text prompt for each crop's class.

    Each crop's text is drawn from ``texts`` (label value → prompts) and given in every iteration; the first
    iteration has the text alone (no click). When the model also works without text, one batch in four gets no text
    (clicks only), so both uses train.

    With ``options.text_pairs`` (and the crops' label maps), a text batch doubles: each crop comes again with another
    target label's text and that label's voxels as target; with ``text_contrast`` the text-only logits of the two
    halves also get :func:`~lesionsam.training.text_terms.text_margin_loss`, and with ``text_competition`` the loss
    again on their competing logits (each half against background and the other half's text,
    :func:`~lesionsam.models.interface.competing_logits`); with ``region_classes`` every lesion of either class in a
    pair's crop is classified between the pair's two texts (:func:`~lesionsam.training.text_terms.region_class_loss`).
    All three weights are effective: the returned loss grows by weight × term.
    """

    def __init__(
        self,
        model: SegModel,
        loss_fn: BatchLoss,
        clicks: ClickSimulator,
        *,
        num_clicks: int,
        mask_only_iterations: int,
        texts: dict[int, list[str]],
        options: RefSAM3DTrainOptions | None = None,
    ) -> None:
        options = options or RefSAM3DTrainOptions()
        if options.region_classes and not model.scores_regions:
            raise ValueError(
                f"train.options.region_classes needs a model with a region classifier (scores_regions), "
                f"not {model.display_name}"
            )
        super().__init__(
            model, loss_fn, clicks, num_clicks=num_clicks, mask_only_iterations=mask_only_iterations, options=options
        )
        self.texts = texts
        self.text_pairs = options.text_pairs and len(texts) > 1
        self.text_contrast = options.text_contrast
        self.text_competition = options.text_competition
        self.region_classes = options.region_classes

    @classmethod
    def from_config(
        cls,
        model: SegModel,
        loss_fn: BatchLoss,
        train: TrainConfig,
        *,
        clicks: ClickSimulator,
        texts: dict[int, list[str]] | None = None,
        **_: Any,
    ) -> TextStep:
        if not texts:
            raise ValueError("a text-referred method needs text prompts for its target labels")
        return cls(model, loss_fn, clicks, **click_settings(train), texts=texts, options=train.options)

    def prompt_batch(self, batch: TrainBatch) -> StepBatch:
        """Draw each crop's text (``batch.target`` (B,) holds the crops' label values); with text pairs (and
        ``batch.label_values``, the crops' label maps (B, 1, S, S, S)) double the batch with the other class's
        text."""
        image, label, rng, target, label_values = batch.image, batch.label, batch.rng, batch.target, batch.label_values
        if target is None:
            raise ValueError("a text-referred method needs each crop's target label value")
        assert rng is not None, "a text step draws each crop's text from the batch's generator"
        has_lesion = bool((label > 0.5).flatten(1).any(1).all())
        text: list[str] | None = [str(rng.choice(self.texts[int(t)])) for t in target.tolist()]
        if "text" not in self.model.required_prompts and rng.random() < 0.25 and has_lesion:
            text = None
        if text is None or not self.text_pairs or label_values is None:
            return StepBatch(image, label, text, progress=batch.progress)
        others = [int(rng.choice([v for v in self.texts if v != int(t)])) for t in target.tolist()]
        text = text + [str(rng.choice(self.texts[v])) for v in others]
        other_label = torch.stack([label_values[i] == v for i, v in enumerate(others)]).to(label.dtype)
        pair_image, pair_label = torch.cat([image, image]), torch.cat([label, other_label])
        return StepBatch(pair_image, pair_label, text, paired=True, progress=batch.progress)

    def encoded_terms(self, total: Tensor, encoded: Any, batch: StepBatch) -> Tensor:
        """Plus ``num_clicks`` × ``region_classes`` × the per-lesion class term of a paired batch."""
        if batch.paired and self.region_classes:
            region = region_class_loss(self.model, encoded, batch.label, batch.text)  # type: ignore[arg-type]
            total = total + self.num_clicks * self.region_classes * region
        return total

    def first_terms(self, total: Tensor, out: SegOutput, batch: StepBatch) -> Tensor:
        """Plus the margin and competition terms of the two halves' text-only logits (a paired batch)."""
        if batch.paired and (self.text_contrast or self.text_competition):
            label = batch.label
            half = label.shape[0] // 2
            a, b = out.logits[:half].float(), out.logits[half:].float()
            if self.text_contrast:
                margin = text_margin_loss(a, b, label[:half] > 0.5, label[half:] > 0.5)
                total = total + self.num_clicks * self.text_contrast * margin
            if self.text_competition:
                competing = torch.cat([competing_logits(a, b), competing_logits(b, a)])
                term = self.loss_fn(replace(out, logits=competing), batch)  # the loss of the competing logits
                total = total + self.num_clicks * self.text_competition * term
        return total
