"""Volume geometry: orientation codes, the RAS affine, the canonical (RAS-reoriented, resampled) grid, reorienting
arrays and resampling with SimpleITK."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from nibabel import orientations as nio

from lesionsam.data.io import Volume

#: ITK LPS world → nibabel/MONAI RAS world (and back: it is its own inverse).
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_SITK_INTERPOLATORS = {
    "nearest": sitk.sitkNearestNeighbor,
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline,
}


# ---------------------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------------------


def orientation_ornt(code: str) -> np.ndarray:
    """nibabel orientation array for a 3-letter axis code; ValueError if the code is not one."""
    if not isinstance(code, str) or len(code) != 3:
        raise ValueError(f"orientation must be a 3-letter axis code such as 'RAS' or 'LPS', got {code!r}")
    pairs = ("RL", "AP", "SI")
    axes = sorted(next((n for n, pair in enumerate(pairs) if c in pair), -1) for c in code.upper())
    if axes != [0, 1, 2]:
        raise ValueError(
            f"orientation {code!r} is not a valid axis code: use one letter from each of R/L, A/P, S/I (e.g. 'RAS')"
        )
    return nio.axcodes2ornt(tuple(code.upper()))


def ras_affine(volume: Volume) -> np.ndarray:
    """The 4×4 nibabel/MONAI (RAS world) voxel-to-world affine of ``volume`` (index order i, j, k)."""
    aff = np.eye(4)
    aff[:3, :3] = _LPS_TO_RAS @ volume.direction_matrix @ np.diag(volume.spacing)
    aff[:3, 3] = _LPS_TO_RAS @ np.asarray(volume.origin, dtype=float)
    return aff


def orientation_code(volume: Volume) -> str:
    """The nibabel/MONAI axis code of ``volume``'s closest orientation, e.g. "RAS" or "LPS"."""
    return "".join(nio.aff2axcodes(ras_affine(volume)))


def axis_transform(volume: Volume, orientation: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(perm, flip): canonical axis n is source axis perm[n] (ITK i, j, k numbering), times flip[n] (±1)."""
    start = nio.io_orientation(ras_affine(volume))
    trans = nio.ornt_transform(start, orientation_ornt(orientation))
    perm = [0, 0, 0]
    flip = [1, 1, 1]
    for src_axis, (dst_axis, sign) in enumerate(trans):
        perm[int(dst_axis)] = src_axis
        flip[int(dst_axis)] = int(sign)
    return (perm[0], perm[1], perm[2]), (flip[0], flip[1], flip[2])


def placeholder(shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """A read-only zero-stride array of ``shape``: keeps a Volume's shape without holding memory."""
    return np.broadcast_to(np.zeros((), dtype=dtype), tuple(shape))


def canonical_grid(
    source: Volume, perm: tuple[int, int, int], flip: tuple[int, int, int], spacing: tuple[float, float, float] | None
) -> tuple[tuple[int, int, int], tuple[float, float, float], tuple[float, float, float], tuple[float, ...]]:
    """Size (i, j, k), spacing, origin and direction of the canonical grid for ``source``."""
    src_size = np.asarray(source.size_ijk, dtype=float)
    src_spacing = np.asarray(source.spacing, dtype=float)
    src_dir = source.direction_matrix
    direction = np.stack([flip[n] * src_dir[:, perm[n]] for n in range(3)], axis=1)
    perm_size = src_size[list(perm)]
    perm_spacing = src_spacing[list(perm)]
    new_spacing = perm_spacing if spacing is None else np.asarray(spacing, dtype=float)
    extent = perm_size * perm_spacing
    # ceil so that the canonical box covers the original one; the small tolerance keeps exact multiples exact.
    new_size = np.maximum(1, np.ceil(extent / new_spacing - 1e-6)).astype(int)
    centre = source.index_to_world((src_size - 1.0) / 2.0)
    origin = centre - direction @ (new_spacing * (new_size - 1) / 2.0)
    return (
        tuple(int(v) for v in new_size),  # type: ignore[return-value]
        tuple(float(v) for v in new_spacing),  # type: ignore[return-value]
        tuple(float(v) for v in origin),  # type: ignore[return-value]
        tuple(float(v) for v in direction.ravel()),
    )


def numpy_axes(perm: tuple[int, int, int]) -> list[int]:
    """Transpose order taking a source (k, j, i) array to the canonical (k, j, i) array."""
    # New NumPy axis m holds ITK axis n = 2 - m, which is source ITK axis perm[n], i.e. source NumPy axis 2 - perm[n].
    return [2 - perm[2 - m] for m in range(3)]


def reorient_array(array: np.ndarray, perm: tuple[int, int, int], flip: tuple[int, int, int]) -> np.ndarray:
    """Source (D, H, W) → canonical (D, H, W) by transposing and flipping only (exact)."""
    out = np.transpose(array, numpy_axes(perm))
    flip_axes = tuple(m for m in range(3) if flip[2 - m] < 0)
    if flip_axes:
        out = np.flip(out, axis=flip_axes)
    return np.ascontiguousarray(out)


def unreorient_array(array: np.ndarray, perm: tuple[int, int, int], flip: tuple[int, int, int]) -> np.ndarray:
    """Inverse of :func:`reorient_array`."""
    flip_axes = tuple(m for m in range(3) if flip[2 - m] < 0)
    out = np.flip(array, axis=flip_axes) if flip_axes else array
    return np.ascontiguousarray(np.transpose(out, np.argsort(numpy_axes(perm))))


def sitk_ready(array: np.ndarray) -> tuple[np.ndarray, np.dtype]:
    """An array SimpleITK accepts (bool → uint8, float16 → float32) and the dtype to give back."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8), array.dtype
    if array.dtype == np.float16:
        return array.astype(np.float32), array.dtype
    return np.ascontiguousarray(array), array.dtype


def resample(
    array: np.ndarray, src: Volume, dst: Volume, *, interpolator: str, default: float, output_float: bool
) -> np.ndarray:
    """Resample ``array`` (on ``src``'s grid) onto ``dst``'s grid through LPS world coordinates."""
    arr, dtype = sitk_ready(array)
    if output_float and arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    img = src.to_sitk(arr)
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(v) for v in dst.size_ijk])
    resampler.SetOutputSpacing(tuple(float(v) for v in dst.spacing))
    resampler.SetOutputOrigin(tuple(float(v) for v in dst.origin))
    resampler.SetOutputDirection(tuple(float(v) for v in dst.direction))
    resampler.SetInterpolator(_SITK_INTERPOLATORS[interpolator])
    resampler.SetDefaultPixelValue(float(default))
    resampler.SetOutputPixelType(img.GetPixelID())
    result = sitk.GetArrayFromImage(resampler.Execute(img))
    if not output_float and result.dtype != dtype:
        result = result.astype(dtype)
    return result
