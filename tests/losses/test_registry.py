"""The loss registry: every name builds, runs as ``loss(logits, target)`` and refuses bad names and options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

from lesionsam.losses import BalancedFocalLoss, ZoomLoss, build_loss, known_losses, loss_options, register_loss
from lesionsam.losses import registry as registry_module


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 1, 8, 8, 8, generator=generator)
    target = torch.zeros(2, 1, 8, 8, 8)
    target[0, 0, 2:5, 2:6, 3:6] = 1
    target[1, 0, 6, 6, 6] = 1
    return logits, target


#: The binary (sigmoid) losses; "hsam" is multi-class (tests/losses/test_hierarchical.py).
BINARY = [name for name in known_losses() if name != "hsam"]


def test_known_losses() -> None:
    assert known_losses() == ["dice", "dice_ce", "focal_balanced", "hsam", "zoom"]


@pytest.mark.parametrize("name", BINARY)
def test_every_loss_runs_and_decreases_towards_the_target(name: str) -> None:
    loss = build_loss(name)
    assert isinstance(loss, nn.Module)
    logits, target = _inputs()
    logits.requires_grad_()
    value = loss(logits, target)
    assert value.shape == () and torch.isfinite(value)
    value.backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())
    closer = logits.detach() + (2 * target - 1)  # every logit one step towards its label
    assert loss(closer, target).item() < value.item()
    assert loss(closer + 5 * (2 * target - 1), target).item() < loss(closer, target).item()


@pytest.mark.parametrize("name", BINARY)
def test_every_loss_checks_its_inputs(name: str) -> None:
    loss = build_loss(name)
    with pytest.raises(ValueError, match=r"got logits \(2, 1, 8, 8, 8\) and target \(2, 8, 8, 8\)"):
        loss(torch.zeros(2, 1, 8, 8, 8), torch.zeros(2, 8, 8, 8))
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        loss(torch.zeros(2, 1, 8, 8, 8), torch.full((2, 1, 8, 8, 8), 3.0))


@pytest.mark.parametrize("name", BINARY)
def test_every_loss_accepts_a_bool_mask(name: str) -> None:
    logits, target = _inputs()
    loss = build_loss(name)
    torch.testing.assert_close(loss(logits, target.bool()), loss(logits, target))


def test_dice_ce_is_per_sample_dice_plus_voxel_mean_bce() -> None:
    logits, target = _inputs(1)
    want = DiceLoss(sigmoid=True)(logits, target) + F.binary_cross_entropy_with_logits(logits, target)
    got = build_loss("dice_ce")(logits, target)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got, DiceCELoss(sigmoid=True)(logits, target))
    weighted = build_loss("dice_ce", lambda_dice=0.5, lambda_ce=2.0)(logits, target)
    want = 0.5 * DiceLoss(sigmoid=True)(logits, target) + 2.0 * F.binary_cross_entropy_with_logits(logits, target)
    torch.testing.assert_close(weighted, want)


def test_options_reach_the_loss() -> None:
    zoom = build_loss("zoom", lambda_focal=0.25, gamma=1.0, reduction="sum")
    assert isinstance(zoom, ZoomLoss)
    assert (zoom.lambda_focal, zoom.gamma, zoom.reduction) == (0.25, 1.0, "sum")
    focal = build_loss("focal_balanced", gamma=0.0)
    assert isinstance(focal, BalancedFocalLoss) and focal.gamma == 0.0
    logits, target = _inputs(2)
    torch.testing.assert_close(
        build_loss("dice", jaccard=True)(logits, target), DiceLoss(sigmoid=True, jaccard=True)(logits, target)
    )


@pytest.mark.parametrize("name", ["dice", "zoom", "focal_balanced"])
def test_reduction_none_gives_one_value_per_sample(name: str) -> None:
    logits, target = _inputs(3)
    per_sample = build_loss(name, reduction="none")(logits, target)
    assert per_sample.shape == (2,)
    torch.testing.assert_close(per_sample.mean(), build_loss(name)(logits, target))


def test_loss_options_lists_the_defaults() -> None:
    assert loss_options("zoom") == {
        "lambda_focal": 1.0,
        "gamma": 2.0,
        "balance": "full",
        "beta": 0.5,
        "alpha": 0.25,
        "margin": 4,
        "smooth_nr": 1e-5,
        "smooth_dr": 1e-5,
        "reduction": "mean",
    }
    assert loss_options("focal_balanced") == {
        "gamma": 2.0,
        "balance": "full",
        "beta": 0.5,
        "alpha": 0.25,
        "margin": 4,
        "reduction": "mean",
    }


def test_unknown_loss_says_did_you_mean() -> None:
    with pytest.raises(ValueError, match=r"Unknown loss 'zom'\. Did you mean 'zoom'\? Known: dice, dice_ce, .*zoom"):
        build_loss("zom")
    with pytest.raises(ValueError, match=r"Unknown loss 'dicece'\. Did you mean 'dice_ce'\?"):
        loss_options("dicece")


def test_unknown_option_names_the_loss_and_the_allowed_options() -> None:
    with pytest.raises(
        ValueError,
        match=r"Unknown option of loss 'zoom': 'lamda_focal'\. Did you mean 'lambda_focal'\? "
        r"Known: lambda_focal, gamma, balance, beta, alpha, margin, smooth_nr, smooth_dr, reduction\.",
    ):
        build_loss("zoom", lamda_focal=1.0)
    with pytest.raises(ValueError, match=r"Unknown option of loss 'dice': 'sigmoid'\..*Known: smooth_nr"):
        build_loss("dice", sigmoid=False)  # the sigmoid is fixed: every loss takes logits


@pytest.mark.parametrize(
    ("name", "options", "error", "message"),
    [
        ("dice_ce", {"reduction": "none"}, ValueError, r"Unknown reduction 'none'.*Known: mean, sum"),
        ("dice_ce", {"lambda_ce": -1.0}, ValueError, r"loss 'dice_ce': lambda_ce must be a finite number >= 0"),
        ("dice", {"smooth_dr": 0.0}, ValueError, r"loss 'dice': smooth_dr must be a finite number > 0"),
        ("dice", {"jaccard": "yes"}, TypeError, r"loss 'dice': jaccard must be True or False"),
        ("zoom", {"gamma": -2.0}, ValueError, r"ZoomLoss: gamma must be a finite number >= 0"),
        ("focal_balanced", {"reduction": "avg"}, ValueError, r"Unknown reduction 'avg'"),
    ],
)
def test_bad_option_values_are_refused(
    name: str, options: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        build_loss(name, **options)


def test_register_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "_LOSSES", dict(registry_module._LOSSES))

    @register_loss("l1_probability", description="for the test")
    def _build(*, scale: float = 1.0) -> nn.Module:
        return build_loss("dice")

    assert "l1_probability" in known_losses()
    assert loss_options("l1_probability") == {"scale": 1.0}
    with pytest.raises(ValueError, match="registered twice"):
        register_loss("l1_probability")(lambda: nn.Identity())


@pytest.mark.parametrize("name", BINARY)
def test_every_loss_called_with_an_output_and_a_batch_is_the_loss_of_its_float_logits(name: str) -> None:
    """The training steps call ``batch_loss(loss)(output, batch)``: exactly ``loss(output.logits.float(),
    batch.label)`` (bfloat16 logits are scored in float32)."""
    from types import SimpleNamespace

    from lesionsam.losses import batch_loss

    loss = build_loss(name)
    logits, target = _inputs(3)
    output = SimpleNamespace(logits=logits.bfloat16(), extras={})
    got = batch_loss(loss)(output, SimpleNamespace(label=target, progress=0.5))
    assert got.dtype == torch.float32 and torch.equal(got, loss(logits.bfloat16().float(), target))
