"""One trainer for every method, with hooks: SAM-Med3D's interactive click training.

Per crop (``TrainConfig`` names the knobs):

1. the image is encoded **once** (``model.encode``: for SGP-SAM this also runs the gates);
2. ``num_clicks`` decoder iterations follow: the first click falls inside the lesion, each later click is
   sampled from the error region of the previous prediction (false negative → positive click, false
   positive → negative click) and the previous low-res logits are fed back as a mask prompt; in
   ``mask_only_iterations`` randomly chosen later iterations only the mask prompt is given (as SAM-Med3D);
3. the loss (the method's default — DiceCE, Dice or Zoom — or ``train.loss``) of every iteration's full-res
   logits is averaged and back-propagated through the decoder and the shared encoder pass.

Hooks to override in a subclass (nnU-Net style): :meth:`build_model`, :meth:`build_loss`,
:meth:`parameter_groups`, :meth:`build_optimizer`, :meth:`build_scheduler`, :meth:`build_datasets`,
:meth:`click_simulator`. Callbacks (``callbacks=[fn(trainer, event, info)]``) see ``"step"`` and ``"epoch"``
events.

Prompt-free methods (``model.prompt_free``, e.g. H-SAM) have no click to simulate: they train on foreground-biased
multi-class crops over whole volumes (:class:`~lesionsam.data.datasets.ClassCropDataset`, lesion-free cases
included), one forward pass per crop (:class:`AutomaticStep`) and a staged loss that also sees the method's stage-1
logits and the training progress (``"hsam"``).

Exact resume: every epoch reseeds torch, NumPy and Python from ``(seed, epoch)`` and the sampler, click and
crop generators from the same numbers, so a run resumed from ``last.pt`` (model, optimiser, scheduler, epoch,
history) replays the interrupted epoch exactly and ends with the same weights as an uninterrupted run.

Distributed: started by ``torchrun``, each process trains on its shard (``DistributedSampler``) and the
interactive step runs inside a ``DistributedDataParallel`` module, so gradients are averaged across ranks
(gloo on CPU, NCCL on GPUs); rank 0 validates and writes the run folder.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, RandomSampler
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from lesionsam.config import RunConfig
from lesionsam.data.datasets import (
    Case,
    ClassCropDataset,
    LesionCropDataset,
    dataset_labels,
    load_msd_cases,
    load_sam_med3d_cases,
    make_splits,
    read_dataset_json,
    read_splits,
    write_splits,
)
from lesionsam.data.prompts import ClickSimulator
from lesionsam.data.transforms import PreprocessConfig, Preprocessor
from lesionsam.losses import build_loss, estimate_prior_shift, loss_prior_shift
from lesionsam.models import Prompts, SegModel, build_model, competing_logits
from lesionsam.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lesionsam.models.methods.sgp import gate_budget
from lesionsam.models.registry import method_spec
from lesionsam.utils.dataclass_io import atomic_write_bytes, save_yaml, to_dict
from lesionsam.utils.paths import check_can_create, refuse_inputs_as_outputs

log = logging.getLogger(__name__)

LOG_COLUMNS = ("epoch", "step", "train_loss", "val_dice", "lr", "seconds")
Callback = Callable[["Trainer", str, dict[str, Any]], None]


# ---------------------------------------------------------------------------------------------- helpers
@dataclass(frozen=True)
class DistContext:
    """This process's place in a ``torchrun`` job (world size 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistContext:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def seed_everything(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed torch, NumPy and Python for one epoch of one process; returns the seed used."""
    value = (seed * 1_000_003 + epoch * 7_919 + rank * 104_729) % (2**31 - 1)
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)
    return value


def dice_score(pred: Tensor, target: Tensor) -> Tensor:
    """Per-sample Dice of two (B, 1, D, H, W) boolean masks (1 when both are empty)."""
    pred, target = pred.flatten(1).float(), target.flatten(1).float()
    inter = (pred * target).sum(1)
    denom = pred.sum(1) + target.sum(1)
    return torch.where(denom > 0, 2 * inter / denom.clamp_min(1e-8), torch.ones_like(denom))


class InteractiveStep(nn.Module):
    """SAM-Med3D's interactive training step as one module (so ``DistributedDataParallel`` can wrap it).

    ``forward(image, label, rng)`` → (loss, stats): one encoder pass, ``num_clicks`` decoder iterations with
    simulated clicks and mask feedback, the mean loss over iterations (+ ``gate_cost`` ×
    :func:`~lesionsam.models.methods.sgp.gate_budget` of the gate-open probabilities, with ``gate_target``, when the
    model reports gates in ``extras["gate_probs"]``).
    """

    def __init__(
        self,
        model: SegModel,
        loss_fn: nn.Module,
        clicks: ClickSimulator,
        *,
        num_clicks: int,
        mask_only_iterations: int,
        gate_cost: float = 0.0,
        gate_target: float | None = None,
        texts: dict[int, list[str]] | None = None,
        text_pairs: bool = False,
        text_contrast: float = 0.0,
        text_competition: float = 0.0,
        region_classes: float = 0.0,
    ) -> None:
        super().__init__()
        if region_classes and not hasattr(model, "region_scores"):
            name = getattr(model, "display_name", type(model).__name__)
            raise ValueError(f"train.region_classes needs a model with a region classifier (refsam3d), not {name}")
        self.region_classes = region_classes
        self.texts = texts or {}
        self.text_pairs = text_pairs and len(self.texts) > 1
        self.text_contrast = text_contrast
        self.text_competition = text_competition
        self.model = model
        self.loss_fn = loss_fn
        self.clicks = clicks
        self.num_clicks = num_clicks
        self.mask_only = mask_only_iterations
        self.gate_cost = gate_cost
        self.gate_target = gate_target

    def forward(
        self,
        image: Tensor,
        label: Tensor,
        rng: np.random.Generator,
        target: Tensor | None = None,
        progress: float = 1.0,
        label_values: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """image, label: (B, 1, S, S, S); label 0/1 float with at least one foreground voxel per sample
        (``progress``, the share of training done, is not used by the interactive step).

        For text-referred methods, ``target`` (B,) holds each crop's label value; a text prompt for it is drawn
        from ``texts`` and given in every iteration, and the first iteration has the text alone (no click). When
        the model also works without text, one batch in four gets no text (clicks only), so both uses train.

        With ``text_pairs`` (and ``label_values``, the crops' label values (B, 1, S, S, S)), a text batch doubles:
        each crop comes again with another target label's text and that label's voxels as target; with
        ``text_contrast`` the text-only logits of the two halves also get :func:`text_margin_loss`, and with
        ``text_competition`` the loss again on their competing logits (each half against background and the other
        half's text, :func:`~lesionsam.models.interface.competing_logits`); with ``region_classes`` every lesion of
        either class in a pair's crop is classified between the pair's two texts (:func:`region_class_loss`). All
        three weights are effective: the returned loss grows by weight × term.

        A crop may have an empty label (a negative crop, ``data.negative_fraction``) only when text is given: its
        clicks then come from the error region of the text-only prediction (a negative click on what was found,
        or a padding click when nothing was), the same rule for the whole batch.
        """
        gt = label > 0.5
        has_lesion = bool(gt.flatten(1).any(1).all())
        text = None
        if self.texts:
            if target is None:
                raise ValueError("a text-referred method needs each crop's target label value")
            text = [str(rng.choice(self.texts[int(t)])) for t in target.tolist()]
            if "text" not in self.model.required_prompts and rng.random() < 0.25 and has_lesion:
                text = None
        paired = False
        if text is not None and self.text_pairs and label_values is not None and target is not None:
            paired = True
            others = [int(rng.choice([v for v in self.texts if v != int(t)])) for t in target.tolist()]
            text = text + [str(rng.choice(self.texts[v])) for v in others]
            other_label = torch.stack([label_values[i] == v for i, v in enumerate(others)]).to(label.dtype)
            image, label = torch.cat([image, image]), torch.cat([label, other_label])
            gt = label > 0.5
            has_lesion = bool(gt.flatten(1).any(1).all())
        if text is None and not has_lesion:
            raise ValueError(
                "a training crop has no voxel of its target label, so there is no lesion for the first click; "
                "negative crops (data.negative_fraction) need a text-referred method"
            )
        total = image.new_zeros(())
        encoded = self.model.encode(image)
        if paired and self.region_classes:
            region = region_class_loss(self.model, encoded, label, text)  # type: ignore[arg-type]
            total = total + self.num_clicks * self.region_classes * region
        later = list(range(1, self.num_clicks))
        mask_only = set(rng.choice(later, size=self.mask_only, replace=False).tolist()) if self.mask_only else set()
        points = labels = low = pred = None
        gates: list[Tensor] = []
        dice = None
        for it in range(self.num_clicks):
            if it == 0 and text is not None:
                prompts = Prompts(text=text)
            elif it == 0:
                points, labels = self.clicks.first(gt, rng)
                prompts = Prompts(points=points, labels=labels)
            elif it in mask_only:
                prompts = Prompts(mask=low, text=text)
            elif points is None:
                points, labels = (
                    self.clicks.first(gt, rng) if has_lesion else self.clicks.next(pred, gt, None, None, rng)
                )
                prompts = Prompts(points=points, labels=labels, mask=low, text=text)
            else:
                points, labels = self.clicks.next(pred, gt, points, labels, rng)
                prompts = Prompts(points=points, labels=labels, mask=low, text=text)
            out = self.model.decode(encoded, prompts)
            total = total + self.loss_fn(out.logits.float(), label)
            if it == 0 and paired and (self.text_contrast or self.text_competition):
                half = label.shape[0] // 2
                a, b = out.logits[:half].float(), out.logits[half:].float()
                if self.text_contrast:
                    margin = text_margin_loss(a, b, label[:half] > 0.5, label[half:] > 0.5)
                    total = total + self.num_clicks * self.text_contrast * margin
                if self.text_competition:
                    competing = torch.cat([competing_logits(a, b), competing_logits(b, a)])
                    total = total + self.num_clicks * self.text_competition * self.loss_fn(competing, label)
            pred = out.logits.detach() > 0
            low = out.low_res_logits.detach()
            if "gate_probs" in out.extras:
                gates.append(out.extras["gate_probs"])
            dice = dice_score(pred, gt)
        loss = total / self.num_clicks
        stats = {"dice": float(dice.mean()) if dice is not None else float("nan")}
        if gates:
            probs = gates[-1]
            if self.gate_cost:
                loss = loss + self.gate_cost * gate_budget(probs, self.gate_target)
            stats["gate_rate"] = float(probs.detach().float().mean())
        return loss, stats


#: Smallest lesion (connected component, voxels of the crop) the per-lesion class term and decision look at.
REGION_MIN_VOXELS = 8


def lesion_components(mask: np.ndarray, min_voxels: int = REGION_MIN_VOXELS) -> list[np.ndarray]:
    """The 26-connected components of a boolean mask with at least ``min_voxels`` voxels, as boolean masks."""
    comps, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    return [m for m in (comps == c for c in range(1, n + 1)) if int(m.sum()) >= min_voxels]


def region_class_loss(model: Any, encoded: Any, label: Tensor, text: Sequence[str]) -> Tensor:
    """Per-lesion class term of a paired text batch (``train.region_classes``).

    The batch's first half holds the crops with their own class's voxels as ``label`` and texts, the second half
    the same crops with the other class's; every lesion (:func:`lesion_components`) of either is scored against
    its crop's two texts by ``model.region_scores`` and gets cross-entropy towards its class. Mean over the
    lesions of the batch; 0 when there is none.
    """
    half = label.shape[0] // 2
    total, count = label.new_zeros(()), 0
    for b in range(half):
        masks, targets = [], []
        for j, lab in enumerate((label[b, 0], label[half + b, 0])):
            for m in lesion_components(lab.detach().cpu().numpy() > 0.5):
                masks.append(m)
                targets.append(j)
        if not masks:
            continue
        regions = torch.from_numpy(np.stack(masks))[:, None].to(label.device)
        scores = model.region_scores(encoded, b, regions, [text[b], text[half + b]])
        target = torch.tensor(targets, device=scores.device)
        total = total + F.cross_entropy(scores.float(), target, reduction="sum")
        count += len(targets)
    return total / count if count else total


def regions_won(model: Any, encoded: Any, mask: Tensor, texts: Sequence[str]) -> Tensor:
    """The lesions of a (1, 1, S, S, S) bool mask on one crop that ``model.region_scores`` gives to ``texts[0]``
    rather than to any other of ``texts`` (every connected component is decided; the rest is dropped)."""
    regions = lesion_components(mask[0, 0].cpu().numpy(), min_voxels=1)
    if not regions:
        return mask
    scores = model.region_scores(encoded, 0, torch.from_numpy(np.stack(regions))[:, None].to(mask.device), texts)
    won = [r for r, s in zip(regions, scores.argmax(1).tolist(), strict=True) if s == 0]
    keep = np.logical_or.reduce(won) if won else np.zeros_like(regions[0])
    return torch.from_numpy(np.asarray(keep))[None, None].to(mask.device)


def text_margin_loss(logits_a: Tensor, logits_b: Tensor, mask_a: Tensor, mask_b: Tensor) -> Tensor:
    """Per-voxel margin between two texts' logits on the same crops.

    On the voxels of text a's class (``mask_a``) ``softplus(l_b - l_a)``, on those of text b's class
    ``softplus(l_a - l_b)``: each text must score its own class's voxels above the other text. Mean over those
    voxels of the batch; 0 when neither class has a voxel (the term then adds nothing).

    Args:
        logits_a, logits_b: (B, 1, S, S, S) float logits for texts a and b.
        mask_a, mask_b: (B, 1, S, S, S) bool voxels of each text's class (disjoint).
    """
    diff = logits_a - logits_b
    terms = torch.cat([F.softplus(-diff[mask_a]), F.softplus(diff[mask_b])])
    return terms.mean() if terms.numel() else logits_a.new_zeros(())


class AutomaticStep(nn.Module):
    """The training step of a prompt-free method as one module (for ``DistributedDataParallel``).

    ``forward(image, label, rng, target, progress)`` → (loss, stats): one forward pass with no prompt; the loss gets
    the (B, K+1, S³) logits, the (B, 1, S³) class-index label and, when it is a staged loss (``loss.staged``), the
    method's ``extras["stage1_logits"]`` and the training progress in [0, 1]. ``stats["dice"]`` is the mean
    foreground Dice of the arg-max prediction (:func:`class_dice`).
    """

    def __init__(self, model: SegModel, loss_fn: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(
        self,
        image: Tensor,
        label: Tensor,
        rng: np.random.Generator | None = None,
        target: Tensor | None = None,
        progress: float = 1.0,
    ) -> tuple[Tensor, dict[str, float]]:
        out = self.model.decode(self.model.encode(image), Prompts())
        if getattr(self.loss_fn, "staged", False):
            loss = self.loss_fn(
                out.logits.float(), label, stage1_logits=_float(out.extras.get("stage1_logits")), progress=progress
            )
        else:
            loss = self.loss_fn(out.logits.float(), label)
        dice = class_dice(out.logits.detach().argmax(1, keepdim=True), label, out.logits.shape[1] - 1)
        return loss, {"dice": float(dice.mean())}


def _float(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.float()


def class_dice(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Per-sample mean foreground Dice of two (B, 1, D, H, W) class-index maps over classes 1..K.

    A class absent from both prediction and target is left out of that sample's mean; a sample with no class in
    either scores 1 (nothing to find, nothing found).
    """
    scores = []
    for c in range(1, num_classes + 1):
        p, t = (pred == c).flatten(1).float(), (target == c).flatten(1).float()
        denom = p.sum(1) + t.sum(1)
        scores.append(torch.where(denom > 0, 2 * (p * t).sum(1) / denom.clamp_min(1e-8), torch.nan))
    stacked = torch.stack(scores, 1)
    valid = ~torch.isnan(stacked)
    mean = torch.where(valid, stacked, 0.0).sum(1) / valid.sum(1).clamp_min(1)
    return torch.where(valid.any(1), mean, torch.ones_like(mean))


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns."""

    out_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_dice: float = float("nan")
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    logit_offset: float = 0.0


class Trainer:
    """Trains any registered method on a lesion data set (see the module docstring).

    Args:
        config: the run config.
        out_dir: the run folder (``config.yaml``, ``splits.json``, ``train_log.csv``, ``last.pt``, ``best.pt``).
        progress: show progress bars with an ETA.
        callbacks: functions called as ``fn(trainer, event, info)`` after each step and epoch.
        config_source: the YAML the config was read from; when it is the run folder's own ``config.yaml`` (the
            resume pattern), that file is read, never rewritten.
    """

    def __init__(
        self,
        config: RunConfig,
        out_dir: str | os.PathLike[str],
        *,
        progress: bool = True,
        callbacks: Sequence[Callback] = (),
        config_source: str | os.PathLike[str] | None = None,
    ) -> None:
        self.cfg = config
        self.config_source = Path(config_source) if config_source is not None else None
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.callbacks = list(callbacks)
        self.dist = DistContext.from_env()
        self.device = self._device()
        self.model: SegModel | None = None
        self._splits: dict[str, list[str]] | None = None
        self.global_step = 0
        self.epoch = 0
        self.logit_offset = 0.0  # train.logit_adjustment x the loss's prior shift: subtracted from the logits

    # ------------------------------------------------------------------------------------------ hooks
    def build_model(self) -> SegModel:
        """The model to train (``build_model(config.model)``, official weights loaded if configured)."""
        model = build_model(self.cfg.model)
        encoder = getattr(model, "image_encoder", None)
        if encoder is not None and hasattr(encoder, "grad_checkpointing"):
            encoder.grad_checkpointing = self.cfg.train.grad_checkpointing
        return model

    def build_loss(self) -> nn.Module:
        """``train.loss`` with ``train.loss_options``, or the method's default loss with the method's default
        options updated by ``train.loss_options``."""
        t = self.cfg.train
        if t.loss:
            return build_loss(t.loss, **t.loss_options)
        spec = method_spec(self.cfg.model.method)
        return build_loss(spec.loss, **{**spec.loss_options, **t.loss_options})

    def parameter_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """AdamW groups by state-dict prefix: encoder, parts new to the backbone, prompt encoder + decoder.

        A frozen encoder gets ``requires_grad=False`` and no group.
        """
        t = self.cfg.train
        lr_enc = t.lr if t.lr_encoder is None else t.lr_encoder
        lr_new = t.lr if t.lr_new is None else t.lr_new
        groups: dict[str, list[nn.Parameter]] = {"encoder": [], "new": [], "decoder": []}
        for name, p in model.named_parameters():
            if name.startswith("image_encoder."):
                if t.freeze_encoder:
                    p.requires_grad_(False)
                    continue
                groups["encoder"].append(p)
            elif name.startswith(("prompt_encoder.", "mask_decoder.")):
                groups["decoder"].append(p)
            else:
                groups["new"].append(p)
        lrs = {"encoder": lr_enc, "new": lr_new, "decoder": t.lr}
        return [{"params": ps, "lr": lrs[g], "name": g} for g, ps in groups.items() if ps]

    def build_optimizer(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(groups, lr=self.cfg.train.lr, weight_decay=self.cfg.train.weight_decay)

    def build_scheduler(
        self, optimizer: torch.optim.Optimizer, total_steps: int
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """Linear warm-up then cosine decay to 0 (or constant) over ``total_steps`` optimiser steps."""
        t = self.cfg.train
        warm, total = t.warmup_steps, max(1, total_steps)

        def factor(step: int) -> float:
            if warm and step < warm:
                return (step + 1) / warm
            if t.schedule == "constant":
                return 1.0
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def estimate_prior_shift(self, loss_fn: nn.Module, train_set: Dataset) -> float:
        """The prior shift of ``loss_fn`` on the training crops, for ``train.logit_adjustment``.

        One crop per training item, drawn with torch's RNG forked and seeded with ``train.seed`` (deterministic: the
        same crops on every rank and on resume, and the training's own random stream is untouched);
        :func:`~lesionsam.losses.loss_prior_shift` of each crop's full-resolution target, averaged over the crops
        where it is defined (those with a lesion and background; 0 for a loss without class weighting).
        """
        shifts = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.train.seed)
            for idx in range(len(train_set)):  # type: ignore[arg-type]
                shifts.append(loss_prior_shift(loss_fn, train_set[idx]["label"][None]))
        return estimate_prior_shift(shifts)

    def click_simulator(self) -> ClickSimulator:
        return ClickSimulator(mode=self.cfg.train.click_mode)

    def label_texts(self) -> dict[int, list[str]]:
        """Text prompts per target label (``data.label_texts``, else the ``dataset.json`` label names)."""
        d = self.cfg.data
        targets = d.target_labels or (d.target_label,)
        given = {int(k): [str(t) for t in v] for k, v in d.label_texts.items()}
        if not given:
            names = dataset_labels(read_dataset_json(d.root)) or {}
            given = {int(k): [str(v)] for k, v in names.items()}
        missing = [t for t in targets if not given.get(t)]
        if missing:
            raise ValueError(
                f"no text prompt for label value(s) {missing}: set data.label_texts (e.g. "
                '{"2": ["liver tumour"]}) or name the labels in dataset.json'
            )
        return {t: given[t] for t in targets}

    def load_cases(self) -> list[Case]:
        d = self.cfg.data
        if not d.root:
            raise ValueError("data.root is empty: set it in the config or with data.root=PATH")
        cases = load_msd_cases(d.root) if d.layout == "msd" else load_sam_med3d_cases(d.root)
        return cases

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        """Training and validation crop data sets from a seeded split (written to ``splits.json``).

        Cases without any voxel of the target label are left out (a click needs a lesion); they are listed
        in the log. With ``data.negative_fraction`` that share of training crops is centred away from the target
        (see :class:`LesionCropDataset`), and the validation set adds one negative crop per case and target label
        (on the largest lesion of another target label, else a seeded random place), scored as Dice 1 when
        nothing is predicted there and 0 otherwise.
        """
        d = self.cfg.data
        targets = d.target_labels or (d.target_label,)
        cases = self.load_cases()
        if self.model is not None and self.model.prompt_free:
            return self._class_datasets(cases, targets)
        present = {c.case_id: _labels_present(c, targets) for c in cases}
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
        train_cases, val_cases = self._split(with_target, "with the target label")
        crop = self.cfg.model.backbone.img_size
        pre = Preprocessor(PreprocessConfig(spacing=d.spacing, modality=d.modality, crop_size=crop))

        def crops(chosen: list[Case], **kw: Any) -> list[Dataset]:
            return [
                _Targeted(
                    LesionCropDataset(
                        subset, pre, target_label=t, channel=d.channel, cache=d.cache, distractors=targets, **kw
                    ),
                    t,
                )
                for t in targets
                if (subset := [c for c in chosen if t in present[c.case_id]])
            ]

        def joined(parts: list[Dataset]) -> Dataset | None:
            return None if not parts else parts[0] if len(parts) == 1 else ConcatDataset(parts)

        train = joined(crops(train_cases, negatives=d.negative_fraction))
        assert train is not None
        val = crops(val_cases, lesion="largest", jitter=0)
        if d.negative_fraction and val:
            val += crops(val_cases, lesion="largest", jitter=0, negatives=1.0)
        return train, joined(val)

    def _split(self, cases: list[Case], what: str) -> tuple[list[Case], list[Case]]:
        """Training and validation cases: ``data.splits``, or a seeded split of ``cases`` (``splits.json``)."""
        d = self.cfg.data
        if d.splits:
            splits = read_splits(d.splits)
        else:
            splits = make_splits(cases, seed=d.split_seed, val_fraction=d.val_fraction)
        self._splits = splits  # written to splits.json by fit(), once every input is known to be valid
        by_id = {c.case_id: c for c in cases}
        train_cases = [by_id[i] for i in splits.get("train", []) if i in by_id]
        val_cases = [by_id[i] for i in splits.get("val", []) if i in by_id]
        if not train_cases:
            raise ValueError(f"the split leaves no training case {what}".rstrip())
        return train_cases, val_cases

    def _class_datasets(self, cases: list[Case], targets: tuple[int, ...]) -> tuple[Dataset, Dataset | None]:
        """Prompt-free methods: foreground-biased multi-class crops of every case (lesion-free ones too); the
        validation set has, per case, a crop on its largest lesion and a seeded random crop."""
        d = self.cfg.data
        model = self.model
        assert model is not None
        classes = getattr(model, "num_classes", len(targets))
        if classes != len(targets):
            raise ValueError(
                f"the model segments {classes} lesion class(es) but the data name {len(targets)} target label(s) "
                f"{list(targets)}: set model.options.num_classes={len(targets)}"
            )
        present = {c.case_id: _labels_present(c, targets) for c in cases}
        if not any(present.values()):
            raise ValueError(f"no case in {d.root} has any of the label values {list(targets)} (data.target_labels)")
        train_cases, val_cases = self._split(cases, "")
        pre = Preprocessor(
            PreprocessConfig(spacing=d.spacing, modality=d.modality, crop_size=self.cfg.model.backbone.img_size)
        )
        kw = {"classes": targets, "channel": d.channel, "cache": d.cache}
        train = _Targeted(ClassCropDataset(train_cases, pre, foreground=d.foreground_fraction, **kw), 0)
        if not val_cases:
            return train, None
        val = ConcatDataset(
            [
                _Targeted(ClassCropDataset(val_cases, pre, foreground=1.0, lesion="largest", jitter=0, **kw), 0),
                _Targeted(ClassCropDataset(val_cases, pre, foreground=0.0, **kw), 0),
            ]
        )
        return train, val

    # ------------------------------------------------------------------------------------------ loop
    def fit(self, *, resume: bool = False) -> TrainResult:
        """Train for ``train.epochs`` epochs (continuing from ``last.pt`` with ``resume``)."""
        t = self.cfg.train
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if self.dist.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        check_can_create(self.out_dir, what="run folder", folder=True)  # creates nothing yet
        written = [("the run folder's", self.out_dir / n) for n in ("last.pt", "best.pt", "train_log.csv")]
        refuse_inputs_as_outputs(written, [("model.checkpoint", self.cfg.model.checkpoint)])
        seed_everything(t.seed, epoch=-1)  # the initial weights depend on the seed only
        model = self.build_model().to(self.device)
        self.model = model
        train_set, val_set = self.build_datasets()  # after the model: a prompt-free one trains on other crops
        if self.cfg.data.negative_fraction and not _takes_text(model):
            raise ValueError(
                f"data.negative_fraction={self.cfg.data.negative_fraction} needs a method prompted without a click "
                f"(text-referred, e.g. refsam3d); {self.cfg.model.method!r} starts from a click inside the lesion. "
                "Set data.negative_fraction=0"
            )
        groups = self.parameter_groups(model)
        optimizer = self.build_optimizer(groups)
        per_epoch = self._steps_per_epoch(train_set)
        opt_steps = math.ceil(per_epoch / t.accumulate) * t.epochs
        scheduler = self.build_scheduler(optimizer, opt_steps)
        history: list[dict[str, Any]] = []
        best = -math.inf
        start = 0
        if resume:
            start, best, history = self._resume(model, optimizer, scheduler)
        loss_fn = self.build_loss().to(self.device)
        if t.logit_adjustment:
            if model.prompt_free:
                raise ValueError(
                    f"train.logit_adjustment is for sigmoid (one-vs-rest) losses; {self.cfg.model.method!r} is "
                    "prompt-free with softmax classes: set train.logit_adjustment=0"
                )
            shift = self.estimate_prior_shift(loss_fn, train_set)
            self.logit_offset = t.logit_adjustment * shift
            log.info(
                "logit adjustment: %.3g x prior shift %.3f = %.3f off every logit",
                t.logit_adjustment,
                shift,
                self.logit_offset,
            )
        texts = self.label_texts() if not model.prompt_free and _takes_text(model) else None
        # Every input has been read and checked: only now is the run folder created or touched, so a failure above
        # leaves an existing run folder byte-for-byte as it was.
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:
            config_path = self.out_dir / "config.yaml"
            src = self.config_source
            if not (src is not None and config_path.exists() and os.path.samefile(src, config_path)):
                save_yaml(self.cfg, config_path)  # never over the config file it was read from
            splits_path = self.out_dir / "splits.json"
            given = self.cfg.data.splits
            read_here = bool(given) and splits_path.exists() and os.path.samefile(given, splits_path)
            if self._splits is not None and not read_here:  # never over the data.splits file it was read from
                write_splits(self._splits, splits_path)
        step_module: nn.Module
        if model.prompt_free:
            step_module = AutomaticStep(model, loss_fn)
        else:
            step_module = InteractiveStep(
                model,
                loss_fn,
                self.click_simulator(),
                num_clicks=t.num_clicks,
                mask_only_iterations=t.mask_only_iterations,
                gate_cost=t.gate_cost,
                gate_target=t.gate_target,
                texts=texts,
                text_pairs=t.text_pairs,
                text_contrast=t.text_contrast,
                text_competition=t.text_competition,
                region_classes=t.region_classes,
            )
        if self.dist.enabled:
            step_module = nn.parallel.DistributedDataParallel(
                step_module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        result = TrainResult(out_dir=self.out_dir, history=history, logit_offset=self.logit_offset)
        t_start = time.perf_counter()
        for epoch in range(start, t.epochs):
            self.epoch = epoch
            row = self._train_epoch(step_module, model, optimizer, scheduler, train_set, epoch, t_start, start)
            if val_set is not None and ((epoch + 1) % t.val_every == 0 or epoch + 1 == t.epochs):
                row["val_dice"] = self.validate(model, val_set) if self.dist.is_main else float("nan")
            history.append(row)
            improved = self.dist.is_main and row.get("val_dice") is not None and row["val_dice"] > best
            if improved:
                best = row["val_dice"]
            if self.dist.is_main:
                self._write_log(history)
                extra = {"best_val_dice": best, "global_step": self.global_step, "history": history}
                extra["logit_adjustment"] = self.logit_offset  # what the predictor subtracts from the logits
                if texts:  # the class texts it was trained on: text-alone prediction decides between them
                    extra["class_texts"] = {str(k): list(v) for k, v in texts.items()}
                last = self._save(self.out_dir / "last.pt", model, optimizer, scheduler, epoch + 1, row, extra)
                result.last_checkpoint = last
                if improved or val_set is None:
                    result.best_checkpoint = self._save(
                        self.out_dir / "best.pt", model, optimizer, scheduler, epoch + 1, row, extra
                    )
            if self.dist.enabled:
                dist.barrier()
            self._emit("epoch", {"epoch": epoch, **row})
        result.best_val_dice = best if best > -math.inf else float("nan")
        if result.best_checkpoint is None and (self.out_dir / "best.pt").exists():
            result.best_checkpoint = self.out_dir / "best.pt"
        if result.last_checkpoint is None and (self.out_dir / "last.pt").exists():
            result.last_checkpoint = self.out_dir / "last.pt"
        return result

    def _train_epoch(
        self,
        step_module: nn.Module,
        model: SegModel,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        train_set: Dataset,
        epoch: int,
        t_start: float,
        start_epoch: int,
    ) -> dict[str, Any]:
        t = self.cfg.train
        seed = seed_everything(t.seed, epoch, self.dist.rank)
        rng = np.random.default_rng(seed)
        if self.dist.enabled:
            sampler = DistributedSampler(
                train_set, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True, seed=t.seed
            )
            sampler.set_epoch(epoch)
        else:
            sampler = RandomSampler(train_set, generator=torch.Generator().manual_seed(seed))
        loader = DataLoader(
            train_set,
            batch_size=t.batch_size,
            sampler=sampler,
            num_workers=self.cfg.data.num_workers,
            generator=torch.Generator().manual_seed(seed),
            collate_fn=_collate,
        )
        per_epoch = self._steps_per_epoch(train_set)
        model.train()
        losses: list[float] = []
        t0 = time.perf_counter()
        bar = tqdm(
            total=per_epoch,
            desc=f"epoch {epoch + 1}/{t.epochs}",
            unit="step",
            disable=not (self.progress and self.dist.is_main),
            leave=False,
        )
        optimizer.zero_grad(set_to_none=True)
        for step, batch in enumerate(loader):
            if step >= per_epoch:
                break
            image = batch["image"].to(self.device)
            label = batch["label"].to(self.device)
            target = batch["target"]
            last_micro = (step + 1) % t.accumulate == 0 or step + 1 == per_epoch
            sync = nullcontext() if (last_micro or not self.dist.enabled) else step_module.no_sync()
            with sync:
                with self._autocast():
                    progress = (epoch + step / per_epoch) / t.epochs
                    values = batch.get("label_values")
                    if values is not None:
                        loss, stats = step_module(image, label, rng, target, progress, values.to(self.device))
                    else:
                        loss, stats = step_module(image, label, rng, target, progress)
                (loss / t.accumulate).backward()
            if last_micro:
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                self.global_step += 1
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", dice=f"{stats['dice']:.3f}")
            self._emit("step", {"epoch": epoch, "step": step, "loss": losses[-1], **stats})
        bar.close()
        seconds = time.perf_counter() - t0
        done = epoch + 1 - start_epoch
        eta = (time.perf_counter() - t_start) / done * (t.epochs - epoch - 1)
        if self.dist.is_main:
            log.info("epoch %d/%d: loss %.4f, %.1f s, ETA %.0f s", epoch + 1, t.epochs, np.mean(losses), seconds, eta)
        return {
            "epoch": epoch + 1,
            "step": self.global_step,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "val_dice": None,
            "lr": float(optimizer.param_groups[-1]["lr"]),
            "seconds": round(seconds, 3),
        }

    @torch.no_grad()
    def validate(self, model: SegModel, val_set: Dataset) -> float:
        """Mean Dice over validation crops: ``train.val_clicks`` deterministic centre clicks each, or, for a
        text-referred method, the label's first text prompt (alone, then with centre clicks; with several target
        labels the text alone is decided against the other labels' first texts, as
        :meth:`~lesionsam.inference.predictor.Predictor.predict_text` does: lesion by lesion with a region
        classifier (:func:`regions_won`), else voxel by voxel); for a prompt-free method the mean foreground Dice
        of its arg-max (:func:`class_dice`). Click-prompted logits are thresholded after the logit-adjustment offset
        (:attr:`logit_offset`, ``train.logit_adjustment``) is subtracted, as the predictor does, so ``best.pt`` is
        chosen on what the predictor will output."""
        if model.prompt_free:
            return self._mean_over(val_set, model, lambda item: self._score_automatic(model, item))
        clicks = ClickSimulator(mode="center")
        texts = self.label_texts() if _takes_text(model) else None
        return self._mean_over(val_set, model, lambda item: self._score_interactive(model, item, clicks, texts))

    def _mean_over(self, val_set: Dataset, model: SegModel, score: Callable[[dict[str, Any]], float]) -> float:
        """``score`` of every validation item, averaged, in eval mode and with torch's RNG forked and seeded."""
        model.eval()
        scores = []
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(0)
            for idx in range(len(val_set)):
                with self._autocast():
                    scores.append(score(val_set[idx]))
        model.train()
        return float(np.mean(scores)) if scores else float("nan")

    def _score_interactive(
        self, model: SegModel, item: dict[str, Any], clicks: ClickSimulator, texts: dict[int, list[str]] | None
    ) -> float:
        image = item["image"][None].to(self.device)
        gt = item["label"][None].to(self.device) > 0.5
        text = [texts[int(item["target"])][0]] if texts else None
        rivals = [t[0] for v, t in (texts or {}).items() if v != int(item["target"])]
        points = labels = low = pred = None
        encoded = model.encode(image)
        for it in range(self.cfg.train.val_clicks):
            if it == 0 and text is not None:
                prompts = Prompts(text=text)
            else:
                if points is None and bool(gt.any()):
                    points, labels = clicks.first(gt)
                else:  # after a text-only prediction of a negative crop: click on its errors
                    points, labels = clicks.next(pred, gt, points, labels)
                prompts = Prompts(points=points, labels=labels, mask=low, text=text)
            out = model.decode(encoded, prompts)
            logits = out.logits.float() - self.logit_offset  # as the predictor will threshold them
            pred, low = logits > 0, out.low_res_logits
            if it == 0 and text is not None and rivals and hasattr(model, "region_scores"):
                pred = regions_won(model, encoded, pred, [*text, *rivals])
            elif it == 0 and text is not None and rivals:
                others = torch.cat([model.decode(encoded, Prompts(text=[r])).logits for r in rivals], dim=1)
                pred = competing_logits(logits, others.float() - self.logit_offset) > 0
        return float(dice_score(pred, gt).mean())

    def _score_automatic(self, model: SegModel, item: dict[str, Any]) -> float:
        out = model(item["image"][None].to(self.device))
        label = item["label"][None].to(self.device)
        return float(class_dice(out.logits.argmax(1, keepdim=True), label, out.logits.shape[1] - 1).mean())

    # ------------------------------------------------------------------------------------------ internals
    def _device(self) -> torch.device:
        want = self.cfg.train.device
        if want == "cuda" and not torch.cuda.is_available():
            raise ValueError("train.device=cuda but no CUDA GPU is available; use train.device=cpu")
        if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
            return torch.device("cpu")
        return torch.device("cuda", self.dist.local_rank)

    def _autocast(self) -> Any:
        if self.device.type == "cuda" and self.cfg.train.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _steps_per_epoch(self, train_set: Dataset) -> int:
        t = self.cfg.train
        per_rank = math.ceil(len(train_set) / self.dist.world_size)  # type: ignore[arg-type]
        steps = math.ceil(per_rank / t.batch_size)
        return min(steps, t.max_steps_per_epoch) if t.max_steps_per_epoch else steps

    def _emit(self, event: str, info: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb(self, event, info)

    def _save(self, path: Path, model, optimizer, scheduler, epoch: int, row: dict, extra: dict) -> Path:
        metrics = {k: v for k, v in row.items() if isinstance(v, (int, float)) and v is not None}
        return save_checkpoint(
            path,
            model=model,
            config=self.cfg,
            method=self.cfg.model.method,
            optimizer=optimizer,
            scheduler=scheduler,
            epoch=epoch,
            metrics=metrics,
            extra=extra,
        )

    def _resume(self, model: nn.Module, optimizer, scheduler) -> tuple[int, float, list[dict[str, Any]]]:
        path = self.out_dir / "last.pt"
        if not path.is_file():
            raise FileNotFoundError(f"--resume: no {path}; start without --resume")
        ckpt = load_checkpoint(path)
        saved, now = ckpt["config"], to_dict(self.cfg)
        saved_train = {k: v for k, v in saved.get("train", {}).items() if k != "epochs"}
        now_train = {k: v for k, v in now["train"].items() if k != "epochs"}
        for section in ("model", "data"):
            if saved.get(section) != now[section]:
                raise CheckpointError(f"--resume: the {section} config differs from the run in {self.out_dir}")
        if saved_train != now_train:
            diff = sorted(k for k in now_train if saved_train.get(k) != now_train[k])
            raise CheckpointError(f"--resume: train settings differ from the saved run ({', '.join(diff)})")
        model.load_state_dict(ckpt["state_dict"], strict=True)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        extra = ckpt.get("extra") or {}
        self.global_step = int(extra.get("global_step", 0))
        log.info("resumed %s at epoch %d", path, ckpt["epoch"])
        return int(ckpt["epoch"]), float(extra.get("best_val_dice", -math.inf)), list(extra.get("history", []))

    def _write_log(self, history: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in LOG_COLUMNS})
        atomic_write_bytes(self.out_dir / "train_log.csv", buf.getvalue().encode())


class _Targeted(Dataset):
    """A crop data set whose items also say which label value they target (for text prompts)."""

    def __init__(self, dataset: LesionCropDataset, target: int) -> None:
        self.dataset, self.target = dataset, int(target)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.dataset[index], "target": self.target}


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    batch = {
        "image": torch.stack([i["image"] for i in items]),
        "label": torch.stack([i["label"] for i in items]),
        "target": torch.tensor([i["target"] for i in items]),
        "case_id": [i["case_id"] for i in items],
    }
    if all("label_values" in i for i in items):
        batch["label_values"] = torch.stack([i["label_values"] for i in items])
    return batch


def _takes_text(model: SegModel) -> bool:
    return "text" in model.required_prompts | model.accepted_prompts


def _labels_present(case: Case, values: Sequence[int]) -> set[int]:
    """Which of ``values`` occur in the case's label map."""
    arr = np.asarray(case.read_label().array)
    return {v for v in values if (arr == v).any()}
