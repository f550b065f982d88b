"""What a prediction takes (a lesion's clicks and box, :class:`LesionClicks`) and returns (:class:`Prediction`: a label
map on the input's own grid and, on request, the probabilities)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lesionsam.data.io import Volume
from lesionsam.inference.boxes import Box


@dataclass
class LesionClicks:
    """The clicks of one lesion.

    Attributes:
        points: (N, 3) float; ITK voxel indices (i, j, k) of the original image, or LPS mm when the
            predictor is called with ``world=True``.
        labels: (N,) int; 1 = inside the lesion (positive), 0 = outside (negative). At least one positive, unless
            a box is given.
        lesion_id: the value this lesion gets in the output label map (1, 2, ...).
        box: a box around the lesion (voxel indices; :mod:`lesionsam.inference.boxes`), its first prompt.
    """

    points: np.ndarray
    labels: np.ndarray
    lesion_id: int = 1
    box: Box | None = None

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=float).reshape(-1, 3)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.points) != len(self.labels):
            raise ValueError(f"lesion {self.lesion_id}: {len(self.points)} points but {len(self.labels)} labels")
        if not np.isin(self.labels, (0, 1)).all():
            raise ValueError(f"lesion {self.lesion_id}: click labels must be 1 (positive) or 0 (negative)")
        if self.box is None and not (self.labels == 1).any():
            raise ValueError(f"lesion {self.lesion_id}: needs at least one positive click inside the lesion (or a box)")
        if not 1 <= int(self.lesion_id) <= 65535:
            raise ValueError(f"lesion id must be in 1..65535, got {self.lesion_id}")


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
