"""The run folder's files: ``config.yaml`` and ``splits.json`` (written before the first epoch), ``last.pt`` for an
exact resume, and ``train_log.csv``. ``provenance.json``: :mod:`lesionsam.training.provenance`."""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from lesionsam.config import RunConfig
from lesionsam.data.splits import write_splits
from lesionsam.models.checkpoint import CheckpointError, load_checkpoint
from lesionsam.utils.dataclass_io import atomic_write_bytes, from_dict, save_yaml, to_dict

log = logging.getLogger("lesionsam.training.trainer")

#: Columns of ``train_log.csv``, one row per epoch.
LOG_COLUMNS = ("epoch", "step", "train_loss", "val_dice", "lr", "seconds")


def write_run_files(
    out_dir: Path, cfg: RunConfig, config_source: Path | None, splits: dict[str, list[str]] | None
) -> None:
    """``out_dir/config.yaml`` (never over ``config_source``, the file the config was read from) and
    ``out_dir/splits.json`` (never over the ``data.splits`` file it was read from; none when ``splits`` is None)."""
    config_path = out_dir / "config.yaml"
    if not (config_source is not None and config_path.exists() and os.path.samefile(config_source, config_path)):
        save_yaml(cfg, config_path)
    splits_path = out_dir / "splits.json"
    given = cfg.data.splits
    read_here = bool(given) and splits_path.exists() and os.path.samefile(given, splits_path)
    if splits is not None and not read_here:
        write_splits(splits, splits_path)


def resume_run(
    out_dir: Path, cfg: RunConfig, model: nn.Module, optimizer: Any, scheduler: Any
) -> tuple[int, float, list[dict[str, Any]], int]:
    """Load ``out_dir/last.pt`` into the model, optimiser and scheduler; returns (epochs done, best validation Dice,
    history, global step).

    Raises:
        FileNotFoundError: no ``last.pt``.
        CheckpointError: the saved run's model, data or train settings (``train.epochs`` aside) differ from ``cfg``.
    """
    path = out_dir / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no {path}; start without --resume")
    ckpt = load_checkpoint(path)
    try:  # read back as a config, so that a run saved before a change of the config's layout compares by value
        saved = to_dict(from_dict(RunConfig, ckpt["config"]))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"--resume: the saved run's config in {path} no longer reads: {exc}") from None
    now = to_dict(cfg)
    saved_train = {k: v for k, v in saved.get("train", {}).items() if k != "epochs"}
    now_train = {k: v for k, v in now["train"].items() if k != "epochs"}
    for section in ("model", "data"):
        if saved.get(section) != now[section]:
            raise CheckpointError(f"--resume: the {section} config differs from the run in {out_dir}")
    if saved_train != now_train:
        diff = sorted(k for k in now_train if saved_train.get(k) != now_train[k])
        raise CheckpointError(f"--resume: train settings differ from the saved run ({', '.join(diff)})")
    model.load_state_dict(ckpt["state_dict"], strict=True)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    extra = ckpt.get("extra") or {}
    log.info("resumed %s at epoch %d", path, ckpt["epoch"])
    history = list(extra.get("history", []))
    return int(ckpt["epoch"]), float(extra.get("best_val_dice", -math.inf)), history, int(extra.get("global_step", 0))


def write_train_log(path: Path, history: Sequence[dict[str, Any]]) -> Path:
    """``train_log.csv`` (:data:`LOG_COLUMNS`; empty cells for missing values), written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in LOG_COLUMNS})
    return atomic_write_bytes(path, buf.getvalue().encode())
