"""Training with the full-resolution decoder path (``model.full_res_channels``): from official weights, two steps
reach every part of the path, the trained model's output is no longer the official one, and its checkpoint loads back
strictly with the path."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from lesionsam.config import load_run_config
from lesionsam.data.synthetic import write_synthetic_dataset
from lesionsam.models import Prompts, build_model
from lesionsam.models.checkpoint import load_checkpoint
from lesionsam.models.registry import load_model
from lesionsam.training.trainer import Trainer

FIXTURE_CKPT = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_official_ckpt.pth"


class GradTrainer(Trainer):
    """Records, before each optimiser step, the gradient size of every parameter of the full-resolution path."""

    grads: list[dict[str, float]] = []

    def build_optimizer(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        optimizer = super().build_optimizer(groups)
        assert self.model is not None
        path = dict(self.model.named_parameters())

        def record(*_: Any) -> None:
            GradTrainer.grads.append(
                {
                    n: float(p.grad.abs().sum()) if p.grad is not None else 0.0
                    for n, p in path.items()
                    if "full_res" in n
                }
            )

        optimizer.register_step_pre_hook(record)
        return optimizer


def test_two_steps_from_official_weights_train_every_part_of_the_path(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path / "ds", cases=4, size=40, seed=3)
    cfg = load_run_config(
        None,
        [
            f"data.root={tmp_path / 'ds'}",
            "data.spacing=[1.0,1.0,1.0]",
            "model.preset=tiny",
            "model.method=finetune",
            f"model.checkpoint={FIXTURE_CKPT}",
            "model.full_res_channels=8",
            "train.epochs=1",
            "train.batch_size=1",
            "train.max_steps_per_epoch=2",
            "train.num_clicks=2",
            "train.device=cpu",
            "train.lr=1e-3",
        ],
    )
    GradTrainer.grads = []
    result = GradTrainer(cfg, tmp_path / "run", progress=False).fit()
    first, second = GradTrainer.grads
    assert first and all(n.startswith("full_res.") for n in first)
    assert first["full_res.head.out.weight"] > 0
    assert all(v == 0 for n, v in first.items() if not n.startswith("full_res.head.out."))  # zero-init last conv
    assert all(v > 0 for v in second.values()), {n: v for n, v in second.items() if v == 0}

    assert "full_res_channels: 8" in (tmp_path / "run" / "config.yaml").read_text()
    assert load_checkpoint(result.last_checkpoint)["config"]["model"]["full_res_channels"] == 8
    trained, _ = load_model(result.last_checkpoint)  # strict: the path's weights are in the checkpoint
    official = build_model(replace(cfg.model, full_res_channels=None)).eval()
    fresh = build_model(cfg.model).eval()
    for name, value in fresh.state_dict().items():
        if name.startswith("full_res."):
            assert not torch.equal(trained.state_dict()[name], value), name

    image = torch.randn(1, 1, 64, 64, 64)
    click = Prompts(points=torch.tensor([[[32.0, 32.0, 32.0]]]), labels=torch.ones(1, 1, dtype=torch.int64))
    with torch.no_grad():
        got = trained.decode(trained.encode(image), click)
        want = official.decode(official.encode(image), click)
        residual = got.logits - trained.upsample(got.low_res_logits)
    assert float(residual.abs().max()) > 0  # the path now adds to the logits...
    assert not torch.allclose(got.logits, want.logits)  # ...and the output is no longer the official one
