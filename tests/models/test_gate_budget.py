"""The gate budget of SGP-SAM (``train.options.gate_cost``, ``gate_target``) against hand-computed gradients, and a gate
that sees more of its input than the mean token (``SGPOptions.gate_pool``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lesionsam.config import load_run_config
from lesionsam.data.clicks import ClickSimulator
from lesionsam.losses import batch_loss, build_loss
from lesionsam.models import ModelConfig, build_model
from lesionsam.models.backbone import get_preset
from lesionsam.models.methods.sgp import GatingUnit, SGPOptions, SGPSam, build_sgp_sam, gate_budget
from lesionsam.models.methods.sgp_budget import SGPTrainOptions
from lesionsam.training.steps import InteractiveStep, TrainBatch

TINY = get_preset("tiny")


def _hand_grad(logits: torch.Tensor, weight: float, target: float | None) -> torch.Tensor:
    """d/dlogits of weight * budget(mean p), p = softmax(logits)[..., 1], written out: dp/dl_keep = p (1 - p) and
    dp/dl_skip = -p (1 - p); d mean / dp = 1 / n; d (m - t)^2 / dm = 2 (m - t)."""
    p = logits.double().softmax(dim=-1)[..., 1]
    m = float(p.mean())
    outer = 1.0 if target is None else 2.0 * (m - target)
    dp = weight * outer / p.numel() * p * (1 - p)
    return torch.stack([-dp, dp], dim=-1)


@pytest.mark.parametrize("target", [None, 0.3, 0.9])
def test_budget_gradient_on_the_gate_logits_is_the_hand_one(target: float | None) -> None:
    logits = torch.tensor([[[0.3, 2.0], [1.0, -0.5]], [[-1.0, 0.2], [0.0, 3.0]], [[2.0, 2.5], [0.7, 0.1]]])
    logits = logits.double().requires_grad_(True)  # (B=3, modules=2, [skip, keep])
    probs = logits.softmax(dim=-1)[..., 1]
    m = probs.mean()
    value = gate_budget(probs, target)
    torch.testing.assert_close(value, m.float() if target is None else (m.float() - target) ** 2)
    (0.4 * value).backward()
    torch.testing.assert_close(logits.grad, _hand_grad(logits.detach(), 0.4, target), rtol=1e-5, atol=1e-8)


def test_budget_edge_cases() -> None:
    assert float(gate_budget(torch.zeros(2, 0))) == 0.0  # no module: nothing to pay
    assert float(gate_budget(torch.full((2, 3), 0.25), 0.25)) == 0.0  # on target: no push
    with pytest.raises(ValueError, match=r"target must be an activation rate in \[0, 1\], got 1.5"):
        gate_budget(torch.ones(1, 1), 1.5)


def _step_gate_bias_grads(
    model: SGPSam, image, label, gate_cost: float, target: float | None
) -> dict[str, torch.Tensor]:
    step = InteractiveStep(
        model,
        batch_loss(build_loss("dice")),
        ClickSimulator(),
        num_clicks=2,
        mask_only_iterations=0,
        options=SGPTrainOptions(gate_cost=gate_cost, gate_target=target),
    )
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    loss = step(TrainBatch(image, label, np.random.default_rng(0)))["loss"]
    loss.backward()
    return {key: m.gate.fc2.bias.grad.clone() for key, m in model.sgpm.items()}


@pytest.mark.parametrize("target", [None, 0.2])
def test_the_trainer_adds_weight_times_the_budget_gradient_to_the_gate(target: float | None) -> None:
    torch.manual_seed(0)
    model = build_sgp_sam(TINY, SGPOptions(gate_open_bias=0.5)).train()
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(2, 1, TINY.img_size, TINY.img_size, TINY.img_size, generator=gen)
    label = torch.zeros_like(image)
    label[:, :, 28:34, 30:36, 29:33] = 1
    without = _step_gate_bias_grads(model, image, label, 0.0, None)
    weighted = _step_gate_bias_grads(model, image, label, 0.5, target)
    with torch.no_grad():
        hooks, logits = [], {}
        for key, module in model.sgpm.items():
            hooks.append(module.gate.register_forward_hook(lambda _m, _a, out, key=key: logits.__setitem__(key, out)))
        model.encode(image)
        for h in hooks:
            h.remove()
    all_logits = torch.stack([logits[k] for k in model.sgpm], dim=1)  # (B, modules, 2)
    hand = _hand_grad(all_logits, 0.5, target)  # d budget / d (skip, keep) logits of each sample and module
    for j, key in enumerate(model.sgpm):
        # fc2's bias adds to every sample's logits: its gradient is the sum over the batch.
        torch.testing.assert_close(weighted[key] - without[key], hand[:, j].sum(0).float(), rtol=1e-4, atol=1e-7)


def test_gate_target_is_checked() -> None:
    cfg = load_run_config(
        None, ["model.method=sgp_sam", "train.options.gate_cost=0.1", "train.options.gate_target=0.4"]
    )
    assert cfg.train.options.gate_target == 0.4
    assert load_run_config(None, ["model.method=sgp_sam"]).train.options.gate_target is None
    for bad in ("-0.1", "1.2", ".nan"):
        share = r"train.options.gate_target is a share of open gates and must be in \[0, 1\]"
        with pytest.raises(ValueError, match=share):
            load_run_config(
                None, ["model.method=sgp_sam", "train.options.gate_cost=0.1", f"train.options.gate_target={bad}"]
            )
    with pytest.raises(ValueError, match=r"train.options.gate_target needs train.options.gate_cost > 0"):
        load_run_config(None, ["model.method=sgp_sam", "train.options.gate_target=0.5"])


def test_gate_pool_lets_the_gate_see_what_the_mean_hides() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(1, 4, 4, 4, 16, generator=gen)
    b = a.clone()
    b[0, 0, 0, 0] += 5.0  # one "lesion" token brighter ...
    b[0, 1, 1, 1] -= 5.0  # ... and one darker: the same mean per channel
    torch.testing.assert_close(a.mean(dim=(1, 2, 3)), b.mean(dim=(1, 2, 3)))
    both = torch.cat([a, b])
    torch.manual_seed(1)
    mean_only = GatingUnit(dim=16, hidden=4, open_bias=0.0)
    torch.manual_seed(1)
    pooled = GatingUnit(dim=16, hidden=4, open_bias=0.0, pool=("mean", "max", "std"))
    with torch.no_grad():  # large last-layer weights, so that the difference shows in the logits
        for unit in (mean_only, pooled):
            unit.fc2.weight.normal_(0, 1.0)
    out = mean_only(both)
    torch.testing.assert_close(out[0], out[1])
    stats = pooled.pooled(both)
    assert stats.shape == (2, 48)
    flat = both.flatten(1, 3)
    torch.testing.assert_close(stats, torch.cat([flat.mean(1), flat.amax(1), flat.std(1, correction=0)], dim=-1))
    out = pooled(both)
    assert not torch.allclose(out[0], out[1], atol=1e-3)


def test_gate_pool_option_from_the_config_and_its_checks() -> None:
    model = build_model(
        ModelConfig.from_preset("tiny", method="sgp_sam", options={"gate_pool": ["mean", "max"]})
    ).eval()
    assert isinstance(model, SGPSam) and model.options.gate_pool == ("mean", "max")
    unit = next(iter(model.sgpm.values())).gate
    assert unit.fc1.in_features == 2 * TINY.encoder_embed_dim
    with torch.no_grad():  # a fresh model with a wider gate still equals its backbone and still starts open
        enc = model.encode(torch.randn(1, 1, TINY.img_size, TINY.img_size, TINY.img_size))
    assert torch.equal(enc.gates, torch.ones(1, len(model.sgpm)))
    with pytest.raises(ValueError, match=r"Unknown SGP gate pooling 'mx'\. Did you mean 'max'\?"):
        SGPOptions(gate_pool=("mean", "mx"))
    with pytest.raises(ValueError, match=r"gate_pool must list distinct statistics"):
        SGPOptions(gate_pool=("mean", "mean"))
    with pytest.raises(ValueError, match=r"gate_pool must list distinct statistics"):
        SGPOptions(gate_pool=())


def test_a_closed_gate_with_pooled_statistics_still_skips_the_fusion_at_inference() -> None:
    torch.manual_seed(0)
    model = build_sgp_sam(TINY, SGPOptions(gate_open_bias=-30.0, gate_pool=("mean", "max", "std"))).eval()
    calls: list[int] = []
    hooks = [
        m.msff.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0])) for m in model.sgpm.values()
    ]
    with torch.no_grad():
        enc = model.encode(torch.randn(2, 1, TINY.img_size, TINY.img_size, TINY.img_size))
    for h in hooks:
        h.remove()
    assert calls == [] and torch.equal(enc.gates, torch.zeros(2, len(model.sgpm)))


def _train_module_on_two_kinds(cost: float, steps: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGPM trained by its straight-through gate on two kinds of token grids: kind A needs a prompt (target =
    tokens + 1 on channel 1), kind B needs none (target = tokens). Loss: MSE + ``cost`` x mean keep probability
    (:func:`gate_budget`, linear). Returns the inference gate decisions on fresh grids of kind A and of kind B."""
    from lesionsam.models.methods.sgp import SelfGatedPromptingModule

    torch.manual_seed(0)
    dim, grid = 8, 4
    module = SelfGatedPromptingModule(dim=dim, reduction=2, gate_open_bias=3.0)
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    shift = torch.zeros(dim)
    shift[1] = 1.0

    def batch(kind: str, n: int) -> torch.Tensor:
        x = torch.randn(n, grid, grid, grid, dim)
        x[..., 0] += 2.0 if kind == "A" else -2.0  # what the gate can see: the kinds differ in channel 0
        return x

    module.train()
    for _ in range(steps):
        a, b = batch("A", 4), batch("B", 4)
        x = torch.cat([a, b])
        target = torch.cat([a + shift, b])
        out, _, keep = module(x)
        loss = torch.nn.functional.mse_loss(out, target) + cost * gate_budget(keep[:, None])
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()
    with torch.no_grad():
        return module(batch("A", 16))[1], module(batch("B", 16))[1]


def test_with_a_cost_the_gate_learns_to_open_only_where_the_prompt_pays() -> None:
    """The gate machinery (straight-through Gumbel + budget) learns an input-conditional decision when the fusion
    helps some inputs and not others: open on every kind-A grid, closed on every kind-B grid. (On the demo's data
    every budget gives constant gates: there the fusion's benefit does not depend on the crop; README.)"""
    gates_a, gates_b = _train_module_on_two_kinds(cost=0.05)
    assert gates_a.tolist() == [1.0] * 16 and gates_b.tolist() == [0.0] * 16
