"""The trainer's DataLoader: ``data.num_workers`` worker processes, pinned memory on CUDA only."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import SequentialSampler, TensorDataset

from lesionsam.config import load_run_config
from lesionsam.data.synthetic import write_synthetic_dataset
from lesionsam.training.trainer import Trainer


def _config(root: Path, workers: int):
    return load_run_config(
        None,
        [
            f"data.root={root}",
            "data.spacing=[1.0,1.0,1.0]",
            f"data.num_workers={workers}",
            "model.preset=tiny",
            "model.method=finetune",
            "train.epochs=1",
            "train.batch_size=2",
            "train.num_clicks=2",
            "train.device=cpu",
        ],
    )


@pytest.mark.parametrize(("device", "pinned"), [("cpu", False), ("cuda", True)])
def test_loader_pins_memory_on_cuda_and_uses_the_configured_workers(device: str, pinned: bool, tmp_path: Path) -> None:
    trainer = Trainer(_config(tmp_path / "unused", 2), tmp_path / "run", progress=False)
    trainer.device = torch.device(device)  # the loader follows the device the trainer puts batches on
    data = TensorDataset(torch.arange(4))
    loader = trainer.loader(data, SequentialSampler(data), seed=0)
    assert loader.pin_memory is pinned
    assert loader.num_workers == 2 and loader.batch_size == 2


def test_training_with_worker_processes_runs_on_cpu(tmp_path: Path) -> None:
    root = write_synthetic_dataset(tmp_path / "ds", cases=4, size=32, seed=1)
    result = Trainer(_config(root, 2), tmp_path / "run", progress=False).fit()
    assert len(result.history) == 1 and math.isfinite(result.history[0]["train_loss"])
    assert result.last_checkpoint is not None and result.last_checkpoint.is_file()
