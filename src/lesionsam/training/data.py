"""The trainer's data: cases of a run config's data set, the seeded split, and the crop data sets each kind of step
trains and validates on (lesion-centred crops per target label for prompted methods, foreground-biased multi-class
crops for prompt-free ones)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from lesionsam.config import RunConfig
from lesionsam.data.datasets import ClassCropDataset, LesionCropDataset
from lesionsam.data.layouts import Case, load_msd_cases, load_sam_med3d_cases
from lesionsam.data.splits import make_splits, read_splits
from lesionsam.data.transforms import PreprocessConfig, Preprocessor
from lesionsam.data.verify import verify_dataset

log = logging.getLogger("lesionsam.training.trainer")

Splits = dict[str, list[str]]


def load_cases(cfg: RunConfig) -> list[Case]:
    """The cases of ``data.root`` in the configured layout (``ValueError`` when ``data.root`` is empty)."""
    d = cfg.data
    if not d.root:
        raise ValueError("data.root is empty: set it in the config or with data.root=PATH")
    return load_msd_cases(d.root) if d.layout == "msd" else load_sam_med3d_cases(d.root)


def check_dataset(cfg: RunConfig) -> None:
    """nnU-Net-style integrity check of an MSD / nnU-Net data set before training starts
    (:func:`~lesionsam.data.verify.verify_dataset` for every target label, on the configured channel): raises one
    ``ValueError`` line naming the first problem and how many there are. The SAM-Med3D layout is not checked."""
    d = cfg.data
    if d.layout != "msd":
        return
    problems: list[str] = []
    for target in d.target_labels or (d.target_label,):
        problems += [p for p in verify_dataset(d.root, target_label=target, channel=d.channel) if p not in problems]
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise ValueError(f"data set {d.root} failed its check before training: {problems[0]}{more}")


def split_cases(cfg: RunConfig, cases: list[Case], what: str) -> tuple[list[Case], list[Case], Splits]:
    """Training and validation cases: ``data.splits``, or a seeded split of ``cases``; and the split itself (for
    ``splits.json``)."""
    d = cfg.data
    splits = read_splits(d.splits) if d.splits else make_splits(cases, seed=d.split_seed, val_fraction=d.val_fraction)
    by_id = {c.case_id: c for c in cases}
    train_cases = [by_id[i] for i in splits.get("train", []) if i in by_id]
    val_cases = [by_id[i] for i in splits.get("val", []) if i in by_id]
    if not train_cases:
        raise ValueError(f"the split leaves no training case {what}".rstrip())
    return train_cases, val_cases, splits


def lesion_datasets(cfg: RunConfig, cases: list[Case]) -> tuple[Dataset, Dataset | None, Splits]:
    """Training and validation crop data sets of a prompted method from a seeded split (and the split).

    Cases without any voxel of the target label are left out (a click needs a lesion); they are listed in the log.
    With ``data.negative_fraction`` that share of training crops is centred away from the target (see
    :class:`LesionCropDataset`), and the validation set adds one negative crop per case and target label (on the
    largest lesion of another target label, else a seeded random place), scored as Dice 1 when nothing is predicted
    there and 0 otherwise.
    """
    d = cfg.data
    targets = d.target_labels or (d.target_label,)
    present = {c.case_id: labels_present(c, targets) for c in cases}
    with_target = [c for c in cases if present[c.case_id]]
    skipped = sorted(c.case_id for c in cases if not present[c.case_id])
    if skipped:
        log.info(
            "%d case(s) without label %s left out of training: %s",
            len(skipped),
            " or ".join(map(str, targets)),
            ", ".join(skipped[:5]),
        )
    if not with_target:
        what = f"label value {targets[0]}" if len(targets) == 1 else f"any of the label values {list(targets)}"
        raise ValueError(f"no case in {d.root} has {what} (data.target_label)")
    train_cases, val_cases, splits = split_cases(cfg, with_target, "with the target label")
    pre = Preprocessor(PreprocessConfig(spacing=d.spacing, modality=d.modality, crop_size=cfg.model.backbone.img_size))

    def crops(chosen: list[Case], **kw: Any) -> list[Dataset]:
        return [
            Targeted(
                LesionCropDataset(
                    subset, pre, target_label=t, channel=d.channel, cache=d.cache, distractors=targets, **kw
                ),
                t,
            )
            for t in targets
            if (subset := [c for c in chosen if t in present[c.case_id]])
        ]

    train = _joined(crops(train_cases, negatives=d.negative_fraction, zoom=d.zoom))  # validation: the model's scale
    assert train is not None
    val = crops(val_cases, lesion="largest", jitter=0)
    if d.negative_fraction and val:
        val += crops(val_cases, lesion="largest", jitter=0, negatives=1.0)
    return train, _joined(val), splits


def class_datasets(cfg: RunConfig, cases: list[Case], classes: int) -> tuple[Dataset, Dataset | None, Splits]:
    """Prompt-free methods segmenting ``classes`` lesion classes: foreground-biased multi-class crops of every case
    (lesion-free ones too); the validation set has, per case, a crop on its largest lesion and a seeded random
    crop."""
    d = cfg.data
    targets = d.target_labels or (d.target_label,)
    if classes != len(targets):
        raise ValueError(
            f"the model segments {classes} lesion class(es) but the data name {len(targets)} target label(s) "
            f"{list(targets)}: set model.options.num_classes={len(targets)}"
        )
    present = {c.case_id: labels_present(c, targets) for c in cases}
    if not any(present.values()):
        raise ValueError(f"no case in {d.root} has any of the label values {list(targets)} (data.target_labels)")
    train_cases, val_cases, splits = split_cases(cfg, cases, "")
    pre = Preprocessor(PreprocessConfig(spacing=d.spacing, modality=d.modality, crop_size=cfg.model.backbone.img_size))
    kw = {"classes": targets, "channel": d.channel, "cache": d.cache}
    train = Targeted(ClassCropDataset(train_cases, pre, foreground=d.foreground_fraction, **kw), 0)
    if not val_cases:
        return train, None, splits
    val = ConcatDataset(
        [
            Targeted(ClassCropDataset(val_cases, pre, foreground=1.0, lesion="largest", jitter=0, **kw), 0),
            Targeted(ClassCropDataset(val_cases, pre, foreground=0.0, **kw), 0),
        ]
    )
    return train, val, splits


def _joined(parts: list[Dataset]) -> Dataset | None:
    return None if not parts else parts[0] if len(parts) == 1 else ConcatDataset(parts)


class Targeted(Dataset):
    """A crop data set whose items also say which label value they target (for text prompts)."""

    def __init__(self, dataset: Dataset, target: int) -> None:
        self.dataset, self.target = dataset, int(target)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.dataset[index], "target": self.target}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of crop items: stacked image, label (and label_values), the targets and the case ids."""
    batch = {
        "image": torch.stack([i["image"] for i in items]),
        "label": torch.stack([i["label"] for i in items]),
        "target": torch.tensor([i["target"] for i in items]),
        "case_id": [i["case_id"] for i in items],
    }
    if all("label_values" in i for i in items):
        batch["label_values"] = torch.stack([i["label_values"] for i in items])
    return batch


def labels_present(case: Case, values: Sequence[int]) -> set[int]:
    """Which of ``values`` occur in the case's label map."""
    arr = np.asarray(case.read_label().array)
    return {v for v in values if (arr == v).any()}
