"""Logit adjustment (``train.logit_adjustment``): estimated on the training crops, stored in the checkpoint, applied
by validation and by the predictor."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lesionsam.config import RunConfig, load_run_config
from lesionsam.data.synthetic import write_synthetic_dataset
from lesionsam.inference.predictor import Predictor
from lesionsam.models.checkpoint import load_checkpoint
from lesionsam.training.trainer import Trainer


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "ds"
    write_synthetic_dataset(root, cases=4, size=40, seed=3)
    return root


def _config(root: Path, *extra: str) -> RunConfig:
    base = [
        f"data.root={root}",
        "data.spacing=[1.0,1.0,1.0]",
        "model.preset=tiny",
        "model.method=finetune",
        "train.loss=zoom",
        "train.epochs=1",
        "train.batch_size=2",
        "train.num_clicks=2",
        "train.mask_only_iterations=1",
        "train.device=cpu",
        "train.lr=1e-3",
    ]
    return load_run_config(None, [*base, *extra])


def _hand_shift(cfg: RunConfig, beta: float) -> float:
    """beta x mean log(n_bg / n_fg) of one crop per training item, drawn as the trainer documents."""
    train_set, _ = Trainer(cfg, "/nonexistent-unused", progress=False).build_datasets()
    values = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        for idx in range(len(train_set)):
            label = train_set[idx]["label"].numpy()
            n_fg = float((label > 0.5).sum())
            if 0 < n_fg < label.size:
                values.append(math.log((label.size - n_fg) / n_fg))
    return beta * float(np.mean(values))


def test_offset_is_estimated_stored_and_read_by_the_predictor(dataset: Path, tmp_path: Path) -> None:
    cfg = _config(dataset, "train.logit_adjustment=0.8", "train.loss_options={balance: partial, beta: 0.5}")
    want = 0.8 * _hand_shift(cfg, beta=0.5)
    assert want > 1.0  # small lesions in 64³ crops
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    result = trainer.fit()
    assert result.logit_offset == pytest.approx(want, rel=1e-9) and trainer.logit_offset == result.logit_offset
    for name in ("last.pt", "best.pt"):
        stored = load_checkpoint(tmp_path / "run" / name)["extra"]["logit_adjustment"]
        assert isinstance(stored, float) and stored == pytest.approx(want, rel=1e-9)
    predictor = Predictor.from_checkpoint(tmp_path / "run" / "best.pt")
    assert predictor.logit_offset == pytest.approx(want, rel=1e-9)
    assert Predictor.from_checkpoint(tmp_path / "run" / "best.pt", logit_offset=0.0).logit_offset == 0.0
    # Validation thresholds the adjusted logits: an enormous offset leaves nothing found on lesion crops.
    _, val_set = trainer.build_datasets()
    assert val_set is not None and len(val_set) > 0
    trainer.logit_offset = 1e6
    assert trainer.validate(trainer.model, val_set) == 0.0
    trainer.logit_offset = -1e6  # everything found: Dice = 2 n_fg / (n_fg + S³) < 0.1
    assert trainer.validate(trainer.model, val_set) < 0.1


def test_no_adjustment_stores_zero_and_a_loss_without_class_weights_has_no_shift(dataset: Path, tmp_path: Path) -> None:
    Trainer(_config(dataset), tmp_path / "a", progress=False).fit()
    assert load_checkpoint(tmp_path / "a" / "last.pt")["extra"]["logit_adjustment"] == 0.0
    assert Predictor.from_checkpoint(tmp_path / "a" / "last.pt").logit_offset == 0.0
    result = Trainer(
        _config(dataset, "train.loss=dice", "train.logit_adjustment=1.0"), tmp_path / "b", progress=False
    ).fit()
    assert result.logit_offset == 0.0


def test_logit_adjustment_is_checked() -> None:
    with pytest.raises(ValueError, match=r"train.logit_adjustment must be >= 0, got -1"):
        load_run_config(None, ["train.logit_adjustment=-1"])
    with pytest.raises(ValueError, match=r"train.logit_adjustment \(tau\) must be finite"):
        load_run_config(None, ["train.logit_adjustment=.inf"])


def test_sgp_sam_trains_with_a_zoomed_focal_a_gate_target_and_logit_adjustment(dataset: Path, tmp_path: Path) -> None:
    cfg = _config(
        dataset,
        "model.method=sgp_sam",
        "model.options={gate_pool: [mean, max, std]}",
        "train.loss_options={balance: zoomed, margin: 4, lambda_focal: 1.0}",
        "train.logit_adjustment=1.0",
        "train.gate_cost=0.1",
        "train.gate_target=0.5",
    )
    result = Trainer(cfg, tmp_path / "run", progress=False).fit()
    assert 0 < result.logit_offset < _hand_shift(cfg, beta=1.0)  # the box holds fewer background voxels than the crop
    predictor = Predictor.from_checkpoint(result.last_checkpoint)
    assert predictor.logit_offset == pytest.approx(result.logit_offset)
