"""Data sets on disk: the Medical Segmentation Decathlon / nnU-Net layout and SAM-Med3D's folders.

* :func:`load_msd_cases` reads ``<root>/dataset.json`` + ``imagesTr/`` + ``labelsTr/`` (MSD, Antonelli et al.,
  "The Medical Segmentation Decathlon", Nat. Commun. 2022; nnU-Net v2, Isensee et al., Nat. Methods 2021), with
  multi-channel MRI as one 4D NIfTI per case (MSD) or one file per channel ``<case>_0000.nii.gz`` … (nnU-Net).
* :func:`load_sam_med3d_cases` reads SAM-Med3D's ``<root>/[<modality>/]<dataset>/imagesTr|labelsTr`` folders.
* :func:`make_splits` / :func:`write_splits` / :func:`read_splits`: reproducible train/val/test splits as JSON.
* :func:`verify_dataset`: an nnU-Net-style integrity check before any training starts.
* :class:`LesionCropDataset`: (1, S, S, S) crops around a target lesion label for training.

Label conventions: the target label is the integer value of the lesion class, e.g. MSD Task03 liver tumour = 2,
MSD Task01 brain enhancing tumour = 3 (on a chosen MRI channel: 0 FLAIR, 1 T1w, 2 T1gd, 3 T2w).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from lesionsam.data.dataset_json import dataset_labels, read_dataset_json  # noqa: F401 (re-exported)
from lesionsam.data.io import (
    ImageIOError,
    Volume,
    check_intensities,
    is_image_path,
    read_image,
)
from lesionsam.data.io import case_id as _stem
from lesionsam.data.transforms import CropBox, Preprocessed, Preprocessor, crop_around_label, take
from lesionsam.utils.dataclass_io import atomic_write_bytes

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_SHOW = 5  # how many offending names an error message lists


@dataclass(frozen=True)
class Case:
    """One training or test case.

    Attributes:
        case_id: unique name; the file stem (``liver_3``), prefixed with the data set's folder for the SAM-Med3D
            layout (``CT_abdomen/word/word_0001``: may contain "/").
        images: one path (a 3D image, or a 4D NIfTI whose 4th axis is the channel) or one path per channel in
            channel order (nnU-Net ``_0000``, ``_0001``, ...).
        label: the label image, or None (unlabelled / test case).
        dataset: the data set the case belongs to (folder name, relative to the loader's root for SAM-Med3D).
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None = None
    dataset: str = ""

    def read_image(self, channel: int | None = None) -> Volume:
        """Read the image (one channel, or all as (C, D, H, W) when ``channel`` is None and there are several).

        Raises:
            FileNotFoundError: a file is missing.
            ImageIOError: unreadable file, a channel that does not exist, or channel files on different grids.
        """
        if len(self.images) == 1:
            return read_image(self.images[0], channel=channel)
        if channel is not None:
            if not 0 <= channel < len(self.images):
                raise ImageIOError(
                    f"case {self.case_id}: channel {channel} requested but it has {len(self.images)} channel files"
                )
            return read_image(self.images[channel])
        vols = [read_image(p) for p in self.images]
        for p, v in zip(self.images[1:], vols[1:], strict=True):
            diff = vols[0].geometry_difference(v)
            if diff:
                raise ImageIOError(
                    f"case {self.case_id}: channel file {p.name} is on another grid than channel 0 ({diff})"
                )
        return replace(vols[0], array=np.stack([v.array for v in vols]))

    def read_label(self) -> Volume:
        """Read the label image.

        Raises:
            ValueError: the case has no label.
        """
        if self.label is None:
            raise ValueError(f"case {self.case_id} has no label (is it a test case?)")
        return read_image(self.label)


# ---------------------------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------------------------


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOW])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _SHOW else "")


def _label_files(labels_dir: Path) -> dict[str, Path]:
    if not labels_dir.is_dir():
        return {}
    return {_stem(p): p for p in sorted(labels_dir.iterdir()) if is_image_path(p)}


def _scan(
    images_dir: Path, labels_dir: Path, *, channel_files: bool | None
) -> list[tuple[str, tuple[Path, ...], Path | None]]:
    """Pair ``images_dir`` files with ``labels_dir`` files by name.

    ``channel_files``: True = every image is ``<case>_XXXX`` (nnU-Net v2); False = one file per case;
    None = decide per file (a ``_XXXX`` file whose full stem has no label is a channel file).
    """
    files = [p for p in sorted(images_dir.iterdir()) if is_image_path(p)]
    if not files:
        raise FileNotFoundError(
            f"no images in {images_dir} (expected files such as case_001.nii.gz or case_001_0000.nii.gz)"
        )
    labels = _label_files(labels_dir)
    singles: dict[str, Path] = {}
    groups: dict[str, dict[int, Path]] = {}
    bad_names: list[str] = []
    for p in files:
        stem = _stem(p)
        match = _CHANNEL_FILE.match(stem)
        if channel_files is False or (channel_files is None and (stem in labels or match is None)):
            singles[stem] = p
        elif match is None:
            bad_names.append(p.name)
        else:
            groups.setdefault(match["case"], {})[int(match["channel"])] = p
    if bad_names:
        raise ValueError(
            f"{images_dir}: dataset.json declares nnU-Net channel files, but these are not named <case>_XXXX: "
            f"{_listing(bad_names)}"
        )
    both = sorted(set(singles) & set(groups))
    if both:
        raise ValueError(f"{images_dir}: cases present both as one file and as channel files: {_listing(both)}")
    gaps = [f"{c} (channels {sorted(ch)})" for c, ch in groups.items() if sorted(ch) != list(range(len(ch)))]
    if gaps:
        raise ValueError(
            f"{images_dir}: channel files must be numbered _0000, _0001, ... without gaps: {_listing(gaps)}"
        )
    counts = {len(ch) for ch in groups.values()}
    if len(counts) > 1:
        per_case = [f"{c}: {len(ch)}" for c, ch in sorted(groups.items())]
        raise ValueError(f"{images_dir}: cases have different numbers of channel files ({_listing(per_case)})")
    cases = [(c, (p,), labels.get(c)) for c, p in singles.items()]
    cases += [(c, tuple(ch[i] for i in range(len(ch))), labels.get(c)) for c, ch in groups.items()]
    return sorted(cases)


def _check_pairs(cases: Sequence[Case], images_dir: Path, labels_dir: Path, *, require_labels: bool) -> None:
    unpaired = [c.case_id for c in cases if c.label is None]
    if require_labels and unpaired:
        raise ValueError(
            f"{len(unpaired)} image(s) in {images_dir} have no label in {labels_dir}: {_listing(unpaired)}. "
            "Labels must be named <case>.nii.gz for images <case>.nii.gz or <case>_0000.nii.gz; "
            "pass require_labels=False for unlabelled data."
        )
    used = {c.label.name for c in cases if c.label is not None}
    orphans = [p.name for p in _label_files(labels_dir).values() if p.name not in used]
    if orphans:
        logger.warning("%d label(s) in %s have no image: %s", len(orphans), labels_dir, _listing(orphans))


def load_msd_cases(root: str | os.PathLike[str], *, require_labels: bool = True) -> list[Case]:
    """The training cases of an MSD / nnU-Net data set folder.

    With a ``dataset.json`` holding a ``"training"`` list (MSD), its entries are used (paths relative to
    ``root``; an entry whose image was split into nnU-Net ``_XXXX`` channel files is found too). Otherwise
    (nnU-Net v2 dataset.json, or none) ``imagesTr/<case>.nii.gz`` or ``imagesTr/<case>_XXXX.nii.gz`` files are
    paired with ``labelsTr/<case>.nii.gz``.

    Args:
        root: the data set folder (e.g. ``Task03_Liver`` or ``Dataset003_Liver``).
        require_labels: raise for images without a label (default); False keeps them with ``label=None``.

    Returns:
        Cases sorted by ``case_id``.

    Raises:
        FileNotFoundError: ``root`` or ``imagesTr/`` (or ``labelsTr/`` when labels are required) is missing, or
            files listed in dataset.json do not exist.
        ValueError: unpaired images, badly numbered channel files, or an invalid dataset.json.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"data set folder not found: {root} (expected the MSD/nnU-Net layout: dataset.json, imagesTr/, labelsTr/)"
        )
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir():
        raise FileNotFoundError(
            f"{root} has no imagesTr/ folder; expected the MSD/nnU-Net layout <root>/imagesTr/<case>.nii.gz and "
            "<root>/labelsTr/<case>.nii.gz (for SAM-Med3D's folders use load_sam_med3d_cases)"
        )
    if require_labels and not labels_dir.is_dir():
        raise FileNotFoundError(f"{root} has no labelsTr/ folder; add the labels or pass require_labels=False")
    meta = read_dataset_json(root)
    dataset = root.name
    training = meta.get("training") if meta else None
    if isinstance(training, list) and training and all(isinstance(e, Mapping) and "image" in e for e in training):
        cases, missing = [], []
        for entry in training:
            image = (root / str(entry["image"])).resolve()
            images: tuple[Path, ...] = (image,)
            case_id = _stem(image)
            if not image.is_file():
                channel_paths = _channel_files(image)
                if channel_paths:
                    images = channel_paths
                else:
                    missing.append(str(entry["image"]))
            label = (root / str(entry["label"])).resolve() if entry.get("label") else None
            if label is not None and not label.is_file():
                if require_labels:
                    missing.append(str(entry["label"]))
                label = None
            cases.append(Case(case_id=case_id, images=images, label=label, dataset=dataset))
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} file(s) listed in {root / 'dataset.json'} do not exist: {_listing(missing)}"
            )
    else:
        nnunet = bool(meta) and ("channel_names" in meta or "file_ending" in meta)
        cases = [
            Case(case_id=c, images=imgs, label=lab, dataset=dataset)
            for c, imgs, lab in _scan(images_dir, labels_dir, channel_files=True if nnunet else None)
        ]
    ids = [c.case_id for c in cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"{root}: duplicate case names: {_listing(dupes)}")
    _check_pairs(cases, images_dir, labels_dir, require_labels=require_labels)
    return sorted(cases, key=lambda c: c.case_id)


def _channel_files(image: Path) -> tuple[Path, ...]:
    """nnU-Net channel files ``<stem>_0000<suffix>``, ... next to where ``image`` would be (contiguous)."""
    stem, suffix = _stem(image), image.name[len(_stem(image)) :]
    out = []
    while (p := image.parent / f"{stem}_{len(out):04d}{suffix}").is_file():
        out.append(p)
    return tuple(out)


def load_sam_med3d_cases(root: str | os.PathLike[str], *, require_labels: bool = True) -> list[Case]:
    """The cases of SAM-Med3D's folder layout.

    Every folder ``<root>``, ``<root>/<dataset>`` or ``<root>/<modality>/<dataset>`` that holds ``imagesTr/`` is
    a data set; ``imagesTr/<name>.nii.gz`` pairs with ``labelsTr/<name>.nii.gz``. ``case_id`` is
    ``<dataset path relative to root>/<name>`` (just ``<name>`` for ``<root>/imagesTr``).

    Args:
        root: the top folder (e.g. SAM-Med3D's ``data/medical_preprocessed``).
        require_labels: raise for images without a label (default); False keeps them with ``label=None``.

    Returns:
        Cases sorted by ``case_id``.

    Raises:
        FileNotFoundError: ``root`` is missing or holds no ``imagesTr/`` folder within two levels, or a data set
            lacks ``labelsTr/``.
        ValueError: unpaired images.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    candidates = [root, *sorted(root.glob("*")), *sorted(root.glob("*/*"))]
    dataset_dirs = [d for d in candidates if (d / "imagesTr").is_dir()]
    if not dataset_dirs:
        raise FileNotFoundError(
            f"no imagesTr/ folder under {root} (searched {root}, {root}/*, {root}/*/*); expected SAM-Med3D's layout "
            "<root>/[<modality>/]<dataset>/imagesTr/*.nii.gz with labelsTr/*.nii.gz beside it"
        )
    cases: list[Case] = []
    for d in dataset_dirs:
        images_dir, labels_dir = d / "imagesTr", d / "labelsTr"
        if require_labels and not labels_dir.is_dir():
            raise FileNotFoundError(f"{d} has imagesTr/ but no labelsTr/; add the labels or pass require_labels=False")
        rel = d.relative_to(root).as_posix()
        dataset = root.name if rel == "." else rel
        found = [
            Case(case_id=c if rel == "." else f"{rel}/{c}", images=imgs, label=lab, dataset=dataset)
            for c, imgs, lab in _scan(images_dir, labels_dir, channel_files=False)
        ]
        _check_pairs(found, images_dir, labels_dir, require_labels=require_labels)
        cases.extend(found)
    return sorted(cases, key=lambda c: c.case_id)


# ---------------------------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------------------------


def _count(fraction: float, n: int) -> int:
    k = int(math.floor(fraction * n + 0.5))
    return max(k, 1) if fraction > 0 and n > 1 else k


def make_splits(
    cases: Sequence[Case | str], *, seed: int, val_fraction: float = 0.2, test_fraction: float = 0.0
) -> dict[str, list[str]]:
    """A reproducible random split of case ids.

    Ids are sorted first, so the split depends only on the set of ids and ``seed``. A non-zero fraction gets at
    least one case (when there are at least two cases).

    Args:
        cases: cases or case ids.
        seed: random seed.
        val_fraction: fraction of cases for validation, in [0, 1).
        test_fraction: fraction of cases held out for testing, in [0, 1).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted.

    Raises:
        ValueError: duplicate ids, bad fractions, or no case left for training.
    """
    ids = sorted(c.case_id if isinstance(c, Case) else str(c) for c in cases)
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"duplicate case ids: {_listing(dupes)}")
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    n = len(ids)
    n_test, n_val = _count(test_fraction, n), _count(val_fraction, n)
    if n - n_test - n_val < 1:
        raise ValueError(
            f"{n} case(s) leave none for training with val_fraction={val_fraction}, test_fraction={test_fraction}"
        )
    order = np.random.default_rng(seed).permutation(n)
    picked = [ids[i] for i in order]
    return {
        "train": sorted(picked[n_test + n_val :]),
        "val": sorted(picked[n_test : n_test + n_val]),
        "test": sorted(picked[:n_test]),
    }


def _check_splits(splits: Any, where: str) -> dict[str, list[str]]:
    if not isinstance(splits, Mapping):
        raise ValueError(f"{where}: splits must be a mapping of split name to case ids, got {type(splits).__name__}")
    out: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for name, ids in splits.items():
        if not isinstance(ids, list | tuple) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"{where}: split {name!r} must be a list of case-id strings")
        for i in ids:
            if i in seen:
                raise ValueError(f"{where}: case {i!r} is in both {seen[i]!r} and {name!r}")
            seen[i] = str(name)
        out[str(name)] = list(ids)
    return out


def write_splits(splits: Mapping[str, Sequence[str]], path: str | os.PathLike[str]) -> Path:
    """Write splits as JSON (atomically: temp file + rename).

    Raises:
        ValueError: not a mapping of names to lists of ids, or an id in two splits.
    """
    checked = _check_splits({k: list(v) for k, v in splits.items()}, str(path))
    return atomic_write_bytes(path, (json.dumps(checked, indent=2) + "\n").encode())


def read_splits(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Read splits written by :func:`write_splits`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not valid JSON or not a mapping of split names to disjoint lists of ids.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"splits file not found: {p} (create one with make_splits + write_splits)")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{p} is not valid JSON: {exc}") from None
    return _check_splits(data, str(p))


# ---------------------------------------------------------------------------------------------------------------
# Integrity check
# ---------------------------------------------------------------------------------------------------------------


def _values(array: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a label array (bincount for small non-negative integers)."""
    if array.dtype.kind in "ub" or (array.dtype.kind == "i" and array.size and array.min() >= 0):
        if array.size and int(array.max()) < 65536:
            return np.flatnonzero(np.bincount(array.ravel().astype(np.int64)))
    return np.unique(array)


def verify_dataset(
    root: str | os.PathLike[str], *, target_label: int, channel: int | None = None, strict: bool = False
) -> list[str]:
    """Check an MSD / nnU-Net data set before training (like nnU-Net's ``verify_dataset_integrity``).

    Checks that every image has a label, that images (the chosen channel, or every channel) and labels are
    readable, finite, non-constant and on the same grid, that label values are integers listed in dataset.json
    (when it lists labels), and that ``target_label`` occurs in at least one case.

    Args:
        root: the data set folder.
        target_label: the lesion label value to train on (MSD liver tumour = 2, brain enhancing tumour = 3).
        channel: the image channel that will be used (multi-channel MRI); None checks all channels.
        strict: raise instead of returning the problems.

    Returns:
        One line per problem ("case X: ..."); empty if the data set is fine.

    Raises:
        FileNotFoundError: the folder layout itself is missing (see :func:`load_msd_cases`).
        ValueError: with ``strict=True`` and problems found (all listed in the message).
    """
    root = Path(root)
    cases = load_msd_cases(root, require_labels=False)
    known = dataset_labels(read_dataset_json(root))
    problems: list[str] = []
    found: set[int] = set()
    if known is not None and target_label not in known:
        problems.append(
            f"target label {target_label} is not in dataset.json's labels {known}; choose one of "
            f"{sorted(k for k in known if k != 0)}"
        )
    for case in cases:
        if case.label is None:
            problems.append(f"case {case.case_id}: no label; expected {root / 'labelsTr' / case.case_id}.nii.gz")
            continue
        try:
            image = case.read_image(channel)
            label = case.read_label()
        except (ImageIOError, FileNotFoundError) as exc:
            problems.append(f"case {case.case_id}: {exc}")
            continue
        try:
            check_intensities(image, source=f"case {case.case_id}")
        except ImageIOError as exc:
            problems.append(str(exc))
        if label.array.ndim != 3:
            problems.append(f"case {case.case_id}: the label has {label.array.shape[0]} channels; expected one")
            continue
        diff = label.geometry_difference(image)
        if diff:
            problems.append(
                f"case {case.case_id}: label and image are on different grids ({diff}); resample the label onto "
                "the image (nearest neighbour) or fix the header"
            )
        values = _values(label.array)
        if values.dtype.kind == "f" and not np.all(np.isfinite(values) & (values == np.round(values))):
            problems.append(f"case {case.case_id}: label values are not integers ({values[:8].tolist()} ...)")
            continue
        ints = {int(v) for v in values}
        found |= ints
        if known is not None and not ints <= set(known):
            problems.append(
                f"case {case.case_id}: label values {sorted(ints - set(known))} are not in dataset.json's labels "
                f"{sorted(known)}"
            )
    if cases and target_label not in found and not any("target label" in p for p in problems):
        problems.append(
            f"target label {target_label} occurs in no case (label values found: {sorted(found)}); pick the lesion "
            "label from those (MSD liver tumour = 2, brain enhancing tumour = 3)"
        )
    if strict and problems:
        raise ValueError(
            f"{root}: {len(problems)} problem(s) found:\n  "
            + "\n  ".join(problems[:20])
            + ("\n  ..." if len(problems) > 20 else "")
        )
    return problems


# ---------------------------------------------------------------------------------------------------------------
# Training data set
# ---------------------------------------------------------------------------------------------------------------


class _PreprocessedCases(Dataset):
    """Labelled cases, preprocessed on first use (kept in memory with ``cache``), one item per case."""

    def __init__(
        self, cases: Sequence[Case], preprocessor: Preprocessor, *, channel: int | None, cache: bool, owner: str
    ) -> None:
        if not cases:
            raise ValueError(f"{owner} needs at least one case")
        unlabelled = [c.case_id for c in cases if c.label is None]
        if unlabelled:
            raise ValueError(f"{len(unlabelled)} case(s) have no label, needed for training: {_listing(unlabelled)}")
        self.cases = list(cases)
        self.preprocessor = preprocessor
        self.channel = channel
        self.cache = cache
        self._cache: dict[int, Preprocessed] = {}

    def __len__(self) -> int:
        return len(self.cases)

    def preprocessed(self, index: int) -> Preprocessed:
        """The preprocessed case ``index`` (from the cache when ``cache=True``)."""
        if index in self._cache:
            return self._cache[index]
        case = self.cases[index]
        image = case.read_image(self.channel)
        if image.array.ndim == 4:
            raise ValueError(
                f"case {case.case_id} has {image.array.shape[0]} channels; pass channel= to {type(self).__name__} "
                "(MSD brain tumour: 0 FLAIR, 1 T1w, 2 T1gd, 3 T2w)"
            )
        try:
            pre = self.preprocessor(image, case.read_label())
        except ValueError as exc:
            raise ValueError(f"case {case.case_id}: {exc}") from exc
        if self.cache:
            self._cache[index] = pre
        return pre

    @staticmethod
    def _item_rng() -> np.random.Generator:
        """One draw from torch's generator seeds the item's randomness (reproducible, distinct per worker)."""
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))

    def _crop(
        self, pre: Preprocessed, centre_on: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, CropBox]:
        """A ``crop_size``³ crop around a lesion of ``centre_on`` (``lesion``, ``jitter``; anywhere if it is empty),
        padded with the normalised background."""
        return crop_around_label(
            pre.image,
            centre_on,
            self.crop_size,  # type: ignore[attr-defined]
            rng=rng,
            lesion=self.lesion,  # type: ignore[attr-defined]
            jitter=self.jitter,  # type: ignore[attr-defined]
            pad_value=pre.background,
        )

    def _item(self, image: np.ndarray, target: np.ndarray, index: int) -> dict[str, Any]:
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None],
            "label": torch.from_numpy(target)[None],
            "case_id": self.cases[index].case_id,
        }


class LesionCropDataset(_PreprocessedCases):
    """Cubic training crops around a target lesion label, on the canonical (preprocessed) grid.

    Each item reads the case (or takes it from the in-memory cache), preprocesses it with ``preprocessor``,
    makes the binary target mask ``label == target_label`` and crops ``crop_size``³ voxels around one lesion
    (:func:`~lesionsam.data.transforms.crop_around_label`: a random lesion, or the largest, with jitter). A case
    with no target voxels gives a crop centred on a random voxel (an all-zero target mask: a negative example).
    The image is padded with the normalised background value, the mask with 0.

    **Negative crops** (``negatives`` > 0, for methods prompted without a click: text-referred or automatic):
    that share of items is centred away from the target: on a lesion of one of the ``distractors`` label values
    (half of them, when the case has one; always with ``lesion="largest"``, then on the largest) or else on a
    uniformly random voxel of the volume. Their target mask is still ``label == target_label`` inside the crop,
    usually empty: the model learns to answer "nothing of this class here", which a whole-volume search needs.

    Randomness comes from torch's generator (one draw per item), so ``torch.manual_seed`` and DataLoader
    worker seeding make crops reproducible and differ between workers.

    Args:
        cases: labelled cases.
        preprocessor: the :class:`~lesionsam.data.transforms.Preprocessor` (its ``config.crop_size`` is the
            default crop size).
        target_label: the lesion label value (MSD liver tumour = 2, MSD brain enhancing tumour = 3).
        channel: the image channel for multi-channel cases (MSD brain: 0 FLAIR, 1 T1w, 2 T1gd, 3 T2w).
        crop_size: crop side in canonical voxels; None uses ``preprocessor.config.crop_size``.
        cache: keep preprocessed volumes in memory after the first read (per DataLoader worker process).
        lesion: "random" (every lesion equally often) or "largest".
        jitter: maximum shift of the crop centre in voxels; None = crop_size // 8.
        negatives: share of negative crops, in [0, 1] (1: every item is one, e.g. for validation).
        distractors: label values whose lesions negative crops centre on (typically the other lesion classes).

    Items:
        ``{"image": (1, S, S, S) float32 tensor, "label": (1, S, S, S) float32 tensor of 0/1, "case_id": str}``,
        axes (D, H, W) of the canonical grid; with ``distractors`` also ``"label_values"``: (1, S, S, S) int64, the
        crop's voxels of the target and distractor label values (0 elsewhere).

    Raises:
        ValueError: no cases, cases without labels, a target label < 1, or ``negatives`` outside [0, 1].
    """

    def __init__(
        self,
        cases: Sequence[Case],
        preprocessor: Preprocessor,
        *,
        target_label: int,
        channel: int | None = None,
        crop_size: int | None = None,
        cache: bool = False,
        lesion: Literal["random", "largest"] = "random",
        jitter: int | None = None,
        negatives: float = 0.0,
        distractors: Sequence[int] = (),
    ) -> None:
        super().__init__(cases, preprocessor, channel=channel, cache=cache, owner="LesionCropDataset")
        if not 0.0 <= float(negatives) <= 1.0:
            raise ValueError(f"negatives must be a share in [0, 1], got {negatives!r}")
        self.target_label = _label_value(target_label)
        self.crop_size = int(crop_size if crop_size is not None else preprocessor.config.crop_size)
        self.lesion = lesion
        self.jitter = self.crop_size // 8 if jitter is None else int(jitter)
        self.negatives = float(negatives)
        self.distractors = tuple(int(v) for v in distractors if int(v) != self.target_label)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pre = self.preprocessed(index)
        assert pre.label is not None
        rng = self._item_rng()
        mask = pre.label == self.target_label
        centre_on = mask
        if self.negatives and (self.negatives >= 1.0 or rng.random() < self.negatives):
            others = np.isin(pre.label, self.distractors) if self.distractors else np.zeros_like(mask)
            use_other = others.any() and (self.lesion == "largest" or rng.random() < 0.5)
            centre_on = others if use_other else np.zeros_like(mask)
        image, target, box = self._crop(pre, centre_on, rng)
        if centre_on is not mask:
            target = take(mask, box)
        item = self._item(image, target.astype(np.float32), index)
        if self.distractors:  # the crop's lesion classes, for training another class's text on the same crop
            values = np.where(np.isin(pre.label, (self.target_label, *self.distractors)), pre.label, 0)
            item["label_values"] = torch.from_numpy(take(values.astype(np.int64), box))[None]
        return item


def _label_value(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"target_label must be a positive label value (0 is background), got {value!r}")
    return int(value)


class ClassCropDataset(_PreprocessedCases):
    """Multi-class training crops over whole volumes, for prompt-free methods (no click to centre on).

    Each item is a cubic crop of the canonical grid with a class-index target: 0 background (everything that is not
    one of ``classes``), ``i + 1`` for label value ``classes[i]``. Sampling is foreground-biased, like sliding
    windows with nnU-Net-style oversampling: with probability ``foreground`` the crop is centred on a lesion (a
    class drawn uniformly among those present in the case, so a rare class is seen as often as a common one, then
    a random lesion of it, shifted by up to ``jitter`` voxels); otherwise it is centred on a uniformly random voxel
    of the volume. Cases without any lesion give random crops only. With ``lesion="largest"`` (validation) the
    lesion crops are centred on the largest lesion of the case's first present class, without randomness.

    Args:
        cases: labelled cases (lesion-free ones included).
        preprocessor: the :class:`~lesionsam.data.transforms.Preprocessor`.
        classes: the label values of the K lesion classes, in output-channel order (e.g. ``(2, 4)``).
        channel: the image channel of multi-channel cases.
        crop_size: crop side in canonical voxels (None: ``preprocessor.config.crop_size``).
        cache: keep preprocessed volumes in memory.
        foreground: probability in [0, 1] of a lesion-centred crop.
        lesion: "random" or "largest".
        jitter: maximum shift of a lesion-centred crop, voxels (None: crop_size // 4).

    Items:
        ``{"image": (1, S, S, S) float32, "label": (1, S, S, S) int64 class indices in [0, K], "case_id": str}``,
        axes (D, H, W) of the canonical grid.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        preprocessor: Preprocessor,
        *,
        classes: Sequence[int],
        channel: int | None = None,
        crop_size: int | None = None,
        cache: bool = False,
        foreground: float = 0.67,
        lesion: Literal["random", "largest"] = "random",
        jitter: int | None = None,
    ) -> None:
        super().__init__(cases, preprocessor, channel=channel, cache=cache, owner="ClassCropDataset")
        values = tuple(_label_value(v) for v in classes)
        if not values or len(set(values)) != len(values):
            raise ValueError(f"classes must be distinct positive label values, got {list(classes)}")
        if not 0.0 <= float(foreground) <= 1.0:
            raise ValueError(f"foreground must be a probability in [0, 1], got {foreground!r}")
        self.classes = values
        self.crop_size = int(crop_size if crop_size is not None else preprocessor.config.crop_size)
        self.foreground = float(foreground)
        self.lesion = lesion
        self.jitter = self.crop_size // 4 if jitter is None else int(jitter)

    def class_map(self, label: np.ndarray) -> np.ndarray:
        """(D, H, W) label values → int64 class indices (0 background, i + 1 for ``classes[i]``)."""
        lut = np.zeros(max(int(label.max(initial=0)), *self.classes) + 1, dtype=np.int64)
        for i, value in enumerate(self.classes):
            lut[value] = i + 1
        return lut[label.astype(np.int64, copy=False)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        pre = self.preprocessed(index)
        assert pre.label is not None
        rng = self._item_rng()
        present = [v for v in self.classes if (pre.label == v).any()]
        centre_on = np.zeros(pre.label.shape, dtype=bool)
        if present and (self.foreground >= 1.0 or rng.random() < self.foreground):
            value = present[0] if self.lesion == "largest" else present[int(rng.integers(len(present)))]
            centre_on = pre.label == value
        image, _, box = self._crop(pre, centre_on, rng)
        return self._item(image, take(self.class_map(pre.label), box), index)
