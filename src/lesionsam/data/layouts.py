"""Data sets on disk, read into :class:`Case` lists.

* :func:`load_msd_cases` reads ``<root>/dataset.json`` + ``imagesTr/`` + ``labelsTr/`` (MSD, Antonelli et al.,
  "The Medical Segmentation Decathlon", Nat. Commun. 2022; nnU-Net v2, Isensee et al., Nat. Methods 2021), with
  multi-channel MRI as one 4D NIfTI per case (MSD) or one file per channel ``<case>_0000.nii.gz`` … (nnU-Net).
* :func:`load_sam_med3d_cases` reads SAM-Med3D's ``<root>/[<modality>/]<dataset>/imagesTr|labelsTr`` folders.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lesionsam.data.dataset_json import read_dataset_json
from lesionsam.data.io import (
    ImageIOError,
    Volume,
    is_image_path,
    read_image,
)
from lesionsam.data.io import case_id as _stem

logger = logging.getLogger("lesionsam.data.datasets")

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


def listing(names: Sequence[str]) -> str:
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
            f"{listing(bad_names)}"
        )
    both = sorted(set(singles) & set(groups))
    if both:
        raise ValueError(f"{images_dir}: cases present both as one file and as channel files: {listing(both)}")
    gaps = [f"{c} (channels {sorted(ch)})" for c, ch in groups.items() if sorted(ch) != list(range(len(ch)))]
    if gaps:
        raise ValueError(
            f"{images_dir}: channel files must be numbered _0000, _0001, ... without gaps: {listing(gaps)}"
        )
    counts = {len(ch) for ch in groups.values()}
    if len(counts) > 1:
        per_case = [f"{c}: {len(ch)}" for c, ch in sorted(groups.items())]
        raise ValueError(f"{images_dir}: cases have different numbers of channel files ({listing(per_case)})")
    cases = [(c, (p,), labels.get(c)) for c, p in singles.items()]
    cases += [(c, tuple(ch[i] for i in range(len(ch))), labels.get(c)) for c, ch in groups.items()]
    return sorted(cases)


def _check_pairs(cases: Sequence[Case], images_dir: Path, labels_dir: Path, *, require_labels: bool) -> None:
    unpaired = [c.case_id for c in cases if c.label is None]
    if require_labels and unpaired:
        raise ValueError(
            f"{len(unpaired)} image(s) in {images_dir} have no label in {labels_dir}: {listing(unpaired)}. "
            "Labels must be named <case>.nii.gz for images <case>.nii.gz or <case>_0000.nii.gz; "
            "pass require_labels=False for unlabelled data."
        )
    used = {c.label.name for c in cases if c.label is not None}
    orphans = [p.name for p in _label_files(labels_dir).values() if p.name not in used]
    if orphans:
        logger.warning("%d label(s) in %s have no image: %s", len(orphans), labels_dir, listing(orphans))


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
                f"{len(missing)} file(s) listed in {root / 'dataset.json'} do not exist: {listing(missing)}"
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
        raise ValueError(f"{root}: duplicate case names: {listing(dupes)}")
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
