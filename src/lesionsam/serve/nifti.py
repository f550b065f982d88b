"""Volumes and label maps as NIfTI-1 bytes for the viewer (nibabel), on the input's exact grid.

The voxel order is NIfTI's: ``i`` fastest, so the file's voxel ``(i, j, k)`` is the input's ITK index ``(i, j, k)``
and a label patch sent as (D, H, W) = (k, j, i) C-order bytes has the same layout as the file's data. The affine
is ITK's geometry turned from LPS to RAS (NIfTI's world): ``x_ras = F · (origin + direction · diag(spacing) · ijk)``
with ``F = diag(-1, -1, 1)``; sform and qform both carry it (code 1, scanner).
"""

from __future__ import annotations

import numpy as np

from lesionsam.data.io import Volume

#: Pixel types the viewer receives as they are; anything else is sent as float32.
_KEPT_DTYPES = (np.uint8, np.int16, np.uint16, np.int32, np.float32)

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def ras_affine(volume: Volume) -> np.ndarray:
    """The 4×4 NIfTI affine (voxel ``(i, j, k, 1)`` → RAS mm) of ``volume``'s ITK geometry."""
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ volume.direction_matrix @ np.diag(volume.spacing)
    affine[:3, 3] = _LPS_TO_RAS @ np.asarray(volume.origin, dtype=float)
    return affine


def nifti_bytes(volume: Volume, array: np.ndarray | None = None, *, label: bool = False) -> bytes:
    """An uncompressed ``.nii`` file of ``array`` (default ``volume.array``) with ``volume``'s geometry.

    Args:
        volume: the geometry (and the default data); a multi-channel volume sends its first channel.
        array: (D, H, W) = (k, j, i) data on ``volume``'s grid.
        label: a label map: stored as uint16 with the NIfTI label intent.

    Returns:
        The bytes of a NIfTI-1 single file (header + data, i fastest).
    """
    import nibabel as nib

    data = volume.array if array is None else array
    if data.ndim == 4:
        data = data[0]
    if tuple(data.shape) != volume.spatial_shape:
        raise ValueError(f"array shape {data.shape} does not match the volume's {volume.spatial_shape}")
    if label:
        data = data.astype(np.uint16, copy=False)
    elif data.dtype.type not in _KEPT_DTYPES:
        data = data.astype(np.float32)
    affine = ras_affine(volume)
    image = nib.Nifti1Image(data.transpose(2, 1, 0), affine)  # an F-ordered view: written without a copy
    image.header.set_sform(affine, code=1)
    image.header.set_qform(affine, code=1)
    image.header.set_xyzt_units("mm")
    if label:
        image.header.set_intent("label")
    else:
        sample = data[:: max(1, data.shape[0] // 32)]  # display window: 0.5-99.5th percentile of every few slices
        lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
        image.header["cal_min"], image.header["cal_max"] = lo, hi if hi > lo else lo + 1.0
    return image.to_bytes()
