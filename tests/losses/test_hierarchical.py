"""H-SAM's multi-class stage loss and its two-stage combination, against hand-written references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lesionsam.losses import StagedLoss, build_loss, loss_options


def _inputs(seed: int = 0, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, 6, 6, 6, generator=g)
    target = torch.zeros(2, 1, 6, 6, 6, dtype=torch.int64)
    target[0, 0, 1:4, 1:4, 1:4] = 1
    target[0, 0, 4:6, 4:6, 4:6] = 2
    target[1, 0, 2, 2, 2] = 2  # sample 1 has no class 1 at all
    return logits, target


def _reference(logits: torch.Tensor, target: torch.Tensor, d: float = 0.8) -> torch.Tensor:
    """(1 − d)·mean voxel CE + d·mean over samples and foreground classes of (1 − soft Dice), smooth 1e-5."""
    ce = F.cross_entropy(logits, target[:, 0])
    prob = logits.softmax(1)
    onehot = F.one_hot(target[:, 0], logits.shape[1]).permute(0, 4, 1, 2, 3).float()
    inter = (prob * onehot).flatten(2).sum(-1)
    denom = prob.flatten(2).sum(-1) + onehot.flatten(2).sum(-1)
    dice = 1 - (2 * inter + 1e-5) / (denom + 1e-5)
    return (1 - d) * ce + d * dice[:, 1:].mean()


def test_stage_loss_is_weighted_ce_plus_foreground_dice() -> None:
    logits, target = _inputs()
    loss = build_loss("hsam")
    torch.testing.assert_close(loss(logits, target), _reference(logits, target))
    torch.testing.assert_close(build_loss("hsam", dice_weight=0.3)(logits, target), _reference(logits, target, 0.3))
    # An almost perfect prediction costs almost nothing.
    perfect = 40.0 * F.one_hot(target[:, 0], 3).permute(0, 4, 1, 2, 3).float()
    assert loss(perfect, target).item() < 1e-3 < loss(logits, target).item()


def test_stage_weight_rises_with_progress_and_combines_both_stages() -> None:
    loss = build_loss("hsam", w_start=0.2, w_end=0.8)
    assert isinstance(loss, StagedLoss) and loss.staged
    assert [round(loss.weight(p), 6) for p in (0.0, 0.5, 1.0, 2.0)] == [0.2, 0.5, 0.8, 0.8]
    s2, target = _inputs(1)
    s1, _ = _inputs(2)
    for progress in (0.0, 0.25, 1.0):
        w = loss.weight(progress)
        want = (1 - w) * _reference(s1, target) + w * _reference(s2, target)
        torch.testing.assert_close(loss(s2, target, stage1_logits=s1, progress=progress), want)
    torch.testing.assert_close(loss(s2, target), _reference(s2, target))
    assert set(loss_options("hsam")) == {"dice_weight", "w_start", "w_end", "include_background"}


def test_bad_inputs_and_options_are_refused() -> None:
    loss = build_loss("hsam")
    logits, target = _inputs()
    with pytest.raises(ValueError, match=r"class indices must lie in \[0, 2\], got \[0, 3\]"):
        loss(logits, target + (target == 2).long())
    with pytest.raises(ValueError, match=r"must be class indices of shape \(B, 1, D, H, W\)"):
        loss(logits, target[:, 0])
    with pytest.raises(ValueError, match="K >= 1 classes"):
        loss(logits[:, :1], target.clamp(max=0))
    with pytest.raises(ValueError, match="integer class indices"):
        loss(logits, target.float() + 0.5)
    with pytest.raises(ValueError, match=r"w_end must be in \[0, 1\]"):
        build_loss("hsam", w_end=1.5)
    with pytest.raises(ValueError, match=r"dice_weight must be in \[0, 1\]"):
        build_loss("hsam", dice_weight=2)


def test_the_staged_loss_called_with_an_output_and_a_batch_reads_its_stage1_logits_and_progress() -> None:
    """``batch_loss(loss)(output, batch)``: the staged loss gets the output's logits, its ``stage1_logits`` extra and
    the batch's label and training progress; without the extra, the stage loss of the logits alone."""
    from types import SimpleNamespace

    from lesionsam.losses import batch_loss

    loss = build_loss("hsam", w_start=0.2, w_end=0.8)
    s2, target = _inputs(1)
    s1, _ = _inputs(2)
    adapted = batch_loss(loss)
    assert batch_loss(adapted) is adapted
    batch = SimpleNamespace(label=target, progress=0.25)
    output = SimpleNamespace(logits=s2, extras={"stage1_logits": s1})
    torch.testing.assert_close(adapted(output, batch), loss(s2, target, stage1_logits=s1, progress=0.25))
    alone = SimpleNamespace(logits=s2, extras={})
    torch.testing.assert_close(adapted(alone, batch), _reference(s2, target))
