"""Crop windows of a volume: a box that may extend past the volume (padded), cutting and pasting crops, and crops
centred on a lesion of a label map (with jitter), all in (D, H, W) voxel order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from lesionsam.utils.components import label_lesions
from lesionsam.utils.options import look_up_option

# ---------------------------------------------------------------------------------------------------------------
# Crops
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CropBox:
    """A cubic (or box) window of a volume, in (d, h, w) voxels; may extend past the volume (padding).

    Attributes:
        start: (d, h, w) index in the volume of the crop's voxel (0, 0, 0); may be negative.
        size: (d, h, w) size of the crop.
        volume_shape: (D, H, W) of the volume the crop was taken from.
    """

    start: tuple[int, int, int]
    size: tuple[int, int, int]
    volume_shape: tuple[int, int, int]

    @property
    def stop(self) -> tuple[int, int, int]:
        """Exclusive end (d, h, w) in volume indices (may exceed the volume)."""
        return tuple(s + n for s, n in zip(self.start, self.size, strict=True))  # type: ignore[return-value]

    def to_crop(self, dhw: np.ndarray | Sequence[float]) -> np.ndarray:
        """Volume index/indices (…, 3) in (d, h, w) → crop index/indices (same dtype kind, float or int)."""
        pts = np.asarray(dhw)
        return pts - np.asarray(self.start, dtype=pts.dtype if pts.dtype.kind in "iuf" else float)

    def to_volume(self, dhw: np.ndarray | Sequence[float]) -> np.ndarray:
        """Crop index/indices (…, 3) in (d, h, w) → volume index/indices."""
        pts = np.asarray(dhw)
        return pts + np.asarray(self.start, dtype=pts.dtype if pts.dtype.kind in "iuf" else float)

    def contains(self, dhw: np.ndarray | Sequence[float]) -> bool:
        """Whether a volume index (d, h, w), rounded, lies inside the crop window."""
        c = np.floor(self.to_crop(np.asarray(dhw, dtype=float)) + 0.5)
        return bool(np.all(c >= 0) and np.all(c < np.asarray(self.size)))

    def overlap(self) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """(volume slices, crop slices) of the part of the window inside the volume (empty slices if none)."""
        vol_sl, crop_sl = [], []
        for s, n, full in zip(self.start, self.size, self.volume_shape, strict=True):
            lo, hi = max(s, 0), min(s + n, full)
            hi = max(hi, lo)
            vol_sl.append(slice(lo, hi))
            crop_sl.append(slice(lo - s, hi - s))
        return tuple(vol_sl), tuple(crop_sl)


def as_size3(size: int | Sequence[int]) -> tuple[int, int, int]:
    sizes = (size, size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(sizes) != 3 or not all(int(s) == s and s > 0 for s in sizes):
        raise ValueError(f"crop size must be a positive integer or three of them, got {size!r}")
    return tuple(int(s) for s in sizes)  # type: ignore[return-value]


def crop_box(
    center_dhw: np.ndarray | Sequence[float], size: int | Sequence[int], volume_shape: Sequence[int]
) -> CropBox:
    """The :class:`CropBox` of side ``size`` centred on ``center_dhw`` (rounded; crop index size // 2)."""
    sizes = as_size3(size)
    c = np.floor(np.asarray(center_dhw, dtype=float) + 0.5).astype(int)
    if c.shape != (3,):
        raise ValueError(f"center must be a (d, h, w) point, got shape {c.shape}")
    start = tuple(int(ci - n // 2) for ci, n in zip(c, sizes, strict=True))
    return CropBox(start=start, size=sizes, volume_shape=tuple(int(v) for v in volume_shape))  # type: ignore[arg-type]


def crop_or_pad(
    array: np.ndarray,
    center_dhw: np.ndarray | Sequence[float],
    size: int | Sequence[int],
    *,
    pad_value: float = 0.0,
) -> tuple[np.ndarray, CropBox]:
    """A window of side ``size`` centred on a point, padded with ``pad_value`` where it leaves the volume.

    Args:
        array: (D, H, W) or (C, D, H, W); the window is taken over the last three axes.
        center_dhw: (3,) centre in (d, h, w) voxels (rounded to the nearest voxel, which lands at crop index
            ``size // 2``).
        size: side of the cube (or (d, h, w) sizes).
        pad_value: value outside the volume (for a preprocessed image use ``Preprocessed.background``; 0 for
            labels).

    Returns:
        (crop, box): crop of shape (S, S, S) or (C, S, S, S), same dtype as ``array``; ``box`` converts indices
        (``box.to_crop`` / ``box.to_volume``) and writes back (:func:`paste`).
    """
    if array.ndim not in (3, 4):
        raise ValueError(f"expected (D, H, W) or (C, D, H, W), got shape {array.shape}")
    box = crop_box(center_dhw, size, array.shape[-3:])
    return take(array, box, pad_value=pad_value), box


def take(array: np.ndarray, box: CropBox, *, pad_value: float = 0.0) -> np.ndarray:
    """The window ``box`` of ``array`` ((D, H, W) or (C, D, H, W), the box's volume grid), padded with
    ``pad_value`` where it leaves the volume; same dtype as ``array``."""
    if tuple(array.shape[-3:]) != tuple(box.volume_shape):
        raise ValueError(f"array {array.shape} is not on the box's volume grid {box.volume_shape}")
    out = np.full((*array.shape[:-3], *box.size), pad_value, dtype=array.dtype)
    vol_sl, crop_sl = box.overlap()
    out[(..., *crop_sl)] = array[(..., *vol_sl)]
    return out


def paste(crop_values: np.ndarray, box: CropBox, out_array: np.ndarray) -> np.ndarray:
    """Write a crop back into a full-size array (in place), dropping the padded part.

    Args:
        crop_values: (S, S, S) or (C, S, S, S) values on the crop ``box``.
        box: where the crop came from.
        out_array: (D, H, W) or (C, D, H, W) with ``box.volume_shape`` spatial shape; modified in place.

    Returns:
        ``out_array``.
    """
    if tuple(crop_values.shape[-3:]) != box.size:
        raise ValueError(f"crop of shape {crop_values.shape} does not match the box size {box.size}")
    if tuple(out_array.shape[-3:]) != box.volume_shape:
        raise ValueError(f"output of shape {out_array.shape} does not match the box's volume {box.volume_shape}")
    vol_sl, crop_sl = box.overlap()
    out_array[(..., *vol_sl)] = crop_values[(..., *crop_sl)]
    return out_array


def crop_around_label(
    image: np.ndarray,
    mask: np.ndarray,
    size: int | Sequence[int],
    *,
    rng: np.random.Generator,
    lesion: Literal["random", "largest"] = "random",
    jitter: int = 0,
    pad_value: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, CropBox]:
    """A training crop containing one target lesion.

    The lesion is a 26-connected component of ``mask``: a uniformly random one (``lesion="random"``, so
    small lesions are seen as often as large ones) or the largest. The crop is centred on the centre of its
    bounding box, then shifted by up to ``jitter`` voxels per axis, never so far that the bounding box leaves
    the crop (a lesion larger than the crop stays centred). An empty mask gives a crop centred on a uniformly
    random voxel.

    Args:
        image: (D, H, W) or (C, D, H, W) image on the same grid as ``mask``.
        mask: (D, H, W) bool or 0/1 target mask.
        size: crop side (or (d, h, w) sizes) in voxels.
        rng: random generator (lesion choice, jitter, random crops).
        lesion: "random" or "largest".
        jitter: maximum shift of the crop centre in voxels per axis.
        pad_value: image value outside the volume (labels are padded with 0).

    Returns:
        (image crop (…, S, S, S) same dtype, mask crop (S, S, S) same dtype as ``mask``, :class:`CropBox`).
    """
    look_up_option(lesion, ("random", "largest"), what="lesion choice")
    if tuple(image.shape[-3:]) != mask.shape:
        raise ValueError(f"image {image.shape} and mask {mask.shape} are not on the same (D, H, W) grid")
    if jitter < 0:
        raise ValueError(f"jitter must be >= 0 voxels, got {jitter}")
    sizes = as_size3(size)
    binary = mask.astype(bool, copy=False)
    if not binary.any():
        center = np.array([rng.integers(0, n) for n in mask.shape], dtype=float)
    else:
        components, count = label_lesions(binary)
        if lesion == "largest":
            pick = int(np.argmax(np.bincount(components.ravel())[1:])) + 1
        else:
            pick = int(rng.integers(1, count + 1))
        bbox = ndimage.find_objects(components, max_label=pick)[pick - 1]
        assert bbox is not None
        lo = np.array([s.start for s in bbox])
        hi = np.array([s.stop - 1 for s in bbox])  # inclusive
        base = np.floor((lo + hi) / 2.0 + 0.5).astype(int)
        center = base.astype(float)
        if jitter:
            for ax, n in enumerate(sizes):
                # start = c - n // 2 must satisfy start <= lo and start + n - 1 >= hi.
                min_c = hi[ax] - n + 1 + n // 2
                max_c = lo[ax] + n // 2
                lo_shift = max(-jitter, min_c - base[ax])
                hi_shift = min(jitter, max_c - base[ax])
                if lo_shift <= hi_shift:
                    center[ax] = base[ax] + int(rng.integers(lo_shift, hi_shift + 1))
    img_crop, box = crop_or_pad(image, center, sizes, pad_value=pad_value)
    mask_crop, _ = crop_or_pad(mask, center, sizes, pad_value=0)
    return img_crop, mask_crop, box
