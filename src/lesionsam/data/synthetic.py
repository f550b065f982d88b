"""Synthetic CT-like volumes with an organ, vessels and small irregular lesions, and an MSD data set of them.

The generator serves the demo and the tests: no test downloads anything. Each case is a seeded, fast
(well under a second for 96³) CT-like volume:

* a body (ellipsoid of soft tissue, about +40 HU) in air (-1000 HU), usually with a subcutaneous fat layer
  (about -100 HU);
* an organ ("liver", about +60 HU): a smooth irregular blob inside the body;
* vessels (about +150..200 HU): tubes where two smooth random fields both cross zero, inside the organ;
* hypodense lesions ("tumour", about +20..35 HU) inside the organ, irregular (a perturbed, rotated ellipsoid,
  the larger ones with one or two satellite blobs) and of widely varying size, from tens of voxels to several
  cm³; lesions never touch each other (so each is one connected component) nor the organ's border;
* optionally (``lesion_classes=2``) a second lesion class, "cyst": 1..3 per case (some cases none), round and
  smooth (a near-spherical ellipsoid), sharply bounded and water-like (about 0..10 HU, no texture), of similarly
  wide sizes, inside the organ and touching neither tumours nor each other. Cysts are drawn from a separate
  generator (``np.random.default_rng([seed, 2])``), so everything else is bit-identical to ``lesion_classes=1``;
* a mild blur (partial volume), a smooth low-frequency texture and Gaussian noise (10..20 HU), stored as int16.

Geometry is anisotropic (in-plane 0.7..0.9 mm, slices 1.5..3 mm, drawn per case) with a non-zero origin and
an identity direction. Arrays are in SimpleITK's NumPy order (D, H, W) = (k, j, i); spacing and origin are in
ITK's (i, j, k) order, mm, LPS (see :mod:`lesionsam.data.io`).

Label values (uint8): 0 background, 1 liver (organ), 2 tumour (lesion), 3 vessel; a lesion wins where it
overlaps organ or vessel, so the MSD liver-tumour target label 2 applies. With ``lesion_classes=2``, label 4
is a cyst (it too wins over organ and vessel); see :data:`LABELS_WITH_CYST`.

Example:
    >>> case = make_case(size=48, seed=1, n_lesions=2)
    >>> case.image.array.dtype, case.label.array.shape, len(case.lesion_volumes_mm3)
    (dtype('int16'), (48, 48, 48), 2)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from lesionsam import __version__
from lesionsam.data.io import Volume, write_image
from lesionsam.utils.dataclass_io import atomic_write_bytes
from lesionsam.utils.options import look_up_option

# ------------------------------------------------------------------------------------------------ labels
BACKGROUND, ORGAN, LESION, VESSEL, CYST = 0, 1, 2, 3, 4
#: Label values and names, as written to ``dataset.json`` (one lesion class, the default).
LABELS: dict[int, str] = {BACKGROUND: "background", ORGAN: "liver", LESION: "tumour", VESSEL: "vessel"}
#: Label values and names with the second lesion class (``lesion_classes=2``).
LABELS_WITH_CYST: dict[int, str] = {**LABELS, CYST: "cyst"}
#: Accepted values of ``lesion_classes``: 1 (tumours only) or 2 (tumours and cysts).
LESION_CLASSES = (1, 2)

#: Output formats of :func:`write_synthetic_dataset` and their file endings.
FORMATS: dict[str, str] = {"nii.gz": ".nii.gz", "nrrd": ".nrrd"}
#: Smallest and largest edge length (voxels) of a generated volume.
MIN_SIZE = 32
MAX_SIZE = 512
#: Most lesions one case may ask for.
MAX_LESIONS = 12

# ------------------------------------------------------------------------------------------ intensities (HU)
AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_TISSUE_HU = 40.0
ORGAN_HU = 60.0
VESSEL_HU_RANGE = (150.0, 200.0)
LESION_HU_RANGE = (20.0, 35.0)
CYST_HU_RANGE = (0.0, 10.0)
NOISE_SD_RANGE = (10.0, 20.0)
TEXTURE_SD_HU = 5.0
HU_CLIP = (-1024, 3071)

# -------------------------------------------------------------------------------------------------- geometry
INPLANE_SPACING_RANGE = (0.7, 0.9)
SLICE_SPACING_RANGE = (1.5, 3.0)
FAT_PROBABILITY = 0.8
FAT_THICKNESS_MM = (3.0, 8.0)
MUSCLE_THICKNESS_MM = (3.0, 6.0)
ORGAN_IRREGULARITY = 0.22
VESSEL_THICKNESS_RANGE = (0.2, 0.28)
BLUR_SIGMA_VOXELS = 0.6

# ---------------------------------------------------------------------------------------------------- lesions
#: Smallest target lesion size, in voxels ("tens of voxels").
LESION_MIN_VOXELS = 25
#: A placed lesion is kept only with at least this many voxels.
LESION_KEEP_MIN_VOXELS = 10
#: Largest target lesion volume (mm³) and largest fraction of the organ's volume one lesion may take.
LESION_MAX_MM3 = 6000.0
LESION_MAX_ORGAN_FRACTION = 0.06
#: Largest fraction of the organ all targets together may take (shrinks the largest target for many lesions).
LESION_TOTAL_ORGAN_FRACTION = 0.25
_PLACEMENT_TRIES = 12
#: Most cysts per case (``lesion_classes=2``) and the probability that a case has none.
MAX_CYSTS = 3
CYST_NONE_PROBABILITY = 0.15
#: Largest relative deviation of a cyst's semi-axes from a sphere (log-normal sd).
CYST_ASPECT_SD = 0.08
_PLACEMENT_ROUNDS = 16


@dataclass(frozen=True)
class SyntheticCase:
    """One generated case.

    Attributes:
        image: CT-like image, ``array`` (D, H, W) int16 HU, axes (k, j, i).
        label: label map on the image's exact grid, ``array`` (D, H, W) uint8 with values in :data:`LABELS`.
        lesion_volumes_mm3: physical volume (mm³, from the spacing) of each lesion, in placement order (largest
            target first); each lesion is one connected component of label 2. Empty for a case without lesion.
        cyst_volumes_mm3: physical volume (mm³) of each cyst (label 4, ``lesion_classes=2`` only), largest
            target first; each cyst is one connected component. Empty without cysts.
    """

    image: Volume
    label: Volume
    lesion_volumes_mm3: tuple[float, ...]
    cyst_volumes_mm3: tuple[float, ...] = ()

    @property
    def n_lesions(self) -> int:
        """Number of lesions (tumours, label 2) in the case."""
        return len(self.lesion_volumes_mm3)

    @property
    def n_cysts(self) -> int:
        """Number of cysts (label 4) in the case."""
        return len(self.cyst_volumes_mm3)


# ------------------------------------------------------------------------------------------------ validation
def _check_int(value: object, name: str, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def _check_lesion_classes(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) not in LESION_CLASSES:
        raise ValueError(f"lesion_classes must be 1 (tumours only) or 2 (tumours and cysts, label 4), got {value!r}")
    return int(value)


def _check_size(size: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        dims: Sequence[object] = (size, size, size)
    elif isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 3:
        dims = size
    else:
        raise ValueError(f"size must be an integer or three integers (D, H, W), got {size!r}")
    out = []
    for n, name in zip(dims, ("D", "H", "W"), strict=True):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not MIN_SIZE <= n <= MAX_SIZE:
            raise ValueError(
                f"size must be between {MIN_SIZE} and {MAX_SIZE} voxels along every axis (the organ and its "
                f"lesions need room; larger volumes need GBs of memory), got {name}={n!r} in size={size!r}"
            )
        out.append(int(n))
    return (out[0], out[1], out[2])


def _check_spacing(spacing: Sequence[float] | None) -> tuple[float, float, float] | None:
    if spacing is None:
        return None
    if isinstance(spacing, str) or not isinstance(spacing, Sequence) or len(spacing) != 3:
        raise ValueError(f"spacing must be three voxel sizes (i, j, k) in mm, got {spacing!r}")
    values = tuple(float(s) for s in spacing)
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be three positive, finite voxel sizes (i, j, k) in mm, got {spacing!r}")
    return (values[0], values[1], values[2])


# ---------------------------------------------------------------------------------------------- smooth fields
def _axis_kernel(n: int, extent_mm: float, corr_mm: float) -> np.ndarray:
    """(n, m) Gaussian interpolation weights from m coarse nodes (spaced ``corr_mm``) to n voxel centres."""
    m = max(int(math.ceil(extent_mm / corr_mm)) + 3, 3)
    nodes = (np.arange(m) - 1.0) * corr_mm  # one node beyond each end
    centres = (np.arange(n) + 0.5) * (extent_mm / n)
    return np.exp(-0.5 * ((centres[:, None] - nodes[None, :]) / (0.7 * corr_mm)) ** 2).astype(np.float32)


def _smooth_fields(
    rng: np.random.Generator, count: int, shape: tuple[int, int, int], spacing_kji: np.ndarray, corr_mm: float
) -> np.ndarray:
    """``count`` smooth zero-mean, unit-variance random fields, (count, D, H, W) float32.

    Each is a sum of Gaussian bumps with random weights on a coarse grid of pitch ``corr_mm`` (physical, so the
    fields are isotropic in mm on an anisotropic grid); separable, hence a few matrix products.
    """
    kernels = [_axis_kernel(n, n * s, corr_mm) for n, s in zip(shape, spacing_kji, strict=True)]
    coarse = rng.standard_normal((count, *(k.shape[1] for k in kernels)), dtype=np.float32)
    field = np.einsum("cabe,da->cdbe", coarse, kernels[0], optimize=True)
    field = np.einsum("cdbe,hb->cdhe", field, kernels[1], optimize=True)
    field = np.einsum("cdhe,we->cdhw", field, kernels[2], optimize=True)
    field -= field.mean(axis=(1, 2, 3), keepdims=True)
    field /= field.std(axis=(1, 2, 3), keepdims=True) + 1e-6
    return field


def _mm_grid(shape: tuple[int, int, int], spacing_kji: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Open (broadcastable) float32 grids of voxel-centre positions in mm along (D, H, W), 0 at the centre."""
    d, h, w = (
        (np.arange(n, dtype=np.float32) - np.float32((n - 1) / 2.0)) * np.float32(s)
        for n, s in zip(shape, spacing_kji, strict=True)
    )
    return d[:, None, None], h[None, :, None], w[None, None, :]


def _ellipsoid(grid: tuple[np.ndarray, ...], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Squared normalised radius ``sum(((x - c) / r)²)`` over the (D, H, W) grid; < 1 inside the ellipsoid."""
    c = centre.astype(np.float32)
    r = np.maximum(radii, 1e-3).astype(np.float32)
    return ((grid[0] - c[0]) / r[0]) ** 2 + ((grid[1] - c[1]) / r[1]) ** 2 + ((grid[2] - c[2]) / r[2]) ** 2


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


# ---------------------------------------------------------------------------------------------------- lesions
def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _lesion_shape(rng: np.random.Generator, radius_mm: float, spacing_kji: np.ndarray) -> np.ndarray:
    """An irregular blob of equivalent radius ~``radius_mm`` in a local box (odd sizes, centred), bool."""
    half = np.ceil(1.7 * radius_mm / spacing_kji).astype(int) + 1
    axes = [(np.arange(-h, h + 1) * s).astype(np.float32) for h, s in zip(half, spacing_kji, strict=True)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (d, h, w, 3) mm, (k, j, i) frame
    aspect = np.exp(rng.normal(0.0, 0.2, 3))
    radii = radius_mm * aspect / np.cbrt(aspect.prod())
    local = pts @ _random_rotation(rng).astype(np.float32)
    rho = np.sqrt(((local / radii.astype(np.float32)) ** 2).sum(-1))
    n_satellites = int(rng.integers(0, 3)) if radius_mm > 4.0 else 0
    for _ in range(n_satellites):
        direction = rng.standard_normal(3)
        offset = direction / np.linalg.norm(direction) * radius_mm * rng.uniform(0.55, 0.9)
        sat_r = radius_mm * rng.uniform(0.4, 0.65)
        rho = np.minimum(rho, np.sqrt(((pts - offset.astype(np.float32)) ** 2).sum(-1)) / sat_r)
    amplitude = 0.1 if radius_mm < 3.0 else rng.uniform(0.15, 0.3)
    corr_mm = max(radius_mm * 0.6, 1.0)
    noise = _smooth_fields(rng, 1, rho.shape, spacing_kji, corr_mm)[0]
    return rho < 1.0 + amplitude * noise


def _box(centre: np.ndarray, half: np.ndarray, shape: tuple[int, int, int]) -> tuple[tuple[slice, ...], ...]:
    """Slices of the volume and of a local box of half sizes ``half`` centred on ``centre``, clipped to bounds."""
    vol, loc = [], []
    for c, h, n in zip(centre, half, shape, strict=True):
        lo, hi = int(c) - int(h), int(c) + int(h) + 1
        vol.append(slice(max(lo, 0), min(hi, n)))
        loc.append(slice(max(lo, 0) - lo, 2 * int(h) + 1 - (hi - min(hi, n))))
    return tuple(vol), tuple(loc)


def _target_volumes(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    """``n`` stratified log-uniform volumes in [lo, hi], largest first (so that every case spans a range)."""
    strata = (rng.permutation(n) + rng.uniform(0.0, 1.0, n)) / n
    return np.sort(np.exp(np.log(lo) + strata * (np.log(hi) - np.log(lo))))[::-1]


def _place_lesions(
    rng: np.random.Generator, organ: np.ndarray, n_lesions: int, spacing_kji: np.ndarray, *, strict: bool
) -> list[tuple[tuple[slice, ...], np.ndarray]]:
    """Non-touching irregular lesions inside ``organ`` (D, H, W) bool.

    ``strict`` raises ``ValueError`` when fewer than ``n_lesions`` fit; otherwise at least one lesion is placed.

    Returns:
        One ``(slices, mask)`` per lesion, in placement order (largest target first): ``mask`` is a bool box and
        ``slices`` its place in the volume; each mask is one connected component, at least one voxel away from
        the organ's border and from every other lesion (26-neighbourhood).
    """
    if n_lesions == 0:
        return []
    voxel_mm3 = float(spacing_kji.prod())
    cube = np.ones((3, 3, 3), bool)
    inner = ndimage.binary_erosion(organ, cube)
    # Distance to the organ's border (mm) on an in-plane half-resolution grid: only used to pick centres.
    coarse = ndimage.distance_transform_edt(organ[:, ::2, ::2], sampling=spacing_kji * (1, 2, 2))
    depth = np.repeat(np.repeat(coarse, 2, axis=1), 2, axis=2)[:, : organ.shape[1], : organ.shape[2]]
    lo = LESION_MIN_VOXELS * voxel_mm3
    organ_mm3 = float(organ.sum()) * voxel_mm3
    hi = min(LESION_MAX_MM3, LESION_MAX_ORGAN_FRACTION * organ_mm3, LESION_TOTAL_ORGAN_FRACTION * organ_mm3 / n_lesions)
    hi = max(hi, 4.0 * lo)
    min_radius = float(np.cbrt(3.0 * 2 * LESION_KEEP_MIN_VOXELS * voxel_mm3 / (4.0 * np.pi)))
    free = inner.copy()  # organ interior not within one voxel of a placed lesion
    centres: list[tuple[np.ndarray, float]] = []
    lesions: list[tuple[tuple[slice, ...], np.ndarray]] = []
    for target in _target_volumes(rng, n_lesions, lo, hi):
        radius = max(min(float(np.cbrt(3.0 * target / (4.0 * np.pi))), 0.8 * float(depth.max())), min_radius)
        placed = None
        for _round in range(_PLACEMENT_ROUNDS):
            if _round < _PLACEMENT_ROUNDS // 2:
                candidates = np.argwhere(free & (depth >= radius))
            else:  # crowded: the deepest free places, away from the border and from other lesions
                free_depth = ndimage.distance_transform_edt(free, sampling=spacing_kji)
                candidates = np.argwhere(free_depth >= 0.7 * free_depth.max()) if free.any() else np.empty((0, 3))
            if len(candidates) == 0:
                candidates = np.argwhere(free)
            if len(candidates) == 0:
                break
            for _ in range(_PLACEMENT_TRIES):
                centre = candidates[rng.integers(len(candidates))]
                centre_mm = centre * spacing_kji
                if any(np.linalg.norm(centre_mm - c) < radius + r for c, r in centres):
                    continue
                shape = _lesion_shape(rng, radius, spacing_kji)
                vol_sl, loc_sl = _box(centre, np.array(shape.shape) // 2, organ.shape)
                mask = shape[loc_sl] & free[vol_sl]
                if not mask.any():
                    continue
                mask = _largest_component(mask)
                expected = 4.0 / 3.0 * np.pi * radius**3 / voxel_mm3
                if mask.sum() >= max(LESION_KEEP_MIN_VOXELS, 0.4 * expected):
                    placed = (vol_sl, mask)
                    centres.append((centre_mm, radius))
                    break
            if placed is not None:
                break
            centres.clear()  # crowded: allow centres near others (``free`` still keeps lesions apart)
            radius = max(0.8 * radius, min_radius)
        if placed is None:
            if not strict and lesions:
                break
            raise ValueError(
                f"no room left in the organ for lesion {len(lesions) + 1} of {n_lesions}; "
                "ask for fewer lesions (n_lesions) or a larger size"
            )
        lesions.append(placed)
        # Block the lesion and its 26-neighbours, working in the lesion's box grown by one voxel.
        sl = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(placed[0], organ.shape, strict=True))
        grown = np.zeros(tuple(s.stop - s.start for s in sl), bool)
        grown[tuple(slice(s.start - g.start, s.stop - g.start) for s, g in zip(placed[0], sl, strict=True))] = placed[1]
        free[sl] &= ~ndimage.binary_dilation(grown, cube)
    return lesions


def _place_cysts(
    rng: np.random.Generator, organ: np.ndarray, tumours: np.ndarray, n_cysts: int, spacing_kji: np.ndarray
) -> list[tuple[tuple[slice, ...], np.ndarray]]:
    """Up to ``n_cysts`` round, non-touching cysts inside ``organ``, away from ``tumours`` (both (D, H, W) bool).

    Sizes are stratified log-uniform over the tumours' range; a cyst that does not fit is shrunk, and skipped
    (with the rest) when no cyst of at least :data:`LESION_KEEP_MIN_VOXELS` voxels fits any more.

    Returns:
        One ``(slices, mask)`` per cyst, as :func:`_place_lesions`: each mask one connected component, at least
        one voxel away from the organ's border, from every tumour and from every other cyst (26-neighbourhood).
    """
    if n_cysts == 0 or not organ.any():
        return []
    # Work in the organ's bounding box (much faster distance transforms); shift the slices back at the end.
    crop = ndimage.find_objects(organ.astype(np.uint8))[0]
    organ, tumours = organ[crop], tumours[crop]
    voxel_mm3 = float(spacing_kji.prod())
    cube = np.ones((3, 3, 3), bool)
    free = ndimage.binary_erosion(organ, cube) & ~ndimage.binary_dilation(tumours, cube)
    lo = LESION_MIN_VOXELS * voxel_mm3
    organ_mm3 = float(organ.sum()) * voxel_mm3
    hi = min(LESION_MAX_MM3, LESION_MAX_ORGAN_FRACTION * organ_mm3, LESION_TOTAL_ORGAN_FRACTION * organ_mm3 / n_cysts)
    hi = max(hi, 4.0 * lo)
    cysts: list[tuple[tuple[slice, ...], np.ndarray]] = []
    for target in _target_volumes(rng, n_cysts, lo, hi):
        if not free.any():
            break
        # Distance (mm) from each free voxel to the nearest blocked one: a ball of smaller radius fits there.
        depth = ndimage.distance_transform_edt(free, sampling=spacing_kji)
        aspect = np.exp(rng.normal(0.0, CYST_ASPECT_SD, 3))
        aspect /= np.cbrt(aspect.prod())
        radius = float(np.cbrt(3.0 * target / (4.0 * np.pi)))
        radius = min(radius, 0.9 * float(depth.max()) / float(aspect.max()))
        if 4.0 / 3.0 * np.pi * radius**3 < LESION_KEEP_MIN_VOXELS * voxel_mm3:
            break
        candidates = np.argwhere(depth > radius * aspect.max())
        centre = candidates[rng.integers(len(candidates))]
        half = np.ceil(radius * aspect.max() / spacing_kji).astype(int) + 1
        axes = [(np.arange(-h, h + 1) * s).astype(np.float32) for h, s in zip(half, spacing_kji, strict=True)]
        pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1) @ _random_rotation(rng).astype(np.float32)
        ball = (((pts / (radius * aspect).astype(np.float32)) ** 2).sum(-1)) < 1.0
        vol_sl, loc_sl = _box(centre, half, organ.shape)
        mask = ball[loc_sl] & free[vol_sl]
        if not mask.any():
            continue
        mask = _largest_component(mask)
        if mask.sum() < LESION_KEEP_MIN_VOXELS:
            continue
        cysts.append((vol_sl, mask))
        sl = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(vol_sl, organ.shape, strict=True))
        grown = np.zeros(tuple(s.stop - s.start for s in sl), bool)
        grown[tuple(slice(s.start - g.start, s.stop - g.start) for s, g in zip(vol_sl, sl, strict=True))] = mask
        free[sl] &= ~ndimage.binary_dilation(grown, cube)
    return [
        (tuple(slice(s.start + c.start, s.stop + c.start) for s, c in zip(sl, crop, strict=True)), mask)
        for sl, mask in cysts
    ]


# ------------------------------------------------------------------------------------------------------ cases
def _random_spacing(rng: np.random.Generator) -> tuple[float, float, float]:
    inplane = round(float(rng.uniform(*INPLANE_SPACING_RANGE)), 3)
    return (inplane, inplane, round(float(rng.uniform(*SLICE_SPACING_RANGE)), 3))


def make_case(
    *,
    size: int | Sequence[int] = (96, 96, 96),
    seed: int = 0,
    spacing: Sequence[float] | None = None,
    n_lesions: int | None = None,
    lesion_classes: int = 1,
) -> SyntheticCase:
    """Generate one CT-like case with an organ, vessels and irregular lesions (see the module docstring).

    Args:
        size: edge length, or the (D, H, W) = (nk, nj, ni) array shape; every entry in
            [:data:`MIN_SIZE`, :data:`MAX_SIZE`].
        seed: seed of the generator (>= 0); the same arguments give identical arrays.
        spacing: voxel size (i, j, k) in mm; None draws in-plane 0.7..0.9 mm (i = j) and slices 1.5..3 mm.
        n_lesions: number of lesions (0..:data:`MAX_LESIONS`); None draws 1..4 (fewer, but at least one, where
            a small organ cannot hold them).
        lesion_classes: 1 (tumours only, the default) or 2 (also 0..3 cysts, label 4, drawn from
            ``np.random.default_rng([seed, 2])``: everything else stays bit-identical to 1). An explicit
            ``n_lesions=0`` gives a lesion-free case: no cysts either.

    Returns:
        A :class:`SyntheticCase`: image (D, H, W) int16 HU, label (D, H, W) uint8 with values 0..3 (0..4 with
        cysts) on the same grid, and each lesion's (and cyst's) volume in mm³.

    Raises:
        ValueError: a size out of range, a negative seed, a non-positive spacing, a number of lesions out of
            range or more than fit in the organ (possible for large counts in small volumes), or
            ``lesion_classes`` other than 1 or 2.
        TypeError: a seed or n_lesions that is not an integer.
    """
    shape = _check_size(size)
    seed = _check_int(seed, "seed", minimum=0)
    spacing_ijk = _check_spacing(spacing)
    lesion_classes = _check_lesion_classes(lesion_classes)
    rng = np.random.default_rng(seed)
    strict = n_lesions is not None
    if n_lesions is None:
        n_lesions = int(rng.integers(1, 5))
    n_lesions = _check_int(n_lesions, "n_lesions", minimum=0, maximum=MAX_LESIONS)
    if spacing_ijk is None:
        spacing_ijk = _random_spacing(rng)
    spacing_kji = np.asarray(spacing_ijk[::-1], dtype=float)
    extent_kji = np.asarray(shape) * spacing_kji
    origin_ijk = tuple(round(float(-0.5 * e + rng.uniform(-20.0, 20.0)), 2) for e in extent_kji[::-1][:2]) + (
        round(float(rng.uniform(-400.0, 100.0)), 2),
    )

    grid = _mm_grid(shape, spacing_kji)
    half = extent_kji / 2.0
    organ_field = _smooth_fields(rng, 1, shape, spacing_kji, corr_mm=rng.uniform(15.0, 25.0))[0]
    vessel_fields = _smooth_fields(rng, 2, shape, spacing_kji, corr_mm=rng.uniform(10.0, 15.0))
    texture = _smooth_fields(rng, 1, shape, spacing_kji, corr_mm=30.0)[0]

    # Body: an ellipsoid (AP flatter than LR) filling the field of view in-plane and cut by the first and last
    # slices, as in a CT scan; a fat layer and a muscle wall of physical thickness under its surface.
    body_r = np.array(
        [rng.uniform(1.15, 1.4) * half[0], rng.uniform(0.65, 0.78) * half[1], rng.uniform(0.82, 0.92) * half[2]]
    )
    body = _ellipsoid(grid, np.zeros(3), body_r) < 1.0
    # Each layer at most 10 % of the body's smaller in-plane radius, so that small volumes keep room for an organ.
    layer_cap = 0.1 * float(body_r[1:].min())
    fat_mm = min(rng.uniform(*FAT_THICKNESS_MM), layer_cap) if rng.uniform() < FAT_PROBABILITY else 0.0
    wall_mm = fat_mm + min(rng.uniform(*MUSCLE_THICKNESS_MM), layer_cap)
    inside_fat = _ellipsoid(grid, np.zeros(3), body_r - fat_mm) < 1.0
    inside_wall = _ellipsoid(grid, np.zeros(3), body_r - wall_mm) < 1.0

    # Organ: a smooth irregular blob on the patient's right (low i: LPS +x is the patient's left), inside the wall.
    organ_r = np.array([0.0, rng.uniform(0.6, 0.75) * body_r[1], rng.uniform(0.55, 0.7) * body_r[2]])
    organ_r[0] = min(rng.uniform(0.5, 0.65) * half[0], rng.uniform(2.0, 2.8) * organ_r[1:].max())
    organ_c = np.array(
        [rng.uniform(-0.15, 0.15) * half[0], rng.uniform(-0.1, 0.1) * body_r[1], -rng.uniform(0.2, 0.35) * body_r[2]]
    )
    rho = np.sqrt(_ellipsoid(grid, organ_c, organ_r))
    # The half-size core (inside the wall by construction) keeps the organ one non-empty piece.
    organ = _largest_component(((rho < 1.0 + ORGAN_IRREGULARITY * organ_field) | (rho < 0.5)) & inside_wall)

    # Vessels: tubes where two smooth fields both cross zero, kept inside the organ.
    thickness = rng.uniform(*VESSEL_THICKNESS_RANGE)
    vessel = (np.abs(vessel_fields[0]) < thickness) & (np.abs(vessel_fields[1]) < thickness) & organ

    lesions = _place_lesions(rng, organ, n_lesions, spacing_kji, strict=strict)
    cysts: list[tuple[tuple[slice, ...], np.ndarray]] = []
    cyst_hu: list[float] = []
    if lesion_classes == 2 and n_lesions > 0:
        cyst_rng = np.random.default_rng([seed, 2])  # separate stream: class-1 content is untouched
        n_cysts = 0 if cyst_rng.uniform() < CYST_NONE_PROBABILITY else int(cyst_rng.integers(1, MAX_CYSTS + 1))
        tumours = np.zeros(shape, bool)
        for sl, mask in lesions:
            tumours[sl] |= mask
        cysts = _place_cysts(cyst_rng, organ, tumours, n_cysts, spacing_kji)
        cyst_hu = [float(cyst_rng.uniform(*CYST_HU_RANGE)) for _ in cysts]

    image = np.full(shape, AIR_HU, dtype=np.float32)
    image[body] = SOFT_TISSUE_HU
    image[body & ~inside_fat] = FAT_HU
    image += np.where(body, TEXTURE_SD_HU * texture, 0.0).astype(np.float32)
    image[organ] = ORGAN_HU + TEXTURE_SD_HU * texture[organ]
    image[vessel] = rng.uniform(*VESSEL_HU_RANGE)
    label = np.zeros(shape, dtype=np.uint8)
    label[organ] = ORGAN
    label[vessel] = VESSEL
    for sl, mask in lesions:
        patch = image[sl]
        patch[mask] = rng.uniform(*LESION_HU_RANGE) + 0.5 * TEXTURE_SD_HU * texture[sl][mask]
        label[sl][mask] = LESION
    for (sl, mask), hu in zip(cysts, cyst_hu, strict=True):
        image[sl][mask] = hu  # water-like and homogeneous: no texture, sharp border (before the blur)
        label[sl][mask] = CYST
    image = ndimage.gaussian_filter(image, BLUR_SIGMA_VOXELS, mode="nearest")
    image += rng.uniform(*NOISE_SD_RANGE) * rng.standard_normal(shape, dtype=np.float32)
    image = np.clip(np.rint(image), *HU_CLIP).astype(np.int16)

    geometry = {
        "spacing": spacing_ijk,
        "origin": origin_ijk,
        "direction": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    }
    voxel_mm3 = float(np.prod(spacing_ijk))
    return SyntheticCase(
        image=Volume(array=image, **geometry),
        label=Volume(array=label, **geometry),
        lesion_volumes_mm3=tuple(float(mask.sum()) * voxel_mm3 for _, mask in lesions),
        cyst_volumes_mm3=tuple(float(mask.sum()) * voxel_mm3 for _, mask in cysts),
    )


# ---------------------------------------------------------------------------------------------------- data set
def case_seed(seed: int, index: int) -> int:
    """The :func:`make_case` seed of case ``index`` of a data set written with ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _stale_cases(out: Path, keep: set[str]) -> list[Path]:
    """Files named like synthetic cases in ``out``'s images/labels folders that are not in ``keep``."""
    pattern = re.compile(r"^case_\d+\.(nii\.gz|nrrd)$")
    stale = []
    for folder in ("imagesTr", "labelsTr"):
        d = out / folder
        if d.is_dir():
            stale += [p for p in sorted(d.iterdir()) if pattern.match(p.name) and p.name not in keep]
    return stale


def write_synthetic_dataset(
    out: str | Path,
    *,
    cases: int,
    seed: int = 0,
    size: int = 96,
    fmt: str = "nii.gz",
    progress: bool = False,
    lesion_classes: int = 1,
) -> Path:
    """Write a synthetic CT data set in the Medical Segmentation Decathlon (MSD) layout.

    Layout::

        out/dataset.json
        out/imagesTr/case_000.nii.gz   (int16 HU)   ...
        out/labelsTr/case_000.nii.gz   (uint8: 0 background, 1 liver, 2 tumour, 3 vessel)

    ``dataset.json`` is MSD's (name, description, tensorImageSize, modality, labels, numTraining, numTest,
    training, test) plus ``lesion_volumes_mm3`` (case name → each lesion's volume in mm³) and ``synthetic``
    (the generator's arguments). Case ``c`` is ``make_case(size=size, seed=case_seed(seed, c),
    lesion_classes=lesion_classes)``, except that the last case has no lesion (of either class) when
    ``cases >= 2``. With ``lesion_classes=2``, labels also list ``"4": "cyst"``, ``cyst_volumes_mm3`` (case name
    → each cyst's volume in mm³) is added and ``synthetic`` records ``lesion_classes``; with the default 1 the
    output is exactly that of earlier versions. Every file is written atomically.

    Args:
        out: the data set's folder (created if missing).
        cases: number of cases (>= 1).
        seed: data set seed (>= 0).
        size: edge length of every (cubic) volume in voxels ([:data:`MIN_SIZE`, :data:`MAX_SIZE`]).
        fmt: "nii.gz" or "nrrd".
        progress: show a progress bar (stderr).
        lesion_classes: 1 (tumours, label 2) or 2 (tumours and cysts, label 4).

    Returns:
        ``out`` as a Path.

    Raises:
        ValueError: a bad argument, ``out`` being a file, or ``out`` already holding case files that this data
            set would not list (choose an empty folder).
    """
    cases = _check_int(cases, "cases", minimum=1)
    seed = _check_int(seed, "seed", minimum=0)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"size must be one integer (the edge length of the cubic volumes), got {size!r}")
    size = _check_size(size)[0]
    lesion_classes = _check_lesion_classes(lesion_classes)
    suffix = FORMATS[look_up_option(fmt, FORMATS, what="format")]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; give a folder for the data set")
    width = max(3, len(str(cases - 1)))
    names = [f"case_{c:0{width}d}" for c in range(cases)]
    stale = _stale_cases(out, {n + suffix for n in names})
    if stale:
        raise ValueError(
            f"{out} already holds {len(stale)} case file(s) that this data set would not list "
            f"(e.g. {stale[0].relative_to(out)}); choose an empty folder or delete them"
        )

    training, volumes, cyst_volumes = [], {}, {}
    for c, name in enumerate(tqdm(names, desc="synth", unit="case", disable=not progress)):
        n_lesions = 0 if cases >= 2 and c == cases - 1 else None
        case = make_case(size=size, seed=case_seed(seed, c), n_lesions=n_lesions, lesion_classes=lesion_classes)
        image_rel, label_rel = f"imagesTr/{name}{suffix}", f"labelsTr/{name}{suffix}"
        write_image(case.image.array, out / image_rel, reference=case.image)
        write_image(case.label.array, out / label_rel, reference=case.label)
        training.append({"image": f"./{image_rel}", "label": f"./{label_rel}"})
        volumes[name] = [round(v, 3) for v in case.lesion_volumes_mm3]
        cyst_volumes[name] = [round(v, 3) for v in case.cyst_volumes_mm3]

    labels = LABELS_WITH_CYST if lesion_classes == 2 else LABELS
    synthetic: dict[str, object] = {"seed": seed, "size": size, "format": fmt, "cases": cases}
    if lesion_classes == 2:
        synthetic["lesion_classes"] = lesion_classes
    dataset: dict[str, object] = {
        "name": "LesionSAMSynthetic",
        "description": "Synthetic CT-like volumes with a liver-like organ, vessels and small irregular lesions",
        "reference": f"generated by lesionsam {__version__} (lesionsam synth, seed {seed})",
        "release": __version__,
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in labels.items()},
        "numTraining": cases,
        "numTest": 0,
        "training": training,
        "test": [],
        "lesion_volumes_mm3": volumes,
        "synthetic": synthetic,
    }
    if lesion_classes == 2:  # nothing new with the default: dataset.json stays exactly as before
        dataset["cyst_volumes_mm3"] = cyst_volumes
    atomic_write_bytes(out / "dataset.json", (json.dumps(dataset, indent=2) + "\n").encode())
    return out
