"""The step contract: the trainer hands a step one :class:`TrainBatch` and gets ``{"loss", **statistics}`` back; losses
are called ``loss(output, batch)``; a method's own statistics come from its model's ``step_statistics`` hook; and the
text-alone decision of validation and the predictor is one rule (:class:`TextCompetition`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from lesionsam.config import load_run_config
from lesionsam.data.synthetic import write_synthetic_dataset
from lesionsam.losses import BatchLoss
from lesionsam.models import Prompts, SegOutput, competing_logits
from lesionsam.models.interface import TextCompetition
from lesionsam.training.steps import TrainBatch
from lesionsam.training.trainer import Trainer
from stand_ins import StandInModel


class _Spy(nn.Module):
    def __init__(self, step: nn.Module, calls: list) -> None:
        super().__init__()
        self.step, self.calls = step, calls

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.calls.append((args, kwargs))
        return self.step(*args, **kwargs)


class SpyTrainer(Trainer):
    """Records how the trainer calls its step and which loss it gives it."""

    calls: list = []
    loss_fn: nn.Module | None = None

    def build_step(self, model, loss_fn, texts):  # type: ignore[no-untyped-def]
        SpyTrainer.loss_fn = loss_fn
        return _Spy(super().build_step(model, loss_fn, texts), SpyTrainer.calls)


def test_the_trainer_hands_one_batch_and_logs_the_methods_own_statistics(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path / "ds", cases=4, size=40, seed=3)
    cfg = load_run_config(
        None,
        [
            f"data.root={tmp_path / 'ds'}",
            "data.spacing=[1.0,1.0,1.0]",
            "model.preset=tiny",
            "model.method=sgp_sam",
            "train.epochs=1",
            "train.batch_size=1",
            "train.max_steps_per_epoch=2",
            "train.num_clicks=2",
            "train.device=cpu",
        ],
    )
    seen: list[dict[str, Any]] = []
    SpyTrainer.calls = []
    trainer = SpyTrainer(
        cfg, tmp_path / "run", progress=False, callbacks=[lambda t, e, i: seen.append(i) if e == "step" else None]
    )
    trainer.fit()
    assert isinstance(SpyTrainer.loss_fn, BatchLoss)
    assert len(SpyTrainer.calls) == 2
    for args, kwargs in SpyTrainer.calls:
        assert kwargs == {} and len(args) == 1 and isinstance(args[0], TrainBatch)
        batch = args[0]
        assert batch.image.shape == batch.label.shape == (1, 1, 64, 64, 64) and batch.rng is not None
    assert 0.0 < SpyTrainer.calls[1][0][0].progress < 1.0
    assert [sorted(i) for i in seen] == [["dice", "epoch", "gate_rate", "loss", "step"]] * 2
    assert all(0.0 <= i["gate_rate"] <= 1.0 and isinstance(i["loss"], float) for i in seen)


def test_step_statistics_are_the_models_own() -> None:
    from lesionsam.models.backbone import get_preset
    from lesionsam.models.methods.sgp import SGPOptions, build_sgp_sam

    torch.manual_seed(0)
    model = build_sgp_sam(get_preset("tiny"), SGPOptions(gate_open_bias=0.5))
    image = torch.randn(2, 1, 64, 64, 64)
    with torch.no_grad():
        out = model.decode(model.encode(image), Prompts(points=torch.full((2, 1, 3), 30.0), labels=torch.ones(2, 1)))
    assert model.step_statistics(out) == {"gate_rate": pytest.approx(float(out.extras["gate_probs"].mean()))}
    assert StandInModel().step_statistics(out) == {}  # the interface's default: nothing of its own


class TextLogits(StandInModel):
    """Each text's logits are a constant: its value in ``LEVELS``."""

    accepted_prompts = frozenset({"text"})
    LEVELS = {"tumour": 2.0, "cyst": 1.0, "vessel": -1.0}
    scores_regions = False

    def forward(self, image: torch.Tensor, prompts: Prompts) -> SegOutput:
        logits = torch.stack([torch.full(image.shape[1:], self.LEVELS[t]) for t in prompts.text])
        return SegOutput(low_res_logits=logits[..., ::4, ::4, ::4], logits=logits, iou=torch.ones(len(logits), 1))


class RegionTextLogits(TextLogits):
    scores_regions = True


def test_text_alone_is_decided_by_one_rule() -> None:
    image = torch.zeros(2, 1, 8, 8, 8)
    own = torch.full((2, 1, 8, 8, 8), 2.0 - 0.5)  # "tumour", offset 0.5
    model = TextLogits(8)
    voxels = TextCompetition.of(model, ["cyst", "vessel"])
    assert voxels.by_voxel and not voxels.by_region
    others = torch.cat([torch.full_like(own, 1.0 - 0.5), torch.full_like(own, -1.0 - 0.5)], dim=1)
    got = voxels.logits(model, model.encode(image), own, offset=0.5)
    assert torch.equal(got, competing_logits(own, others))
    assert float(got.max()) == pytest.approx(1.5 - float(np.log(1 + np.exp(0.5) + np.exp(-1.5))))
    regions = TextCompetition.of(RegionTextLogits(8), ["cyst"])
    assert regions.by_region and not regions.by_voxel  # lesion by lesion: the caller scores the regions
    assert regions.logits(model, image, own) is own
    alone = TextCompetition.of(RegionTextLogits(8), [])
    assert not alone.by_region and not alone.by_voxel and alone.logits(model, image, own) is own
