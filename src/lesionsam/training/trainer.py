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

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from lesionsam.config import RunConfig
from lesionsam.data.clicks import ClickSimulator
from lesionsam.data.dataset_json import dataset_labels, read_dataset_json
from lesionsam.data.layouts import Case
from lesionsam.losses import BatchLoss, batch_loss, build_loss, estimate_prior_shift, loss_prior_shift
from lesionsam.models import SegModel, build_model
from lesionsam.models.checkpoint import save_checkpoint
from lesionsam.models.registry import method_spec, methods_training_with
from lesionsam.training.data import check_dataset, class_datasets, collate, lesion_datasets, load_cases
from lesionsam.training.distributed import DistContext, seed_everything
from lesionsam.training.provenance import initial_weights, record_resume, run_provenance, write_provenance
from lesionsam.training.run_files import resume_run, write_run_files, write_train_log
from lesionsam.training.steps import AutomaticStep, InteractiveStep, TrainBatch
from lesionsam.training.text_step import TextStep
from lesionsam.training.validation import validate
from lesionsam.utils.paths import check_can_create, refuse_inputs_as_outputs

log = logging.getLogger(__name__)

Callback = Callable[["Trainer", str, dict[str, Any]], None]

#: The training step of each kind a method may declare (``MethodSpec.training``).
STEPS: dict[str, type[InteractiveStep] | type[AutomaticStep]] = {
    "interactive": InteractiveStep,
    "text": TextStep,
    "automatic": AutomaticStep,
}


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
        out_dir: the run folder (``config.yaml``, ``splits.json``, ``provenance.json``, ``train_log.csv``, ``last.pt``,
            ``best.pt``).
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
        #: How the method trains, as its registration declares: "interactive", "text" or "automatic".
        self.step_kind = method_spec(config.model.method).training

    # ------------------------------------------------------------------------------------------ hooks
    def build_model(self) -> SegModel:
        """The model to train (``build_model(config.model)``, official weights loaded if configured)."""
        model = build_model(self.cfg.model)
        model.set_grad_checkpointing(self.cfg.train.grad_checkpointing)
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

    def build_step(self, model: SegModel, loss_fn: BatchLoss, texts: dict[int, list[str]] | None) -> nn.Module:
        """The training step the method declares (:data:`STEPS` by ``MethodSpec.training``), from ``train``: called
        as ``step(TrainBatch)``, it returns ``{"loss": tensor, **statistics}``."""
        step = STEPS[self.step_kind]
        return step.from_config(model, loss_fn, self.cfg.train, clicks=self.click_simulator(), texts=texts)

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
        return load_cases(self.cfg)

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        """Training and validation crop data sets from a seeded split (written to ``splits.json`` by :meth:`fit`):
        :func:`~lesionsam.training.data.lesion_datasets` for a prompted method, else
        :func:`~lesionsam.training.data.class_datasets`."""
        cases = self.load_cases()
        if self.step_kind == "automatic":
            assert self.model is not None, "build_datasets: the model is built first (its class count)"
            train, val, self._splits = class_datasets(self.cfg, cases, self.model.num_classes)
        else:
            train, val, self._splits = lesion_datasets(self.cfg, cases)
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
        model = self.build_model()
        t_hash = time.perf_counter()
        weights = initial_weights(self.cfg.model.checkpoint, model, t.seed) if self.dist.is_main else {}
        hash_seconds = time.perf_counter() - t_hash
        model = model.to(self.device)
        self.model = model
        train_set, val_set = self.build_datasets()  # after the model: a prompt-free one trains on other crops
        check_dataset(self.cfg)  # every image and label readable, finite, on one grid, with known label values
        if self.cfg.data.negative_fraction and self.step_kind != "text":
            raise ValueError(
                f"data.negative_fraction={self.cfg.data.negative_fraction} needs a method prompted without a click "
                f"(text-referred: {', '.join(methods_training_with('text'))}); {self.cfg.model.method!r} starts "
                "from a click inside the lesion. "
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
            if self.step_kind == "automatic":
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
        texts = self.label_texts() if self.step_kind == "text" else None
        if self.dist.is_main:  # what the numbers depend on: versions, threads, device, weights and data hashes
            cases, world = self.load_cases(), self.dist.world_size
            record = run_provenance(self.cfg, cases, self._splits, self.device, world, weights, hash_seconds)
        # Every input has been read and checked: only now is the run folder created or touched, so a failure above
        # leaves an existing run folder byte-for-byte as it was.
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:  # config.yaml, splits.json and provenance.json, before the first epoch
            write_run_files(self.out_dir, self.cfg, self.config_source, self._splits)
            if resume:
                record_resume(self.out_dir, record, start)  # logs what differs from the run's start
            else:
                write_provenance(self.out_dir, record)
        step_module = self.build_step(model, batch_loss(loss_fn), texts)  # the steps call loss(output, batch)
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
        loader = self.loader(train_set, sampler, seed)
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
            values = batch.get("label_values")
            crops = TrainBatch(
                image=batch["image"].to(self.device, non_blocking=True),
                label=batch["label"].to(self.device, non_blocking=True),
                rng=rng,
                target=batch["target"],
                label_values=values.to(self.device) if values is not None else None,
                progress=(epoch + step / per_epoch) / t.epochs,
            )
            last_micro = (step + 1) % t.accumulate == 0 or step + 1 == per_epoch
            sync = nullcontext() if (last_micro or not self.dist.enabled) else step_module.no_sync()
            with sync:
                with self._autocast():
                    stats = step_module(crops)
                loss = stats.pop("loss")
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

    def loader(self, train_set: Dataset, sampler: Any, seed: int) -> DataLoader:
        """The training batches: ``data.num_workers`` worker processes, page-locked (pinned) memory on CUDA."""
        return DataLoader(
            train_set,
            batch_size=self.cfg.train.batch_size,
            sampler=sampler,
            num_workers=self.cfg.data.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(seed),
            collate_fn=collate,
        )

    def validate(self, model: SegModel, val_set: Dataset) -> float:
        """Mean Dice over the validation crops (:func:`~lesionsam.training.validation.validate`), with this run's
        ``train.val_clicks``, logit-adjustment offset and, for a text-referred method, the label texts."""
        texts = self.label_texts() if self.step_kind == "text" else None
        return validate(
            model,
            val_set,
            device=self.device,
            val_clicks=self.cfg.train.val_clicks,
            logit_offset=self.logit_offset,
            texts=texts,
            autocast=self._autocast,
        )

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
        start, best, history, self.global_step = resume_run(self.out_dir, self.cfg, model, optimizer, scheduler)
        return start, best, history

    def _write_log(self, history: list[dict[str, Any]]) -> None:
        write_train_log(self.out_dir / "train_log.csv", history)
