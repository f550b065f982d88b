"""Methods declare their loss and its default options; ``train.loss_options`` override them."""

from __future__ import annotations

from pathlib import Path

from lesionsam.config import load_run_config
from lesionsam.training.trainer import Trainer


def _loss(tmp_path: Path, *overrides: str):
    cfg = load_run_config(None, ["model.preset=tiny", "train.device=cpu", *overrides])
    return Trainer(cfg, tmp_path, progress=False).build_loss()


def test_zoom_methods_default_to_the_reading_chosen_on_validation(tmp_path: Path) -> None:
    """Plain focal (no voxel balance): best validation Dice over three seeds in ``lesionsam sweep --stage loss``."""
    for method in ("sgp_sam", "finetune_zoom"):
        reading = _loss(tmp_path, f"model.method={method}").focal.reading
        assert reading.balance == "none"


def test_train_loss_options_override_the_method_defaults(tmp_path: Path) -> None:
    loss = _loss(tmp_path, "model.method=sgp_sam", "train.loss_options={balance: full, lambda_focal: 0.5}")
    assert loss.focal.reading.balance == "full" and loss.lambda_focal == 0.5
    # Another loss named explicitly takes none of the method's options.
    assert type(_loss(tmp_path, "model.method=sgp_sam", "train.loss=dice")).__name__ == "SigmoidLoss"
