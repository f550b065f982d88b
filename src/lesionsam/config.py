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

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from lesionsam.data.zoom_crops import ZoomCrops
from lesionsam.models.config import ModelConfig
from lesionsam.models.interface import TrainOptions
from lesionsam.models.registry import method_spec, train_option_owners
from lesionsam.utils.dataclass_io import apply_overrides, from_dict, load_yaml, to_dict, unknown_key
from lesionsam.utils.options import look_up_option

log = logging.getLogger(__name__)

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
        zoom: multi-scale training (:class:`~lesionsam.data.zoom_crops.ZoomCrops`): that share of the lesion
            crops is resampled so that the lesion fills part of the crop, as zoom-in at inference shows a small
            lesion (``data: {zoom: {fraction: 0.5}}``); None (the default): every crop at the model's spacing.
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
    zoom: ZoomCrops | None = field(default=None, metadata={"omit_none": True})

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
        logit_adjustment: ``tau`` of logit adjustment (Menon et al., "Long-tail learning via logit adjustment",
            ICLR 2021), for losses whose class weighting shifts the optimal logit (the Zoom Loss's focal balance,
            :mod:`lesionsam.losses.balance`). With ``tau > 0`` the trainer estimates the loss's prior shift ``s`` on
            the training crops before training (:meth:`~lesionsam.training.trainer.Trainer.estimate_prior_shift`)
            and stores the offset ``tau * s`` in every checkpoint (``extra["logit_adjustment"]``); validation and the
            predictor subtract it from the logits before thresholding. The Dice term and ``gamma > 0`` make the real
            shift smaller than ``s``, so ``tau`` is tuned (1 = the whole focal-only shift; 0 = off, the default).
        amp: bfloat16 autocast on CUDA (ignored on CPU).
        grad_checkpointing: recompute encoder activations in the backward pass (less memory).
        val_every: validate every N epochs (and after the last).
        val_clicks: clicks per validation crop (centre clicks, deterministic).
        seed: seed of everything random; every epoch reseeds from (seed, epoch) so a resumed run replays
            the same crops, clicks and noise.
        deterministic: ``torch.use_deterministic_algorithms(True)``.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        options: the method's own training options, an instance of the dataclass its registration declares
            (:attr:`~lesionsam.models.registry.MethodSpec.train_options`: SGP-SAM's gate budget, RefSAM3D's text-pair
            terms), or None for a method with none. In YAML they are the ``options:`` section of ``train:``
            (``train: {options: {gate_cost: 0.01}}``), in overrides ``train.options.gate_cost=0.01``, in code
            ``config.train.options.gate_cost``; the run config checks them against its method when it is read
            (:func:`read_train_options`). Written only when not None.
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
    logit_adjustment: float = 0.0
    amp: bool = True
    grad_checkpointing: bool = False
    val_every: int = 1
    val_clicks: int = 1
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    options: TrainOptions | None = field(default=None, metadata={"omit_none": True})

    def __post_init__(self) -> None:
        if self.options is not None and not isinstance(self.options, TrainOptions):
            raise TypeError(
                f"train.options must be a method's TrainOptions (read a whole RunConfig to have them checked against "
                f"the method), got {type(self.options).__name__}"
            )
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
        for name in ("weight_decay", "logit_adjustment"):
            if not getattr(self, name) >= 0:  # NaN too
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not math.isfinite(self.logit_adjustment):
            raise ValueError(
                f"train.logit_adjustment (tau) must be finite, got {self.logit_adjustment}; 1 = the whole shift"
            )


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs; saved beside every checkpoint."""

    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        """``train.options`` are the method's own: its declared dataclass (defaults when None), or None for a method
        that declares none."""
        declared = method_spec(self.model.method).train_options
        options = self.train.options
        if declared is None and options is not None:
            raise ValueError(
                f"method {self.model.method!r} has no training options of its own, got {type(options).__name__}"
            )
        if declared is not None and options is None:
            object.__setattr__(self, "train", replace(self.train, options=declared()))
        elif declared is not None and not isinstance(options, declared):
            raise ValueError(
                f"train.options of method {self.model.method!r} are {declared.__name__}, got {type(options).__name__}"
            )

    @classmethod
    def _from_dict_hook(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Read ``train.options`` as the method's own training options (see :func:`read_train_options`)."""
        model = data.get("model")
        method = model.get("method", ModelConfig.method) if isinstance(model, dict) else ModelConfig.method
        train = data.get("train")
        if isinstance(train, dict) and isinstance(method, str):
            moved = move_old_option_keys(train)
            if moved:
                log.warning(old_spelling_note(moved))
            data["train"] = read_train_options(train, method)
        return data

    def for_method(self, method: str) -> RunConfig:
        """This config for another method (ablations, sweeps, the demo): the same settings with ``model.method``
        set, keeping the training options the new method also declares and leaving out the old method's others
        (they do not apply to it)."""
        declared = method_spec(method).train_options
        kept = {}
        if declared is not None and self.train.options is not None:
            names = {f.name for f in fields(declared)}
            kept = {k: v for k, v in to_dict(self.train.options).items() if k in names}
        options = from_dict(declared, kept, where="train.options") if declared is not None else None
        return replace(self, model=replace(self.model, method=method), train=replace(self.train, options=options))


def old_option_keys() -> list[str]:
    """The keys a method's training options had when they were written in the ``train:`` section itself (before
    ``train.options``): every registered training option name that is no shared train setting."""
    shared = {f.name for f in fields(TrainConfig)}
    return [key for key in train_option_owners() if key not in shared]


def move_old_option_keys(train: dict[str, Any]) -> list[str]:
    """Move the training options written in the old spelling (``train.gate_cost``) into ``train["options"]``, in
    place; returns the moved names. The old spelling replaces a value of the new one (it comes from an override of
    a saved config)."""
    moved = [key for key in old_option_keys() if key in train]
    options = train.get("options")
    if moved and (options is None or isinstance(options, (Mapping, TrainOptions))):
        merged = dict(to_dict(options) if isinstance(options, TrainOptions) else options or {})
        merged.update({key: train.pop(key) for key in moved})
        train["options"] = merged
        return moved
    return []


def old_spelling_note(moved: Sequence[str]) -> str:
    """The one line said when old-spelling training options are read (``train.gate_cost`` → ``train.options...``)."""
    old = ", ".join(f"train.{key}" for key in moved)
    new = ", ".join(f"train.options.{key}" for key in moved)
    return f"{old}: old spelling, read as {new} (a method's training options live in train.options)"


def read_train_options(train: dict[str, Any], method: str) -> dict[str, Any]:
    """The ``train:`` section with ``options`` read as ``method``'s own training options (an instance of its declared
    dataclass, checked; None for a method that declares none).

    A key that is another method's training option is left out when it has that option's default value (a shared
    YAML such as ``configs/demo.yaml`` serves several methods), with one log line saying so, and refused otherwise:
    it would have no effect.

    Raises:
        ValueError: an unknown method or option (with the method's options), a bad option value, or another
            method's option set away from its default.
    """
    spec = method_spec(method)
    declared = spec.train_options
    own = [f.name for f in fields(declared)] if declared is not None else []
    train = dict(train)
    shared = [f.name for f in fields(TrainConfig) if f.name != "options"]
    for key in train:
        if key not in shared and key != "options":
            raise ValueError(unknown_key(str(key), shared + [f"options.{name}" for name in own], "train"))
    options = train.get("options")
    if options is None or isinstance(options, TrainOptions):
        return train  # checked against the method by RunConfig
    if not isinstance(options, Mapping):
        raise TypeError(f"train.options: expected a mapping of the training options of {method!r}, got {options!r}")
    given = dict(options)
    owners = train_option_owners()
    dropped: list[str] = []
    for key in [k for k in given if k not in own]:
        if key not in owners:
            if declared is None:
                raise ValueError(
                    f"unknown config key 'train.options.{key}': method {method!r} has no training options of its own"
                )
            raise ValueError(unknown_key(str(key), own, "train.options"))
        value = given.pop(key)
        if value != _option_default(owners[key][0], key):
            raise ValueError(
                f"train.options.{key}={value!r} is a training option of {', '.join(owners[key])}, not of "
                f"{method!r}: remove it or set model.method to one of them"
            )
        dropped.append(f"train.options.{key} (of {', '.join(owners[key])})")
    if dropped:
        log.warning(
            "%s: other methods' training options at their defaults, left out for %r", ", ".join(dropped), method
        )
    train["options"] = from_dict(declared, given, where="train.options") if declared is not None else None
    return train


def _option_default(method: str, key: str) -> Any:
    declared = method_spec(method).train_options
    return next(f.default for f in fields(declared) if f.name == key)  # type: ignore[arg-type]


def load_run_config(path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a run config YAML (or start from the defaults with ``path=None``) and apply ``key=value`` overrides.

    Relative paths in ``data.root``, ``data.splits`` and ``model.checkpoint`` are resolved against the YAML's
    folder when they come from the file, against the working directory when they come from an override.
    A method's training options in the old spelling (``train.gate_cost``, in the YAML or an override) are read as
    ``train.options.gate_cost``, with one log line saying the new spelling.
    """
    data: dict[str, Any] = load_yaml(path) if path is not None else {}
    if path is not None:
        _resolve_paths(data, Path(path).resolve().parent)
    train = data.get("train")
    moved = move_old_option_keys(train) if isinstance(train, dict) else []
    old = {f"train.{key}": key for key in old_option_keys()}
    renamed = []
    for item in overrides:
        key, eq, value = item.partition("=")
        if eq and key.strip() in old:
            moved.append(old[key.strip()])
            item = f"train.options.{old[key.strip()]}={value}"
        renamed.append(item)
    apply_overrides(data, renamed)
    _resolve_paths(data, Path.cwd())
    if moved:
        log.warning(old_spelling_note(list(dict.fromkeys(moved))))
    return from_dict(RunConfig, data)


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    for section, key in (("data", "root"), ("data", "splits"), ("model", "checkpoint")):
        sec = data.get(section)
        value = sec.get(key) if isinstance(sec, dict) else None
        if isinstance(value, str) and value and not Path(value).is_absolute():
            sec[key] = str((base / value).resolve())
