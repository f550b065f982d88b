"""The prediction modes of one image, as ``lesionsam predict`` offers them: clicks or boxes (with an optional text) go
to the interactive engine (:meth:`Predictor.predict`, a throwaway session); text alone and automatic go to
:class:`~lesionsam.inference.whole_volume.WholeVolume`, which wraps it; automatic with clicks has the clicked lesions
segmented again by a promptable model (:func:`refine_auto`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lesionsam.data.io import Volume
from lesionsam.inference.prediction import Prediction
from lesionsam.inference.predictor import LesionClicks, Predictor
from lesionsam.inference.whole_volume import WholeVolume
from lesionsam.utils.components import label_lesions


def predict_image(
    predictor: Predictor,
    volume: Volume,
    lesions: Sequence[LesionClicks],
    *,
    world: bool = False,
    text: str | None = None,
    auto: bool = False,
    refiner: Predictor | None = None,
    probabilities: bool = False,
    min_lesion_mm3: float = 0.0,
    compete: bool = True,
) -> Prediction:
    """Segment one image with the mode its prompts choose.

    * ``auto``: :meth:`WholeVolume.predict_auto`; with ``lesions`` (and ``refiner``, a promptable predictor) the
      clicked lesions are segmented again by ``refiner`` and replace what the automatic pass found there;
    * ``lesions`` (clicks or boxes, ``world``: LPS mm instead of voxel indices): :meth:`Predictor.predict`, with
      ``text`` when given;
    * neither: ``text`` alone, :meth:`WholeVolume.predict_text` (decided against the checkpoint's other classes with
      ``compete``).

    ``min_lesion_mm3`` drops smaller found components in the whole-volume modes (automatic, text alone).

    Raises:
        ValueError: no mode fits (no lesion, no text, not automatic) or automatic clicks without a refiner.
    """
    predictor.set_image(volume)
    if auto:
        pred = WholeVolume(predictor).predict_auto(probabilities=probabilities, min_lesion_mm3=min_lesion_mm3)
        if not lesions:
            return pred
        if refiner is None:
            raise ValueError("automatic prediction with clicks needs a promptable refiner (--refine-checkpoint)")
        refiner.set_image(volume)
        refined = refiner.predict(lesions, world=world, probabilities=probabilities)
        return refine_auto(pred, refined, lesions, predictor.class_values, refiner, world=world)
    if lesions:
        return predictor.predict(lesions, world=world, probabilities=probabilities, text=text)
    if text is None:
        raise ValueError("nothing to segment by: give clicks, a box, a text or the automatic mode")
    return WholeVolume(predictor).predict_text(
        text, probabilities=probabilities, min_lesion_mm3=min_lesion_mm3, compete=compete
    )


def count_lesions(labels: np.ndarray) -> int:
    """Lesions (26-connected components) of each non-zero value of a label map, added up."""
    return sum(label_lesions(labels == v)[1] for v in np.unique(labels) if v)


def refine_auto(
    auto: Prediction,
    refined: Prediction,
    lesions: Sequence[LesionClicks],
    class_values: Sequence[int],
    refiner: Predictor,
    *,
    world: bool,
) -> Prediction:
    """Merge a click-refined prediction into an automatic one (both on the input grid).

    Each clicked lesion's automatic component (the 26-connected component of the automatic label map under any of
    its positive clicks) is removed, and the refined mask of that lesion is written with the class the automatic
    pass gave its first positive click (the first class where that click fell on background).
    """
    labels = auto.labels.copy()
    comps, _ = label_lesions(labels > 0)
    for les in lesions:
        ijk = les.points[les.labels == 1]
        if world:
            ijk = refiner.preprocessed.source.world_to_index(ijk)
        kji = np.clip(np.round(ijk[:, ::-1]).astype(int), 0, np.asarray(labels.shape) - 1)
        under = [int(comps[tuple(v)]) for v in kji]
        first = int(auto.labels[tuple(kji[0])])
        value = first if first else int(class_values[0]) if class_values else 1
        for c in set(under) - {0}:
            labels[comps == c] = 0
        labels[refined.labels == les.lesion_id] = value
    probs = auto.probabilities
    if probs is not None and refined.probabilities is not None:
        probs = np.where(refined.labels > 0, refined.probabilities, probs).astype(np.float32)
    return Prediction(
        labels=labels,
        probabilities=probs,
        reference=auto.reference,
        windows=refined.windows,
        seconds=auto.seconds + refined.seconds,
    )
