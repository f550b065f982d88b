"""The one typed config of a run: model, data and training, YAML in and out.

A YAML file gives only what differs from the defaults::

    name: liver_sgp
    model: {method: sgp_sam, preset: sam_med3d_vit_b, checkpoint: /data/sam_med3d_turbo.pth}
    data: {root: /data/Task03_Liver, target_label: 2}
    train: {epochs: 100, batch_size: 2}

and ``key=value`` overrides on the command line change single fields (``train.lr=3e-4``). The resolved
config is saved as ``config.yaml`` beside every checkpoint.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lesionsam.models.config import ModelConfig
from lesionsam.utils.dataclass_io import apply_overrides, from_dict, load_yaml
from lesionsam.utils.options import look_up_option

SCHEDULES = ("cosine", "constant")
CLICK_MODES = ("random", "center")


@dataclass(frozen=True)
class DataConfig:
    """Where the data are and how they are prepared.

    Attributes:
        root: a data set folder in the MSD / nnU-Net layout (``dataset.json``, ``imagesTr``, ``labelsTr``) or
            the SAM-Med3D layout.
        layout: ``"msd"`` (also nnU-Net) or ``"sam_med3d"``.
        target_label: the lesion's label value (MSD liver tumour = 2, MSD brain enhancing tumour = 3).
        target_labels: several label values to train on at once, each crop targeting one of them (e.g. the
            anatomy for pretraining); when given, ``target_label`` is not used.
        label_texts: text prompts per label value for text-referred methods (RefSAM3D), e.g.
            ``{"2": ["liver tumour", "hepatic tumor"], "4": ["liver cyst"]}``; one is drawn per crop. Empty: the
            label names of ``dataset.json``.
        channel: the image channel of multi-channel MRI (MSD brain: 0 FLAIR, 1 T1w, 2 T1gd, 3 T2w).
        modality: ``"CT"`` (window clip + z-score over the body) or ``"MRI"`` (z-score over non-zero voxels).
        spacing: model voxel size in mm (SAM-Med3D: 1.5 isotropic).
        val_fraction: share of cases held out for validation (seeded split, written to the run folder).
        split_seed: seed of the split.
        splits: a ``splits.json`` to use instead of making one.
        cache: keep preprocessed volumes in memory.
        num_workers: DataLoader worker processes.
        negative_fraction: share of training crops centred away from their target label (on a lesion of another
            target label, or anywhere in the volume), whose target is usually empty, so that a model prompted
            without a click (text-referred) learns to find nothing where there is nothing; validation then adds
            one such crop per case and label. Only for methods that take a text prompt (a click needs a lesion).
        foreground_fraction: for prompt-free methods (H-SAM), the probability that a training crop is centred on
            a lesion (of a class drawn uniformly among those in the case); the others are centred anywhere in the
            volume, as sliding windows at inference are.
    """

    root: str = ""
    layout: str = "msd"
    target_label: int = 2
    target_labels: tuple[int, ...] = ()
    label_texts: dict[str, list[str]] = field(default_factory=dict)
    channel: int | None = None
    modality: str = "CT"
    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    val_fraction: float = 0.2
    split_seed: int = 0
    splits: str | None = None
    cache: bool = True
    num_workers: int = 0
    negative_fraction: float = 0.0
    foreground_fraction: float = 0.67

    def __post_init__(self) -> None:
        look_up_option(self.layout, ("msd", "sam_med3d"), what="data layout")
        look_up_option(self.modality, ("CT", "MRI"), what="modality")
        object.__setattr__(self, "target_labels", tuple(int(v) for v in self.target_labels))
        for value in (self.target_label, *self.target_labels):
            if value < 1:
                raise ValueError(f"data.target_label(s) must be label values >= 1 (0 is background), got {value}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise ValueError(f"data.foreground_fraction must be in [0, 1], got {self.foreground_fraction}")
        if not 0.0 <= self.negative_fraction < 1.0:
            raise ValueError(f"data.negative_fraction must be in [0, 1), got {self.negative_fraction}")


@dataclass(frozen=True)
class TrainConfig:
    """How the model is trained (SAM-Med3D's interactive protocol; see :mod:`lesionsam.training.trainer`).

    Attributes:
        epochs: passes over the training cases (one crop per case per epoch).
        batch_size: crops per optimiser micro-step (per process under DDP).
        accumulate: micro-steps per optimiser step (gradient accumulation).
        max_steps_per_epoch: cap on micro-steps per epoch (None: all cases).
        lr: learning rate of the prompt encoder and mask decoder.
        lr_encoder: learning rate of the image encoder (None: ``lr``); ignored when ``freeze_encoder``.
        lr_new: learning rate of parts new to the backbone (SGP-SAM's ``sgpm``, adapters; None: ``lr``).
        freeze_encoder: keep the image encoder fixed (only new parts, prompt encoder and decoder train).
        weight_decay: AdamW weight decay.
        schedule: ``"cosine"`` (after a linear warm-up) or ``"constant"``.
        warmup_steps: optimiser steps of linear warm-up.
        num_clicks: decoder iterations per crop: the first click from the lesion, later clicks from the
            error region, each with the previous low-res logits as a mask prompt.
        mask_only_iterations: how many of the later iterations get the mask prompt only (no new click).
        click_mode: ``"random"`` or ``"center"`` click simulation.
        loss: training loss name (None: the method's default, e.g. DiceCE for ``finetune``, Zoom for ``sgp_sam``).
        loss_options: keyword options of the loss (e.g. ``{lambda_focal: 1.0, gamma: 2.0}``).
        gate_cost: weight of the gate budget term added to the loss (SGP-SAM;
            :func:`~lesionsam.models.methods.sgp.gate_budget`; 0 = none): without ``gate_target`` the mean gate-open
            probability (a linear compute cost), with it ``(mean - gate_target) ** 2``.
        gate_target: a target activation rate of the gates in [0, 1] (None: the linear cost); needs ``gate_cost > 0``.
        logit_adjustment: ``tau`` of logit adjustment (Menon et al., "Long-tail learning via logit adjustment",
            ICLR 2021), for losses whose class weighting shifts the optimal logit (the Zoom Loss's focal balance,
            :mod:`lesionsam.losses.balance`). With ``tau > 0`` the trainer estimates the loss's prior shift ``s`` on
            the training crops before training (:meth:`~lesionsam.training.trainer.Trainer.estimate_prior_shift`)
            and stores the offset ``tau * s`` in every checkpoint (``extra["logit_adjustment"]``); validation and the
            predictor subtract it from the logits before thresholding. The Dice term and ``gamma > 0`` make the real
            shift smaller than ``s``, so ``tau`` is tuned (1 = the whole focal-only shift; 0 = off, the default).
        text_pairs: text-referred methods with several target labels: every crop trained with its class's text is
            also trained, in the same batch, with another target label's text and that label's voxels of the same
            crop as target (a contrastive pair: same image, other text, other mask).
        text_contrast: with ``text_pairs``, weight of a per-voxel margin term between the two texts of a pair on
            their text-only predictions: on the voxels of either text's class, that text's logit must exceed the
            other's (``softplus(l_other - l_own)``, mean over those voxels). The image-only parts of the logits
            cancel in the difference, so the term trains only what makes the texts differ (0 = none).
        text_competition: with ``text_pairs``, weight of the training loss applied once more to the two texts'
            *competing* logits on their text-only predictions (:func:`lesionsam.models.interface.competing_logits`:
            each text against background and the other text, a 3-way softmax) — the voxel-level decision text
            alone uses for a model without a region classifier; RefSAM3D decides lesion by lesion instead
            (``region_classes``), so for it this only shapes the logits (measured: no selectivity; 0 = none).
        region_classes: with ``text_pairs``, weight of a per-lesion class term: every lesion (connected component
            of at least :data:`~lesionsam.training.trainer.REGION_MIN_VOXELS` voxels) of the two classes in a
            paired crop is scored against the pair's two texts by the model's region classifier
            (``RefSAM3D.region_scores``) with cross-entropy, mean over the lesions; text alone then decides each
            found lesion's class with it (0 = none).
        amp: bfloat16 autocast on CUDA (ignored on CPU).
        grad_checkpointing: recompute encoder activations in the backward pass (less memory).
        val_every: validate every N epochs (and after the last).
        val_clicks: clicks per validation crop (centre clicks, deterministic).
        seed: seed of everything random; every epoch reseeds from (seed, epoch) so a resumed run replays
            the same crops, clicks and noise.
        deterministic: ``torch.use_deterministic_algorithms(True)``.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    """

    epochs: int = 10
    batch_size: int = 2
    accumulate: int = 1
    max_steps_per_epoch: int | None = None
    lr: float = 1e-4
    lr_encoder: float | None = None
    lr_new: float | None = None
    freeze_encoder: bool = False
    weight_decay: float = 0.01
    schedule: str = "cosine"
    warmup_steps: int = 0
    num_clicks: int = 5
    mask_only_iterations: int = 1
    click_mode: str = "random"
    loss: str | None = None
    loss_options: dict[str, Any] = field(default_factory=dict)
    gate_cost: float = 0.0
    gate_target: float | None = None
    logit_adjustment: float = 0.0
    text_pairs: bool = False
    text_contrast: float = 0.0
    text_competition: float = 0.0
    region_classes: float = 0.0
    amp: bool = True
    grad_checkpointing: bool = False
    val_every: int = 1
    val_clicks: int = 1
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"

    def __post_init__(self) -> None:
        look_up_option(self.schedule, SCHEDULES, what="schedule")
        look_up_option(self.click_mode, CLICK_MODES, what="click mode")
        look_up_option(self.device, ("auto", "cpu", "cuda"), what="device")
        for name in ("epochs", "batch_size", "accumulate", "num_clicks", "val_every", "val_clicks"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.mask_only_iterations < self.num_clicks:
            raise ValueError(
                f"train.mask_only_iterations must be in [0, num_clicks) = [0, {self.num_clicks}), "
                f"got {self.mask_only_iterations}"
            )
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        for name in (
            "weight_decay",
            "gate_cost",
            "logit_adjustment",
            "text_contrast",
            "text_competition",
            "region_classes",
        ):
            if not getattr(self, name) >= 0:  # NaN too
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.gate_target is not None:
            if not 0.0 <= self.gate_target <= 1.0:  # NaN too
                raise ValueError(
                    f"train.gate_target is a share of open gates and must be in [0, 1], got {self.gate_target}"
                )
            if not self.gate_cost > 0:
                raise ValueError("train.gate_target needs train.gate_cost > 0 (the weight of the budget term)")
        if not math.isfinite(self.logit_adjustment):
            raise ValueError(
                f"train.logit_adjustment (tau) must be finite, got {self.logit_adjustment}; 1 = the whole shift"
            )
        for name in ("text_contrast", "text_competition", "region_classes"):
            if getattr(self, name) > 0 and not self.text_pairs:
                raise ValueError(f"train.{name} compares the two texts of a pair: set train.text_pairs: true too")


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs; saved beside every checkpoint."""

    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def load_run_config(path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a run config YAML (or start from the defaults with ``path=None``) and apply ``key=value`` overrides.

    Relative paths in ``data.root``, ``data.splits`` and ``model.checkpoint`` are resolved against the YAML's
    folder when they come from the file, against the working directory when they come from an override.
    """
    data: dict[str, Any] = load_yaml(path) if path is not None else {}
    if path is not None:
        _resolve_paths(data, Path(path).resolve().parent)
    apply_overrides(data, overrides)
    _resolve_paths(data, Path.cwd())
    return from_dict(RunConfig, data)


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    for section, key in (("data", "root"), ("data", "splits"), ("model", "checkpoint")):
        sec = data.get(section)
        value = sec.get(key) if isinstance(sec, dict) else None
        if isinstance(value, str) and value and not Path(value).is_absolute():
            sec[key] = str((base / value).resolve())
