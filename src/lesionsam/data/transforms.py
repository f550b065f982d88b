"""SAM-Med3D-style preprocessing with an exact inverse, and the crop helpers for the model's cubic input.

SAM-Med3D (Wang et al., "SAM-Med3D: Towards General-purpose Segmentation Models for Volumetric Medical
Images", 2023) feeds its ViT a 128³ crop of an image that was brought to a canonical orientation, resampled to
1.5 mm isotropic voxels and z-scored. :class:`Preprocessor` does the same and, because lesionsam writes every
prediction on the input's own grid, also maps an array on the canonical grid *back* onto the original grid
(:meth:`Preprocessor.invert`) and a user's click from the original image into the canonical grid
(:meth:`Preprocessor.to_canonical_index`).

Conventions (see :mod:`lesionsam.data.io`):

* Arrays are (D, H, W) = (k, j, i), SimpleITK's NumPy order; model crops use the same axis order.
* ``spacing``/``origin``/``direction`` of a :class:`~lesionsam.data.io.Volume` are ITK's: (i, j, k) order, mm,
  LPS world coordinates, ``direction`` row-major with columns = the i, j, k axis directions.
* The canonical **orientation** is named with nibabel's / MONAI's axis codes, which give the direction each
  index axis (i, j, k) *points to* in the patient: the default ``"RAS"`` means i increases toward the patient's
  Right, j toward Anterior, k toward Superior; in ITK's LPS world that is the direction matrix diag(-1, -1, 1)
  (ITK itself would call this orientation "LPI"). As in MONAI's ``Orientation`` and torchio's ``ToCanonical``
  (what SAM-Med3D uses), reorientation only permutes and flips axes to the *closest* canonical axes: an
  oblique scan keeps its obliquity (its direction is then only approximately diag(-1, -1, 1)), which avoids an
  extra interpolation and a bounding-box-sized grid.
* The canonical **grid** has the target ``spacing`` (given in the canonical (i, j, k) order, i.e. R-L, A-P, S-I
  for "RAS"), the reoriented directions, ``ceil(extent / spacing)`` voxels per axis, and the same centre as the
  original image's physical box, so it covers every original voxel.

Why SimpleITK and not MONAI's ``Orientation``/``Spacing`` for the geometry: MONAI works on RAS affines of
MetaTensors and inverts through a transform stack that must travel with the tensor through the model. Here both
grids are explicit LPS geometries, and ``sitk.Resample`` maps every output voxel through world coordinates onto
any reference grid in one call — forward (original → canonical) and inverse (canonical → the exact original
size, spacing, origin and direction) are the same operation, with no RAS/LPS sign bookkeeping. The axis
permutation uses ``nibabel.orientations`` (the functions MONAI's ``Orientation`` uses). When the canonical grid
is only a permutation/flip of the original (``spacing=None`` or already at the target spacing) no interpolation
happens at all: the array is transposed and flipped, and the inverse is exact. Intensities are normalised with
NumPy because the statistics come from a custom foreground mask and degenerate images must raise (MONAI's
``NormalizeIntensity`` silently leaves a constant image unscaled).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import SimpleITK as sitk
from nibabel import orientations as nio
from scipy import ndimage

from lesionsam.data.io import Volume, check_intensities
from lesionsam.utils.components import label_lesions
from lesionsam.utils.options import look_up_option

logger = logging.getLogger(__name__)

MODALITIES = ("CT", "MRI")
IMAGE_INTERPOLATIONS = ("linear", "bspline")
INVERT_INTERPOLATIONS = ("nearest", "linear")

#: ITK LPS world → nibabel/MONAI RAS world (and back: it is its own inverse).
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_SITK_INTERPOLATORS = {
    "nearest": sitk.sitkNearestNeighbor,
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline,
}


@dataclass(frozen=True)
class PreprocessConfig:
    """How images are brought onto the model's canonical grid.

    Attributes:
        spacing: target voxel size in mm, in the canonical grid's (i, j, k) order (R-L, A-P, S-I for "RAS");
            None keeps the native spacing (axes only permuted/flipped, no interpolation). SAM-Med3D: 1.5 mm.
        orientation: canonical orientation as a nibabel/MONAI axis code: the patient direction each index
            axis (i, j, k) points to. "RAS" (default, as MONAI and nibabel's ``as_closest_canonical``): i → Right,
            j → Anterior, k → Superior, i.e. ITK direction diag(-1, -1, 1).
        modality: "CT" or "MRI"; decides the intensity normalisation.
        ct_clip: CT window (low, high) in HU applied before the z-score. Default (-1000, 1000), SAM-Med3D's
            clamp: air to dense bone, wide enough for lesions in any organ.
        ct_body_threshold: HU above which a CT voxel counts as "foreground of body" for the z-score
            statistics (-500 separates the patient from surrounding air, table padding and lung air).
        crop_size: side of the model's cubic input crop in canonical voxels (SAM-Med3D: 128).
        interpolation: image interpolator for resampling, "linear" or "bspline" (labels always use nearest).
    """

    spacing: tuple[float, float, float] | None = (1.5, 1.5, 1.5)
    orientation: str = "RAS"
    modality: str = "CT"
    ct_clip: tuple[float, float] = (-1000.0, 1000.0)
    ct_body_threshold: float = -500.0
    crop_size: int = 128
    interpolation: str = "linear"

    def __post_init__(self) -> None:
        look_up_option(self.modality, MODALITIES, what="modality")
        look_up_option(self.interpolation, IMAGE_INTERPOLATIONS, what="image interpolation")
        _orientation_ornt(self.orientation)
        if self.spacing is not None:
            if len(self.spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in self.spacing):
                raise ValueError(f"spacing must be three positive numbers in mm (or None), got {self.spacing}")
        if len(self.ct_clip) != 2 or not self.ct_clip[0] < self.ct_clip[1]:
            raise ValueError(f"ct_clip must be (low, high) HU with low < high, got {self.ct_clip}")
        if not isinstance(self.crop_size, int) or self.crop_size < 1:
            raise ValueError(f"crop_size must be a positive integer (voxels), got {self.crop_size!r}")


@dataclass
class Preprocessed:
    """One image (and optional label) on the canonical grid, with what is needed to go back.

    Attributes:
        image: (D, H, W) float32, normalised intensities on the canonical grid.
        label: (D, H, W) label on the canonical grid (the input label's dtype, nearest-neighbour), or None.
        grid: the canonical grid's geometry (ITK convention); ``grid.array`` is ``image``. Use
            ``grid.world_to_index`` / ``grid.index_to_world`` for LPS mm ↔ canonical (i, j, k) indices.
        source: the original grid's geometry (shape, spacing, origin, direction). Its ``array`` is a read-only
            zero-stride placeholder of the original shape and dtype (no memory held); use it as ``reference``
            for :func:`~lesionsam.data.io.write_image` or ``Volume.to_sitk(array)``.
        background: the normalised intensity of empty space (CT: the window's low end; MRI: zero); the right
            ``pad_value`` for :func:`crop_or_pad` of ``image``.
        mean: mean of the (clipped) intensities over the foreground used for the z-score (HU for CT).
        std: their standard deviation.
    """

    image: np.ndarray
    label: np.ndarray | None
    grid: Volume
    source: Volume
    background: float
    mean: float
    std: float
    #: internal: (permutation, flips) from source to canonical (i, j, k) axes, and whether resampling happened.
    _perm: tuple[int, int, int] = field(default=(0, 1, 2), repr=False)
    _flip: tuple[int, int, int] = field(default=(1, 1, 1), repr=False)
    _resampled: bool = field(default=True, repr=False)


# ---------------------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------------------


def _orientation_ornt(code: str) -> np.ndarray:
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


def _axis_transform(volume: Volume, orientation: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(perm, flip): canonical axis n is source axis perm[n] (ITK i, j, k numbering), times flip[n] (±1)."""
    start = nio.io_orientation(ras_affine(volume))
    trans = nio.ornt_transform(start, _orientation_ornt(orientation))
    perm = [0, 0, 0]
    flip = [1, 1, 1]
    for src_axis, (dst_axis, sign) in enumerate(trans):
        perm[int(dst_axis)] = src_axis
        flip[int(dst_axis)] = int(sign)
    return (perm[0], perm[1], perm[2]), (flip[0], flip[1], flip[2])


def _placeholder(shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """A read-only zero-stride array of ``shape``: keeps a Volume's shape without holding memory."""
    return np.broadcast_to(np.zeros((), dtype=dtype), tuple(shape))


def _canonical_grid(
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


def _numpy_axes(perm: tuple[int, int, int]) -> list[int]:
    """Transpose order taking a source (k, j, i) array to the canonical (k, j, i) array."""
    # New NumPy axis m holds ITK axis n = 2 - m, which is source ITK axis perm[n], i.e. source NumPy axis 2 - perm[n].
    return [2 - perm[2 - m] for m in range(3)]


def _reorient_array(array: np.ndarray, perm: tuple[int, int, int], flip: tuple[int, int, int]) -> np.ndarray:
    """Source (D, H, W) → canonical (D, H, W) by transposing and flipping only (exact)."""
    out = np.transpose(array, _numpy_axes(perm))
    flip_axes = tuple(m for m in range(3) if flip[2 - m] < 0)
    if flip_axes:
        out = np.flip(out, axis=flip_axes)
    return np.ascontiguousarray(out)


def _unreorient_array(array: np.ndarray, perm: tuple[int, int, int], flip: tuple[int, int, int]) -> np.ndarray:
    """Inverse of :func:`_reorient_array`."""
    flip_axes = tuple(m for m in range(3) if flip[2 - m] < 0)
    out = np.flip(array, axis=flip_axes) if flip_axes else array
    return np.ascontiguousarray(np.transpose(out, np.argsort(_numpy_axes(perm))))


def _sitk_ready(array: np.ndarray) -> tuple[np.ndarray, np.dtype]:
    """An array SimpleITK accepts (bool → uint8, float16 → float32) and the dtype to give back."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8), array.dtype
    if array.dtype == np.float16:
        return array.astype(np.float32), array.dtype
    return np.ascontiguousarray(array), array.dtype


def _resample(
    array: np.ndarray, src: Volume, dst: Volume, *, interpolator: str, default: float, output_float: bool
) -> np.ndarray:
    """Resample ``array`` (on ``src``'s grid) onto ``dst``'s grid through LPS world coordinates."""
    arr, dtype = _sitk_ready(array)
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


# ---------------------------------------------------------------------------------------------------------------
# Preprocessor
# ---------------------------------------------------------------------------------------------------------------


class Preprocessor:
    """Reorient, resample and normalise a volume onto the canonical grid, and map results back.

    Intensity normalisation (statistics over a foreground mask, applied to every voxel as in SAM-Med3D's
    ``ZNormalization``):

    * CT: clip to ``config.ct_clip``; foreground-of-body = canonical voxels whose clipped HU is above
      ``max(config.ct_body_threshold, ct_clip low)`` (the patient, without the air around it); z-score with the
      mean/std over those voxels.
    * MRI: z-score with the mean/std over the non-zero voxels (zero is the scanner's background; voxels below
      1e-6 of the maximum magnitude, which interpolation leaves next to zero, count as zero).

    If the foreground holds fewer than 0.1 % of the voxels the statistics fall back to all voxels (logged).

    Example:
        >>> pre = Preprocessor(PreprocessConfig(spacing=(1.5, 1.5, 1.5)))(read_image("ct.nii.gz"))
        >>> dhw = Preprocessor().to_canonical_index((120, 88, 40), pre, world=False)  # a click (i, j, k)
        >>> mask = Preprocessor().invert(canonical_mask, pre, interpolation="nearest")  # original grid
    """

    def __init__(self, config: PreprocessConfig | None = None) -> None:
        self.config = config if config is not None else PreprocessConfig()

    # -- forward -------------------------------------------------------------------------------------------------

    def __call__(self, volume: Volume, label: Volume | None = None) -> Preprocessed:
        """Bring ``volume`` (and ``label``) onto the canonical grid and normalise the intensities.

        Args:
            volume: a 3D image; ``array`` (D, H, W) in (k, j, i) order, any real dtype (CT in HU).
            label: optional label on the same grid (same shape, spacing, origin, direction), integer or bool.

        Returns:
            :class:`Preprocessed` with ``image`` (D', H', W') float32 and ``label`` (D', H', W') on the canonical
            grid (nearest neighbour, same dtype as the input label).

        Raises:
            ValueError: a multi-channel image (pick a channel with ``read_image(path, channel=c)``), NaN/inf or
                constant intensities (:class:`~lesionsam.data.io.ImageIOError`, a ValueError), a foreground
                without contrast after clipping, or a label whose geometry differs from the image's.
        """
        cfg = self.config
        if volume.array.ndim != 3:
            raise ValueError(
                f"expected a 3D image (D, H, W), got an array of shape {volume.array.shape}; for multi-channel "
                "MRI read one channel with read_image(path, channel=c)"
            )
        check_intensities(volume)
        if label is not None:
            if label.array.ndim != 3:
                raise ValueError(f"expected a 3D label (D, H, W), got an array of shape {label.array.shape}")
            diff = volume.geometry_difference(label)
            if diff:
                raise ValueError(
                    f"image and label are on different grids ({diff}); resample the label onto the image first "
                    "(e.g. with SimpleITK's Resample using the image as reference)"
                )
        perm, flip = _axis_transform(volume, cfg.orientation)
        size, spacing, origin, direction = _canonical_grid(volume, perm, flip, cfg.spacing)
        source = Volume(
            array=_placeholder(volume.spatial_shape, volume.array.dtype),
            spacing=volume.spacing,
            origin=volume.origin,
            direction=volume.direction,
        )
        d, h, w = size[2], size[1], size[0]
        grid = Volume(array=_placeholder((d, h, w), np.float32), spacing=spacing, origin=origin, direction=direction)
        resampled = not (
            tuple(size) == tuple(volume.size_ijk[p] for p in perm)
            and np.allclose(spacing, [volume.spacing[p] for p in perm], rtol=1e-6, atol=1e-6)
        )

        if cfg.modality == "CT":
            low, high = cfg.ct_clip
            image = volume.array.astype(np.float32, copy=True)
            np.clip(image, low, high, out=image)
            default = float(low)
        else:
            image = volume.array.astype(np.float32, copy=True)
            default = 0.0
        if resampled:
            interp = cfg.interpolation
            image = _resample(image, volume, grid, interpolator=interp, default=default, output_float=True)
            if cfg.modality == "CT" and interp == "bspline":
                np.clip(image, cfg.ct_clip[0], cfg.ct_clip[1], out=image)
        else:
            image = _reorient_array(image, perm, flip)
        image, mean, std = self._normalise(image)
        # Same float32 arithmetic as the image, so padded voxels equal ``background`` exactly.
        background = (np.float32(default) - np.float32(mean)) / np.float32(std)

        canon_label = None
        if label is not None:
            if resampled:
                canon_label = _resample(
                    label.array, volume, grid, interpolator="nearest", default=0, output_float=False
                )
            else:
                canon_label = _reorient_array(label.array, perm, flip)
        return Preprocessed(
            image=image,
            label=canon_label,
            grid=grid.with_array(image),
            source=source,
            background=float(background),
            mean=float(mean),
            std=float(std),
            _perm=perm,
            _flip=flip,
            _resampled=resampled,
        )

    def _normalise(self, image: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Z-score ``image`` in place with foreground statistics; returns (image, mean, std)."""
        cfg = self.config
        if cfg.modality == "CT":
            mask = image > max(cfg.ct_body_threshold, cfg.ct_clip[0])
            what = f"voxels above {max(cfg.ct_body_threshold, cfg.ct_clip[0])} HU"
        else:
            # Non-zero, ignoring the ~1e-28 residues that interpolating next to zero leaves behind.
            mask = np.abs(image) > 1e-6 * float(np.abs(image).max())
            what = "non-zero voxels"
        if mask.sum() < max(2, 0.001 * image.size):
            logger.warning("only %d %s: normalising with statistics over all voxels", int(mask.sum()), what)
            values = image.ravel()
        else:
            values = image[mask]
        mean = float(np.mean(values, dtype=np.float64))
        std = float(np.std(values, dtype=np.float64))
        if not (math.isfinite(std) and std > 1e-6 * max(1.0, abs(mean))):
            hint = f" (CT window {cfg.ct_clip} HU: is this image in HU?)" if cfg.modality == "CT" else ""
            raise ValueError(
                f"the image's foreground ({what}) has no contrast (mean {mean:.4g}, std {std:.4g}) after "
                f"preprocessing{hint}; nothing to segment"
            )
        image -= np.float32(mean)
        image /= np.float32(std)
        return image, mean, std

    # -- inverse -------------------------------------------------------------------------------------------------

    def invert(
        self,
        array: np.ndarray,
        pre: Preprocessed,
        *,
        interpolation: Literal["nearest", "linear"] = "nearest",
    ) -> np.ndarray:
        """Map an array on the canonical grid back onto the original image's grid.

        Args:
            array: (D', H', W') or (C, D', H', W') on ``pre.grid`` (e.g. a predicted mask or probabilities).
            pre: the :class:`Preprocessed` the array belongs to.
            interpolation: "nearest" for masks/labels (keeps the dtype; bool is kept), "linear" for
                probabilities or logits (float32 output; threshold afterwards).

        Returns:
            (D, H, W) or (C, D, H, W) with exactly ``pre.source.spatial_shape``; write it with
            ``write_image(out, path, reference=pre.source)`` to get the input's own geometry. Voxels of the
            original grid outside the canonical one (none with the default grid) get 0.

        Raises:
            ValueError: the array is not on ``pre``'s canonical grid, or an unknown interpolation.
        """
        look_up_option(interpolation, INVERT_INTERPOLATIONS, what="interpolation")
        if array.ndim not in (3, 4) or tuple(array.shape[-3:]) != pre.grid.spatial_shape:
            raise ValueError(
                f"array of shape {array.shape} is not on the canonical grid {pre.grid.spatial_shape} "
                "(expected (D, H, W) or (C, D, H, W))"
            )
        if array.ndim == 4:
            return np.stack([self.invert(a, pre, interpolation=interpolation) for a in array])
        if not pre._resampled:
            out = _unreorient_array(array, pre._perm, pre._flip)
            return out.astype(np.float32) if interpolation == "linear" else out
        return _resample(
            array, pre.grid, pre.source, interpolator=interpolation, default=0, output_float=interpolation == "linear"
        )

    # -- clicks ----------------------------------------------------------------------------------------------------

    def to_canonical_index(
        self, ijk_or_world: np.ndarray | Sequence[float], pre: Preprocessed, *, world: bool
    ) -> np.ndarray:
        """Map click(s) from the original image into the canonical grid.

        Args:
            ijk_or_world: (3,) or (N, 3); an ITK voxel index (i, j, k) of the ORIGINAL image (what 3D Slicer
                shows as IJK) or, with ``world=True``, an LPS position in mm.
            pre: the :class:`Preprocessed` of that image.
            world: whether the input is LPS mm (True) or an original (i, j, k) index (False).

        Returns:
            float64 (3,) or (N, 3): continuous (d, h, w) index on ``pre.grid`` (NumPy order, round to index
            ``pre.image``).
        """
        pts = np.asarray(ijk_or_world, dtype=float)
        if pts.shape[-1] != 3 or pts.ndim not in (1, 2):
            raise ValueError(f"expected a point (3,) or points (N, 3), got shape {pts.shape}")
        xyz = pts if world else pre.source.index_to_world(pts)
        return pre.grid.world_to_index(xyz)[..., ::-1].copy()

    def from_canonical_index(self, dhw: np.ndarray | Sequence[float], pre: Preprocessed, *, world: bool) -> np.ndarray:
        """Inverse of :meth:`to_canonical_index`: canonical (d, h, w) → original (i, j, k) index or LPS mm.

        Args:
            dhw: (3,) or (N, 3) continuous index on ``pre.grid`` in (d, h, w) order.
            pre: the :class:`Preprocessed` of the image.
            world: return LPS mm (True) or a continuous ITK (i, j, k) index of the original image (False).

        Returns:
            float64 (3,) or (N, 3).
        """
        pts = np.asarray(dhw, dtype=float)
        if pts.shape[-1] != 3 or pts.ndim not in (1, 2):
            raise ValueError(f"expected a point (3,) or points (N, 3), got shape {pts.shape}")
        xyz = pre.grid.index_to_world(pts[..., ::-1])
        return xyz if world else pre.source.world_to_index(xyz)


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


def _as_size3(size: int | Sequence[int]) -> tuple[int, int, int]:
    sizes = (size, size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(sizes) != 3 or not all(int(s) == s and s > 0 for s in sizes):
        raise ValueError(f"crop size must be a positive integer or three of them, got {size!r}")
    return tuple(int(s) for s in sizes)  # type: ignore[return-value]


def crop_box(
    center_dhw: np.ndarray | Sequence[float], size: int | Sequence[int], volume_shape: Sequence[int]
) -> CropBox:
    """The :class:`CropBox` of side ``size`` centred on ``center_dhw`` (rounded; crop index size // 2)."""
    sizes = _as_size3(size)
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
    sizes = _as_size3(size)
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
