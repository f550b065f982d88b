"""What a prediction returns: a label map on the input's own grid (and, on request, the probabilities)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lesionsam.data.io import Volume


@dataclass
class Prediction:
    """A prediction on the original image grid.

    Attributes:
        labels: (D, H, W) uint16 label map on the input's grid: 0 background, elsewhere lesion ids (clicks, text)
            or the classes' label values (:meth:`Predictor.predict_auto`).
        probabilities: (D, H, W) float32 lesion probability on the input's grid (max over lesions), or None.
        reference: the input's geometry (use it to write the arrays).
        windows: number of model crops run per lesion id.
        seconds: wall time of :meth:`Predictor.predict`.
        competitors: text alone (:meth:`Predictor.predict_text`): the other class texts the text was decided
            against (empty: the text's own logits were thresholded).
        stages: seconds per stage of a whole-volume prediction (``"sliding windows"``, ``"back to the input
            grid"``), for benchmarks.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    reference: Volume
    windows: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    competitors: tuple[str, ...] = ()
    stages: dict[str, float] = field(default_factory=dict)


def text_key(text: str) -> str:
    """A text prompt compared case- and spacing-insensitively ("Liver  Tumour" = "liver tumour")."""
    return " ".join(text.lower().split())
