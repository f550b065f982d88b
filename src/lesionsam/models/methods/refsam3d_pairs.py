"""RefSAM3D's own training options: text pairs and the terms that compare the two texts of a pair.

All off by default; the text study (``lesionsam text-study``, README) trains with ``text_pairs`` and
``region_classes: 0.5``.
"""

from __future__ import annotations

from dataclasses import dataclass

from lesionsam.models.interface import TrainOptions


@dataclass(frozen=True)
class RefSAM3DTrainOptions(TrainOptions):
    """RefSAM3D's training options (the run config's ``train.options``).

    Attributes:
        text_pairs: with several target labels, every crop trained with its class's text is also trained, in the
            same batch, with another target label's text and that label's voxels of the same crop as target (a
            contrastive pair: same image, other text, other mask).
        text_contrast: with ``text_pairs``, weight of a per-voxel margin term between the two texts of a pair on
            their text-only predictions: on the voxels of either text's class, that text's logit must exceed the
            other's (``softplus(l_other - l_own)``, mean over those voxels). The image-only parts of the logits
            cancel in the difference, so the term trains only what makes the texts differ (0 = none).
        text_competition: with ``text_pairs``, weight of the training loss applied once more to the two texts'
            *competing* logits on their text-only predictions (:func:`lesionsam.models.interface.competing_logits`:
            each text against background and the other text, a 3-way softmax) — the voxel-level decision text
            alone uses for a model without a region classifier; RefSAM3D decides lesion by lesion instead
            (``region_classes``), so for it this only shapes the logits (measured: no selectivity; 0 = none).
        region_classes: with ``text_pairs``, weight of a per-lesion class term: every lesion (connected component
            of at least :data:`~lesionsam.training.text_terms.REGION_MIN_VOXELS` voxels) of the two classes in a
            paired crop is scored against the pair's two texts by the model's region classifier
            (``RefSAM3D.region_scores``) with cross-entropy, mean over the lesions; text alone then decides each
            found lesion's class with it (0 = none).
    """

    text_pairs: bool = False
    text_contrast: float = 0.0
    text_competition: float = 0.0
    region_classes: float = 0.0

    def __post_init__(self) -> None:
        weights = {"text_contrast": self.text_contrast, "text_competition": self.text_competition}
        weights["region_classes"] = self.region_classes
        for name, value in weights.items():
            if not value >= 0:  # NaN too
                raise ValueError(f"train.options.{name} must be >= 0, got {value}")
        for name, value in weights.items():
            if value > 0 and not self.text_pairs:
                raise ValueError(
                    f"train.options.{name} compares the two texts of a pair: set train.options.text_pairs: true too"
                )
