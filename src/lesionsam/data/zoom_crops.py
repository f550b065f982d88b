"""Multi-scale training crops: a lesion seen at the scale zoom-in will show it at inference.

At inference a small lesion is segmented again in a window at a finer spacing (:mod:`lesionsam.inference.zoom`), so
that it fills a good part of the window. :func:`zoomed_crop` makes training crops of the same kind: a lesion of the
case (random, or the largest), a factor that makes its largest extent fill about ``fill`` of the crop's side
(times a random spread, between 1 and ``max_factor``), and the crop resampled around it at the canonical spacing
divided by that factor (image: linear; target: the linearly resampled mask above 0.5). Large lesions get factor 1:
an ordinary crop. The click simulation and the mask prompts then work on the zoomed crop as on any other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lesionsam.utils.components import label_lesions


@dataclass(frozen=True)
class ZoomCrops:
    """How many training crops are zoomed onto their lesion, and how much (``data.zoom`` of the run config).

    Attributes:
        fraction: share of lesion-centred training crops that are zoomed (the others are ordinary crops).
        fill: share of the crop's side the lesion's largest extent should fill (as the inference policy's ``fill``).
        max_factor: the largest zoom factor.
        spread: the factor is multiplied by exp(u), u uniform in [-spread, spread] (scales around the target).
    """

    fraction: float = 0.5
    fill: float = 0.6
    max_factor: float = 3.0
    spread: float = 0.3

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"data.zoom.fraction must be in (0, 1], got {self.fraction}")
        if not 0.0 < self.fill < 1.0:
            raise ValueError(f"data.zoom.fill must be in (0, 1), got {self.fill}")
        if self.max_factor < 1.0:
            raise ValueError(f"data.zoom.max_factor must be >= 1, got {self.max_factor}")
        if not 0.0 <= self.spread <= 1.0:
            raise ValueError(f"data.zoom.spread must be in [0, 1], got {self.spread}")


def zoomed_crop(
    image: np.ndarray,
    mask: np.ndarray,
    size: int,
    *,
    rng: np.random.Generator,
    zoom: ZoomCrops,
    largest: bool = False,
    pad_value: float = 0.0,
    values: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, float, np.ndarray | None]:
    """A ``size``³ crop around one lesion of ``mask`` (non-empty) at the factor ``zoom`` asks for.

    Args:
        image: (D, H, W) float32 on the canonical grid; mask: (D, H, W) bool target.
        rng: the item's generator (lesion, factor, shift).
        largest: take the largest lesion instead of a random one.
        values: optional (D, H, W) int64 label values resampled alike (nearest), e.g. the crop's lesion classes.

    Returns:
        (image crop float32, mask crop bool, the factor, the values crop or None); crop voxel o sits at canonical
        position ``centre + (o - (size - 1) / 2) / factor``.
    """
    components, count = label_lesions(mask.astype(bool, copy=False))
    if count == 0:
        raise ValueError("a zoomed crop needs a lesion in the mask")
    pick = int(np.argmax(np.bincount(components.ravel())[1:])) + 1 if largest else int(rng.integers(1, count + 1))
    bbox = ndimage.find_objects(components, max_label=pick)[pick - 1]
    assert bbox is not None
    lo = np.array([s.start for s in bbox], dtype=float)
    hi = np.array([s.stop - 1 for s in bbox], dtype=float)
    extent = float((hi - lo).max() + 1.0)
    factor = zoom.fill * size / extent * float(np.exp(rng.uniform(-zoom.spread, zoom.spread)))
    factor = float(np.clip(factor, 1.0, zoom.max_factor))
    # shift the centre by up to a quarter of the room the lesion leaves in the crop (it stays inside)
    room = np.maximum(size / factor - (hi - lo + 1.0), 0.0) / 4.0
    centre = (lo + hi) / 2.0 + rng.uniform(-1.0, 1.0, size=3) * room
    step = 1.0 / factor
    offset = centre - (size - 1) / 2.0 * step
    shape = (size, size, size)

    def sample(array: np.ndarray, order: int, cval: float) -> np.ndarray:
        return ndimage.affine_transform(
            array, np.full(3, step), offset=offset, output_shape=shape, order=order, mode="constant", cval=cval
        )

    img = sample(image.astype(np.float32, copy=False), 1, float(pad_value)).astype(np.float32)
    target = sample(mask.astype(np.float32), 1, 0.0) > 0.5
    kept = sample(values, 0, 0) if values is not None else None
    return img, target, factor, kept
