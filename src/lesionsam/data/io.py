"""Reading and writing volumes with their geometry (SimpleITK: NIfTI, NRRD, MHA/MHD, DICOM series, ...).

Conventions used throughout lesionsam:

* ``Volume.array`` is in SimpleITK's NumPy order ``(k, j, i)`` = ``(D, H, W)``: the *last* axis is the
  image's first (fastest-varying on disk) axis ``i``. Model tensors use the same (D, H, W) order.
* ``spacing``, ``origin`` and ``direction`` are ITK's: in ``(i, j, k)`` order, millimetres, LPS world
  coordinates; ``direction`` is the row-major 3×3 matrix whose *columns* are the i, j, k axis directions.
* A voxel index given by a user (``--point i,j,k``) is in ITK order (what 3D Slicer shows as IJK).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lesionsam.utils.dataclass_io import make_temp_beside

#: File endings SimpleITK reads that lesionsam treats as images (a folder is read as a DICOM series).
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".tif", ".tiff")


class ImageIOError(ValueError):
    """An image that cannot be read, written or used; the message says which file and why."""


@dataclass(frozen=True)
class Volume:
    """A 3D image (or channels of one) with its physical geometry.

    Attributes:
        array: (D, H, W) or (C, D, H, W) NumPy array, axes (k, j, i).
        spacing: voxel size (i, j, k) in mm.
        origin: world position (LPS, mm) of voxel (0, 0, 0).
        direction: 9 floats, row-major 3×3; column n is the world direction of index axis n (i, j, k).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """(D, H, W) = (nk, nj, ni)."""
        return tuple(int(s) for s in self.array.shape[-3:])  # type: ignore[return-value]

    @property
    def size_ijk(self) -> tuple[int, int, int]:
        """(ni, nj, nk), ITK's size."""
        d, h, w = self.spatial_shape
        return (w, h, d)

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def with_array(self, array: np.ndarray) -> Volume:
        """The same geometry with another array of the same spatial shape."""
        if tuple(array.shape[-3:]) != self.spatial_shape:
            raise ValueError(f"array shape {array.shape} does not match the volume's {self.spatial_shape}")
        return replace(self, array=array)

    def index_to_world(self, ijk: np.ndarray | tuple[float, float, float]) -> np.ndarray:
        """Continuous index (…, 3) in (i, j, k) order → LPS mm (…, 3)."""
        ijk = np.asarray(ijk, dtype=float)
        return np.asarray(self.origin) + (ijk * np.asarray(self.spacing)) @ self.direction_matrix.T

    def world_to_index(self, xyz: np.ndarray | tuple[float, float, float]) -> np.ndarray:
        """LPS mm (…, 3) → continuous index (…, 3) in (i, j, k) order."""
        xyz = np.asarray(xyz, dtype=float) - np.asarray(self.origin)
        return (xyz @ np.linalg.inv(self.direction_matrix).T) / np.asarray(self.spacing)

    def same_geometry(self, other: Volume, *, atol: float = 1e-3) -> bool:
        """True if spatial shape, spacing, origin and direction agree (``atol`` in mm / cosines)."""
        return (
            self.spatial_shape == other.spatial_shape
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )

    def geometry_difference(self, other: Volume, *, atol: float = 1e-3) -> str:
        """A short description of the first geometric difference ('' if none)."""
        for name in ("spatial_shape", "spacing", "origin", "direction"):
            a, b = getattr(self, name), getattr(other, name)
            if name == "spatial_shape":
                if a != b:
                    return f"size {self.size_ijk} vs {other.size_ijk}"
            elif not np.allclose(a, b, atol=atol):
                return f"{name} {tuple(round(float(v), 4) for v in a)} vs {tuple(round(float(v), 4) for v in b)}"
        return ""

    def to_sitk(self, array: np.ndarray | None = None) -> sitk.Image:
        """A SimpleITK image of ``array`` (default: this volume's, first channel if several) with this geometry."""
        arr = self.array if array is None else array
        if arr.ndim == 4:
            arr = arr[0]
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
        img.SetSpacing(tuple(float(v) for v in self.spacing))
        img.SetOrigin(tuple(float(v) for v in self.origin))
        img.SetDirection(tuple(float(v) for v in self.direction))
        return img

    @classmethod
    def from_sitk(cls, img: sitk.Image) -> Volume:
        """A volume from a 3D SimpleITK image (vector pixels become channels first)."""
        arr = sitk.GetArrayFromImage(img)
        if img.GetNumberOfComponentsPerPixel() > 1:
            arr = np.moveaxis(arr, -1, 0)
        return cls(
            array=arr,
            spacing=tuple(float(v) for v in img.GetSpacing()),  # type: ignore[arg-type]
            origin=tuple(float(v) for v in img.GetOrigin()),  # type: ignore[arg-type]
            direction=tuple(float(v) for v in img.GetDirection()),
        )


def _read_sitk(path: Path) -> sitk.Image:
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        series = reader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise ImageIOError(f"{path}: a folder, but no DICOM series found in it")
        files = reader.GetGDCMSeriesFileNames(str(path), series[0])
        reader.SetFileNames(files)
        return reader.Execute()
    return sitk.ReadImage(str(path))


def check_nifti_complete(path: Path) -> None:
    """Raise :class:`ImageIOError` if a ``.nii``/``.nii.gz`` file holds less voxel data than its header says.

    SimpleITK fills a truncated file's missing voxels with zeros without a word; the header (nibabel) gives the
    shape, data type and data offset, so the expected length is ``vox_offset + prod(shape) * itemsize``. A
    ``.nii.gz`` is decompressed to its end once (a cut gzip stream has no end-of-stream marker).
    """
    name = path.name.lower()
    if not path.is_file() or not name.endswith((".nii", ".nii.gz")):
        return
    import nibabel as nib

    try:
        header = nib.load(str(path)).header
        shape = tuple(int(v) for v in header.get_data_shape())
        offset = max(int(header.get_data_offset()), int(header.sizeof_hdr) + 4)  # 0 means "right after the header"
        expected = offset + int(np.prod(shape)) * header.get_data_dtype().itemsize
    except Exception:  # noqa: BLE001 - an unreadable header: SimpleITK's own error says more
        return
    if name.endswith(".gz"):
        from lesionsam.utils.filetype import gzip_is_complete

        length = gzip_is_complete(path)
        if length is None:
            raise ImageIOError(
                f"{path}: truncated (the gzip stream ends early; the header announces {shape} voxels): "
                "copy or download the file again"
            )
    else:
        length = path.stat().st_size
    if length < expected:
        raise ImageIOError(
            f"{path}: truncated: {length:,} bytes where the header ({shape}, "
            f"{header.get_data_dtype()}) needs {expected:,}; copy or download the file again"
        )


def check_image_header(path: str | os.PathLike[str]) -> None:
    """Cheap check that ``path`` will read (before any output is written): it exists, a NIfTI is complete, and
    SimpleITK can read its header (pixel data is not read, except that a ``.nii.gz`` is decompressed once).

    Raises:
        FileNotFoundError, ImageIOError: as :func:`read_image` would.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"image not found: {p}")
    check_nifti_complete(p)
    if p.is_dir():
        return
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "unknown error")
        raise ImageIOError(f"{p}: not a readable image (corrupt, truncated or unsupported format): {first}") from None


def read_image(path: str | os.PathLike[str], *, channel: int | None = None) -> Volume:
    """Read a 3D image (file or DICOM-series folder) with its geometry.

    Args:
        path: NIfTI, NRRD, MHA/MHD, ... file, or a folder holding one DICOM series.
        channel: for a multi-channel image (4D NIfTI, vector NRRD), the channel to keep; None keeps all
            channels as (C, D, H, W).

    Raises:
        FileNotFoundError: the path does not exist.
        ImageIOError: unreadable or corrupt file, a 2D image, or a channel that does not exist.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"image not found: {p}")
    check_nifti_complete(p)
    try:
        img = _read_sitk(p)
    except RuntimeError as exc:
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "unknown error")
        raise ImageIOError(f"{p}: not a readable image (corrupt, truncated or unsupported format): {first}") from None
    dim = img.GetDimension()
    if dim == 4:
        # 4D NIfTI (e.g. MSD multi-modal MRI): the 4th axis is the channel.
        size = img.GetSize()
        channels = [sitk.Extract(img, (*size[:3], 0), (0, 0, 0, t)) for t in range(size[3])]
        vols = [Volume.from_sitk(c) for c in channels]
        vol = replace(vols[0], array=np.stack([v.array for v in vols]))
    elif dim == 3:
        vol = Volume.from_sitk(img)
    else:
        raise ImageIOError(f"{p}: a {dim}D image; lesionsam segments 3D volumes (give the whole scan, not one slice)")
    if min(vol.spatial_shape) < 2:
        raise ImageIOError(f"{p}: size {vol.size_ijk} is a single slice; lesionsam segments 3D volumes")
    if vol.array.ndim == 4 and channel is not None:
        if not 0 <= channel < vol.array.shape[0]:
            raise ImageIOError(f"{p}: channel {channel} requested but the image has {vol.array.shape[0]} channel(s)")
        vol = replace(vol, array=vol.array[channel])
    elif vol.array.ndim == 3 and channel not in (None, 0):
        raise ImageIOError(f"{p}: channel {channel} requested but the image has a single channel")
    return vol


def image_suffix(path: str | os.PathLike[str]) -> str:
    """The image ending of a file name (``.nii.gz`` for ``a.nii.gz``), or its last suffix if none is known."""
    p = Path(path)
    name = p.name.lower()
    for suf in IMAGE_SUFFIXES:
        if name.endswith(suf):
            return suf
    return p.suffix


def case_id(path: str | os.PathLike[str]) -> str:
    """The file name without its image ending (``liver_3.nii.gz`` → ``liver_3``): how cases are paired."""
    name = Path(path).name
    suffix = image_suffix(name)
    return name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else Path(name).stem


def write_image(array: np.ndarray, path: str | os.PathLike[str], *, reference: Volume, compress: bool = True) -> Path:
    """Write ``array`` (D, H, W) with ``reference``'s exact geometry, atomically (temp file + rename).

    Raises:
        ImageIOError: the array does not match the reference grid, or the path cannot be written.
    """
    return write_images([(array, path)], reference=reference, compress=compress)[0]


def write_images(
    items: Sequence[tuple[np.ndarray, str | os.PathLike[str]]], *, reference: Volume, compress: bool = True
) -> list[Path]:
    """Write several (D, H, W) arrays on ``reference``'s exact grid, all or none: every array goes to a temp file
    beside its path first, and only when all were written are they renamed into place (a mask is never left behind
    when its probabilities cannot be written).

    Raises:
        ImageIOError: an array does not match the reference grid, or a path cannot be written (nothing is renamed).
    """
    paths = [Path(path) for _, path in items]
    for (array, _), p in zip(items, paths, strict=True):
        if tuple(array.shape) != reference.spatial_shape:
            raise ImageIOError(
                f"{p}: array shape {array.shape} does not match the reference grid {reference.spatial_shape}"
            )
        if image_suffix(p) not in IMAGE_SUFFIXES:
            raise ImageIOError(f"{p}: unknown image file ending; use one of {', '.join(IMAGE_SUFFIXES[:5])}")
    temps: list[str] = []
    try:
        for (array, _), p in zip(items, paths, strict=True):
            temps.append(_write_temp(array, p, reference, compress))
        for tmp, p in zip(temps, paths, strict=True):
            os.replace(tmp, p)
    except BaseException:
        for tmp in temps:
            Path(tmp).unlink(missing_ok=True)
        raise
    return paths


def _write_temp(array: np.ndarray, p: Path, reference: Volume, compress: bool) -> str:
    """``array`` written to a new temp file beside ``p`` (its name returned); nothing is left on failure."""
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_beside(p, image_suffix(p))
    except OSError as exc:
        raise ImageIOError(f"{p}: cannot write here ({exc.strerror or exc})") from None
    try:
        sitk.WriteImage(reference.to_sitk(array), tmp, compress)
    except (RuntimeError, OSError) as exc:
        Path(tmp).unlink(missing_ok=True)
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "unknown error")
        raise ImageIOError(f"{p}: could not write the image: {first}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def check_intensities(volume: Volume, *, source: str = "image") -> None:
    """Raise :class:`ImageIOError` for NaN/inf voxels or a constant image (nothing to segment)."""
    arr = volume.array
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ImageIOError(f"{source}: {bad} voxel(s) are NaN or infinite; fix or mask them before segmenting")
    if arr.size and arr.min() == arr.max():
        raise ImageIOError(f"{source}: the image is constant (every voxel = {arr.flat[0]}); nothing to segment")


def is_image_path(path: Path) -> bool:
    """True for files with a known image ending."""
    return path.is_file() and image_suffix(path) in IMAGE_SUFFIXES and not path.name.startswith(".")
