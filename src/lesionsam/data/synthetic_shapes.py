"""Shapes of the synthetic CT data set: smooth random fields, ellipsoids, irregular lesions and their placement inside
the organ (tumours by target volume, cysts apart from them)."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

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
#: Largest relative deviation of a cyst's semi-axes from a sphere (log-normal sd).
CYST_ASPECT_SD = 0.08
_PLACEMENT_ROUNDS = 16


# ---------------------------------------------------------------------------------------------- smooth fields
def _axis_kernel(n: int, extent_mm: float, corr_mm: float) -> np.ndarray:
    """(n, m) Gaussian interpolation weights from m coarse nodes (spaced ``corr_mm``) to n voxel centres."""
    m = max(int(math.ceil(extent_mm / corr_mm)) + 3, 3)
    nodes = (np.arange(m) - 1.0) * corr_mm  # one node beyond each end
    centres = (np.arange(n) + 0.5) * (extent_mm / n)
    return np.exp(-0.5 * ((centres[:, None] - nodes[None, :]) / (0.7 * corr_mm)) ** 2).astype(np.float32)


def smooth_fields(
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


def mm_grid(shape: tuple[int, int, int], spacing_kji: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Open (broadcastable) float32 grids of voxel-centre positions in mm along (D, H, W), 0 at the centre."""
    d, h, w = (
        (np.arange(n, dtype=np.float32) - np.float32((n - 1) / 2.0)) * np.float32(s)
        for n, s in zip(shape, spacing_kji, strict=True)
    )
    return d[:, None, None], h[None, :, None], w[None, None, :]


def ellipsoid_mask(grid: tuple[np.ndarray, ...], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Squared normalised radius ``sum(((x - c) / r)²)`` over the (D, H, W) grid; < 1 inside the ellipsoid."""
    c = centre.astype(np.float32)
    r = np.maximum(radii, 1e-3).astype(np.float32)
    return ((grid[0] - c[0]) / r[0]) ** 2 + ((grid[1] - c[1]) / r[1]) ** 2 + ((grid[2] - c[2]) / r[2]) ** 2


def largest_component(mask: np.ndarray) -> np.ndarray:
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
    noise = smooth_fields(rng, 1, rho.shape, spacing_kji, corr_mm)[0]
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


def place_lesions(
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
                mask = largest_component(mask)
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


def place_cysts(
    rng: np.random.Generator, organ: np.ndarray, tumours: np.ndarray, n_cysts: int, spacing_kji: np.ndarray
) -> list[tuple[tuple[slice, ...], np.ndarray]]:
    """Up to ``n_cysts`` round, non-touching cysts inside ``organ``, away from ``tumours`` (both (D, H, W) bool).

    Sizes are stratified log-uniform over the tumours' range; a cyst that does not fit is shrunk, and skipped
    (with the rest) when no cyst of at least :data:`LESION_KEEP_MIN_VOXELS` voxels fits any more.

    Returns:
        One ``(slices, mask)`` per cyst, as :func:`place_lesions`: each mask one connected component, at least
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
        mask = largest_component(mask)
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
