"""Mapping a sub-box of the canonical grid back onto the input's grid, without touching the rest of the volume.

:meth:`~lesionsam.data.transforms.Preprocessor.invert` resamples a whole canonical array onto the whole input
grid. An interactive session changes one lesion at a time, so it resamples only the lesion's canonical sub-box onto
the input voxels it can reach (:func:`invert_region`). SimpleITK's linear and nearest interpolators read at most the
two neighbours of a point per axis, so on the input voxels whose neighbours all lie in the sub-box the values equal
those of a whole-volume inversion. :func:`~lesionsam.inference.windows.lesion_probability` makes the sub-box the
voxels above the threshold plus a margin of two voxels: every input voxel that a whole-volume inversion would put
above the threshold then gets exactly the same value (the others stay at or below it either way).
"""

from __future__ import annotations

import numpy as np

from lesionsam.data.io import Volume
from lesionsam.data.transforms import Preprocessed, _placeholder, _resample, _unreorient_array

Slices3 = tuple[slice, slice, slice]


def source_region(pre: Preprocessed, region: Slices3) -> Slices3:
    """The (D, H, W) slices of the input grid whose voxels a canonical sub-box ``region`` can reach (by its
    corners, mapped through world coordinates; one voxel of margin when the grid was resampled)."""
    lo = np.array([s.start for s in region], dtype=float)
    hi = np.array([s.stop for s in region], dtype=float) - 1.0
    if np.any(hi < lo):
        return (slice(0, 0),) * 3  # type: ignore[return-value]
    corners_dhw = np.array(
        [[(lo, hi)[a][0], (lo, hi)[b][1], (lo, hi)[c][2]] for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    )
    ijk = pre.source.world_to_index(pre.grid.index_to_world(corners_dhw[:, ::-1]))
    dhw = ijk[:, ::-1]
    shape = np.asarray(pre.source.spatial_shape)
    if pre._resampled:
        start = np.floor(dhw.min(axis=0)).astype(int) - 1
        stop = np.ceil(dhw.max(axis=0)).astype(int) + 2
    else:
        start = np.rint(dhw.min(axis=0)).astype(int)
        stop = np.rint(dhw.max(axis=0)).astype(int) + 1
    start = np.clip(start, 0, shape)
    stop = np.clip(stop, start, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))  # type: ignore[return-value]


def invert_region(
    array: np.ndarray, region: Slices3, pre: Preprocessed, *, interpolation: str
) -> tuple[Slices3, np.ndarray]:
    """Map ``array`` (the values of canonical sub-box ``region``; zero elsewhere) onto the input grid.

    Args:
        array: (d, h, w) values on ``pre.grid[region]``.
        region: (D, H, W) slices of the canonical grid.
        pre: the image's :class:`~lesionsam.data.transforms.Preprocessed`.
        interpolation: "linear" (float32 out) or "nearest" (dtype kept).

    Returns:
        (slices of the input grid, the values there): equal, on those slices, to
        ``Preprocessor.invert(full)`` where ``full`` is ``array`` pasted into zeros; zero outside them.
    """
    if tuple(array.shape) != tuple(s.stop - s.start for s in region):
        raise ValueError(f"array of shape {array.shape} does not match the region {region}")
    out_region = source_region(pre, region)
    out_shape = tuple(s.stop - s.start for s in out_region)
    if 0 in out_shape or 0 in array.shape:
        dtype = np.float32 if interpolation == "linear" else array.dtype
        return out_region, np.zeros(out_shape, dtype=dtype)
    if not pre._resampled:
        out = _unreorient_array(array, pre._perm, pre._flip)
        if tuple(out.shape) != out_shape:  # pragma: no cover - a permutation maps boxes onto boxes
            raise RuntimeError(f"region {region} maps onto {out.shape}, expected {out_shape}")
        return out_region, out.astype(np.float32) if interpolation == "linear" else out
    lo_ijk = np.array([s.start for s in region], dtype=float)[::-1]
    src = Volume(
        array=array,
        spacing=pre.grid.spacing,
        origin=tuple(float(v) for v in pre.grid.index_to_world(lo_ijk)),  # type: ignore[arg-type]
        direction=pre.grid.direction,
    )
    out_lo_ijk = np.array([s.start for s in out_region], dtype=float)[::-1]
    dst = Volume(
        array=_placeholder(out_shape, array.dtype),
        spacing=pre.source.spacing,
        origin=tuple(float(v) for v in pre.source.index_to_world(out_lo_ijk)),  # type: ignore[arg-type]
        direction=pre.source.direction,
    )
    values = _resample(array, src, dst, interpolator=interpolation, default=0, output_float=interpolation == "linear")
    return out_region, values
