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
from lesionsam.data.synthetic_shapes import (
    ellipsoid_mask,
    largest_component,
    mm_grid,
    place_cysts,
    place_lesions,
    smooth_fields,
)
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
#: Most cysts per case (``lesion_classes=2``) and the probability that a case has none.
MAX_CYSTS = 3
CYST_NONE_PROBABILITY = 0.15


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

    grid = mm_grid(shape, spacing_kji)
    half = extent_kji / 2.0
    organ_field = smooth_fields(rng, 1, shape, spacing_kji, corr_mm=rng.uniform(15.0, 25.0))[0]
    vessel_fields = smooth_fields(rng, 2, shape, spacing_kji, corr_mm=rng.uniform(10.0, 15.0))
    texture = smooth_fields(rng, 1, shape, spacing_kji, corr_mm=30.0)[0]

    # Body: an ellipsoid (AP flatter than LR) filling the field of view in-plane and cut by the first and last
    # slices, as in a CT scan; a fat layer and a muscle wall of physical thickness under its surface.
    body_r = np.array(
        [rng.uniform(1.15, 1.4) * half[0], rng.uniform(0.65, 0.78) * half[1], rng.uniform(0.82, 0.92) * half[2]]
    )
    body = ellipsoid_mask(grid, np.zeros(3), body_r) < 1.0
    # Each layer at most 10 % of the body's smaller in-plane radius, so that small volumes keep room for an organ.
    layer_cap = 0.1 * float(body_r[1:].min())
    fat_mm = min(rng.uniform(*FAT_THICKNESS_MM), layer_cap) if rng.uniform() < FAT_PROBABILITY else 0.0
    wall_mm = fat_mm + min(rng.uniform(*MUSCLE_THICKNESS_MM), layer_cap)
    inside_fat = ellipsoid_mask(grid, np.zeros(3), body_r - fat_mm) < 1.0
    inside_wall = ellipsoid_mask(grid, np.zeros(3), body_r - wall_mm) < 1.0

    # Organ: a smooth irregular blob on the patient's right (low i: LPS +x is the patient's left), inside the wall.
    organ_r = np.array([0.0, rng.uniform(0.6, 0.75) * body_r[1], rng.uniform(0.55, 0.7) * body_r[2]])
    organ_r[0] = min(rng.uniform(0.5, 0.65) * half[0], rng.uniform(2.0, 2.8) * organ_r[1:].max())
    organ_c = np.array(
        [rng.uniform(-0.15, 0.15) * half[0], rng.uniform(-0.1, 0.1) * body_r[1], -rng.uniform(0.2, 0.35) * body_r[2]]
    )
    rho = np.sqrt(ellipsoid_mask(grid, organ_c, organ_r))
    # The half-size core (inside the wall by construction) keeps the organ one non-empty piece.
    organ = largest_component(((rho < 1.0 + ORGAN_IRREGULARITY * organ_field) | (rho < 0.5)) & inside_wall)

    # Vessels: tubes where two smooth fields both cross zero, kept inside the organ.
    thickness = rng.uniform(*VESSEL_THICKNESS_RANGE)
    vessel = (np.abs(vessel_fields[0]) < thickness) & (np.abs(vessel_fields[1]) < thickness) & organ

    lesions = place_lesions(rng, organ, n_lesions, spacing_kji, strict=strict)
    cysts: list[tuple[tuple[slice, ...], np.ndarray]] = []
    cyst_hu: list[float] = []
    if lesion_classes == 2 and n_lesions > 0:
        cyst_rng = np.random.default_rng([seed, 2])  # separate stream: class-1 content is untouched
        n_cysts = 0 if cyst_rng.uniform() < CYST_NONE_PROBABILITY else int(cyst_rng.integers(1, MAX_CYSTS + 1))
        tumours = np.zeros(shape, bool)
        for sl, mask in lesions:
            tumours[sl] |= mask
        cysts = place_cysts(cyst_rng, organ, tumours, n_cysts, spacing_kji)
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
