"""SAM-Med3D-style preprocessing with an exact inverse (the geometry helpers are in :mod:`lesionsam.data.geometry`,
the crop windows in :mod:`lesionsam.data.crops`).

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

from lesionsam.data.geometry import (
    axis_transform,
    canonical_grid,
    orientation_ornt,
    placeholder,
    reorient_array,
    resample,
    unreorient_array,
)
from lesionsam.data.io import Volume, check_intensities
from lesionsam.utils.options import look_up_option

logger = logging.getLogger(__name__)

MODALITIES = ("CT", "MRI")
IMAGE_INTERPOLATIONS = ("linear", "bspline")
INVERT_INTERPOLATIONS = ("nearest", "linear")


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
        orientation_ornt(self.orientation)
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
    #: the input image itself, kept by :meth:`Predictor.prepare <lesionsam.inference.predictor.Predictor.prepare>`
    #: for zoomed views of small lesions (:mod:`lesionsam.inference.zoom`); None elsewhere (e.g. training).
    raw: Volume | None = field(default=None, repr=False, compare=False)


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
        perm, flip = axis_transform(volume, cfg.orientation)
        size, spacing, origin, direction = canonical_grid(volume, perm, flip, cfg.spacing)
        source = Volume(
            array=placeholder(volume.spatial_shape, volume.array.dtype),
            spacing=volume.spacing,
            origin=volume.origin,
            direction=volume.direction,
        )
        d, h, w = size[2], size[1], size[0]
        grid = Volume(array=placeholder((d, h, w), np.float32), spacing=spacing, origin=origin, direction=direction)
        resampled = not (
            tuple(size) == tuple(volume.size_ijk[p] for p in perm)
            and np.allclose(spacing, [volume.spacing[p] for p in perm], rtol=1e-6, atol=1e-6)
        )

        image, default = self._intensities(volume)
        if resampled:
            image = self._resample(image, volume, grid, default)
        else:
            image = reorient_array(image, perm, flip)
        image, mean, std = self._normalise(image)
        # Same float32 arithmetic as the image, so padded voxels equal ``background`` exactly.
        background = (np.float32(default) - np.float32(mean)) / np.float32(std)

        canon_label = None
        if label is not None:
            if resampled:
                canon_label = resample(label.array, volume, grid, interpolator="nearest", default=0, output_float=False)
            else:
                canon_label = reorient_array(label.array, perm, flip)
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

    def onto(self, volume: Volume | None, grid: Volume, like: Preprocessed) -> Preprocessed:
        """``volume`` brought onto another canonical ``grid`` (any spacing and extent, e.g. a finer window around a
        small lesion: :mod:`lesionsam.inference.zoom`) with ``like``'s normalisation: the same intensity clip,
        interpolation and z-score statistics (``like.mean``, ``like.std``, not re-estimated on the window), so that
        the view shows the same image at another scale. ``like`` is ``volume``'s own :class:`Preprocessed`; the
        result's ``source`` is ``like.source`` (results map back onto the input grid as usual).

        Args:
            volume: the image ``like`` was made from (its intensities are read; only the part the grid reaches);
                None: ``like.image`` itself, already normalised, resampled linearly (without the input's own detail).
            grid: geometry of the new canonical grid (``grid.array`` is not read).
            like: the image's :class:`Preprocessed` on its own canonical grid.
        """
        if volume is None:
            usual = like.grid.with_array(like.image)
            image = resample(like.image, usual, grid, interpolator="linear", default=like.background, output_float=True)
        else:
            image, default = self._intensities(volume)
            image = self._resample(image, volume, grid, default)
            image -= np.float32(like.mean)
            image /= np.float32(like.std)
        return Preprocessed(
            image=image,
            label=None,
            grid=grid.with_array(image),
            source=like.source,
            background=like.background,
            mean=like.mean,
            std=like.std,
            _perm=like._perm,
            _flip=like._flip,
            _resampled=True,
        )

    def _intensities(self, volume: Volume) -> tuple[np.ndarray, float]:
        """A float32 copy of the intensities (CT: clipped to the window) and the value of empty space."""
        cfg = self.config
        image = volume.array.astype(np.float32, copy=True)
        if cfg.modality != "CT":
            return image, 0.0
        low, high = cfg.ct_clip
        np.clip(image, low, high, out=image)
        return image, float(low)

    def _resample(self, image: np.ndarray, volume: Volume, grid: Volume, default: float) -> np.ndarray:
        """``image`` (on ``volume``'s grid) resampled onto ``grid`` with the configured interpolation."""
        cfg = self.config
        out = resample(image, volume, grid, interpolator=cfg.interpolation, default=default, output_float=True)
        if cfg.modality == "CT" and cfg.interpolation == "bspline":
            np.clip(out, cfg.ct_clip[0], cfg.ct_clip[1], out=out)
        return out

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
            out = unreorient_array(array, pre._perm, pre._flip)
            return out.astype(np.float32) if interpolation == "linear" else out
        return resample(
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
