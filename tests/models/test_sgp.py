"""SGP-SAM: self-gated prompting modules on the SAM-Med3D encoder (tiny preset)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import Tensor

from lesionsam.models import ModelConfig, Prompts, build_model, known_methods
from lesionsam.models.backbone import Sam3D, build_sam3d, get_preset
from lesionsam.models.checkpoint import load_sam_med3d_weights
from lesionsam.models.methods.sgp import EncodedImage, SGPOptions, SGPSam, build_sgp_sam
from lesionsam.models.registry import method_spec

TINY = get_preset("tiny")
BATCH = 3


def _pair(seed: int = 0, options: SGPOptions | None = None) -> tuple[Sam3D, SGPSam]:
    """A seeded plain SAM-Med3D and an SGP-SAM sharing its parts (the same weights), both in eval mode."""
    torch.manual_seed(seed)
    sam = build_sam3d(TINY).eval()
    with torch.no_grad():  # non-zero positions and qkv biases, as real weights
        for name, p in sam.image_encoder.named_parameters():
            if "rel_pos" in name or "pos_embed" in name or name.endswith("qkv.bias"):
                p.normal_(0.0, 0.3)
    return sam, SGPSam.from_sam3d(sam, options).eval()


def _randomise_fusion(model: SGPSam, seed: int = 1) -> None:
    """Non-zero fusion weights, so that an open gate changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.sgpm.values():
            for p in module.msff.fuse.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def _inputs(batch: int = BATCH, seed: int = 2) -> tuple[Tensor, Prompts]:
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 1, TINY.img_size, TINY.img_size, TINY.img_size, generator=gen)
    points = torch.rand(batch, 2, 3, generator=gen) * (TINY.img_size - 1)
    labels = torch.tensor([[1, 0]] * batch)
    return image, Prompts(points=points, labels=labels)


@contextmanager
def _count_fusion_calls(model: SGPSam) -> Iterator[dict[str, list[int]]]:
    """Record, per SGPM, the batch size of every call of its fusion block."""
    seen: dict[str, list[int]] = {key: [] for key in model.sgpm}
    handles = [
        module.msff.register_forward_hook(lambda _m, args, _out, key=key: seen[key].append(args[0].shape[0]))
        for key, module in model.sgpm.items()
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _force_gates(model: SGPSam, keep: list[bool]) -> Iterator[None]:
    """Make every gating unit output logits that open exactly the samples where ``keep`` is True."""
    logits = torch.tensor([[-4.0, 4.0] if k else [4.0, -4.0] for k in keep])
    handles = [m.gate.register_forward_hook(lambda _m, _a, _o: logits) for m in model.sgpm.values()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# ----------------------------------------------------------------------------------------------- identity at init
@pytest.mark.parametrize("mode", ["learned", "on", "off"])
@pytest.mark.parametrize("training", [False, True])
def test_fresh_sgp_sam_equals_its_backbone_exactly(mode: str, training: bool) -> None:
    sam, sgp = _pair(options=SGPOptions(gate=mode))
    image, prompts = _inputs()
    sgp.train(training)
    with torch.no_grad():
        got = sgp(image, prompts)
        sam.eval()
        want = sam(image, prompts)
    assert torch.equal(got.low_res_logits, want.low_res_logits)
    assert torch.equal(got.logits, want.logits)
    assert torch.equal(got.iou, want.iou)


def test_no_modules_equals_backbone_and_gives_empty_gates() -> None:
    sam, sgp = _pair(options=SGPOptions(blocks=()))
    image, prompts = _inputs(batch=2)
    with torch.no_grad():
        out = sgp(image, prompts)
        assert torch.equal(out.low_res_logits, sam(image, prompts).low_res_logits)
    assert out.extras["gates"].shape == (2, 0) and out.extras["gate_probs"].shape == (2, 0)


# ----------------------------------------------------------------------------------------------- gates
def test_gates_are_returned_in_extras_with_shape_and_binary_values() -> None:
    _, sgp = _pair()
    image, prompts = _inputs()
    for training in (False, True):
        sgp.train(training)
        with torch.no_grad():
            out = sgp(image, prompts)
        gates, probs = out.extras["gates"], out.extras["gate_probs"]
        assert gates.shape == probs.shape == (BATCH, len(TINY.encoder_global_attn_indexes))
        assert gates.dtype == probs.dtype == torch.float32
        assert set(gates.unique().tolist()) <= {0.0, 1.0}
        assert ((probs > 0) & (probs < 1)).all()
    assert sgp.sgpm_blocks == TINY.encoder_global_attn_indexes


def test_a_fresh_gate_starts_open() -> None:
    _, sgp = _pair()
    image, prompts = _inputs()
    with torch.no_grad():
        out = sgp(image, prompts)
    assert torch.equal(out.extras["gates"], torch.ones(BATCH, 2))  # inference: hard argmax
    torch.testing.assert_close(out.extras["gate_probs"], torch.full((BATCH, 2), 0.9526), atol=0.01, rtol=0)


def test_open_gates_change_the_output_and_learned_follows_its_decisions_per_sample() -> None:
    _, sgp = _pair()
    _randomise_fusion(sgp)
    image, _ = _inputs()
    results: dict[str, EncodedImage] = {}
    with torch.no_grad():
        for mode in ("on", "off"):
            sgp.set_gate_mode(mode)
            results[mode] = sgp.encode(image)
        sgp.set_gate_mode("learned")
        keep = [True, False, True]
        with _force_gates(sgp, keep):
            learned = sgp.encode(image)
    on, off = results["on"].embedding, results["off"].embedding
    for b in range(BATCH):
        assert not torch.allclose(on[b], off[b], atol=1e-3)
    assert torch.equal(results["on"].gates, torch.ones(BATCH, 2))
    assert torch.equal(results["off"].gates, torch.zeros(BATCH, 2))
    assert torch.equal(learned.gates, torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]))
    for b, k in enumerate(keep):
        torch.testing.assert_close(learned.embedding[b], (on if k else off)[b], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------- skipping
def test_only_open_samples_go_through_the_fusion_block() -> None:
    _, sgp = _pair()
    _randomise_fusion(sgp)
    image, _ = _inputs()
    with torch.no_grad(), _force_gates(sgp, [False, True, False]), _count_fusion_calls(sgp) as seen:
        sgp.encode(image)
    assert seen == {"1": [1], "3": [1]}


@pytest.mark.parametrize(
    ("mode", "training", "grad", "want"),
    [
        ("off", False, False, []),
        ("off", True, True, []),
        ("on", False, False, [BATCH]),
        ("on", True, True, [BATCH]),
        ("learned", False, False, []),  # every gate closed: never called
        ("learned", True, False, []),  # training without gradients: closed samples skipped
        ("learned", True, True, [BATCH]),  # straight-through needs msff(x) for every sample
    ],
)
def test_fusion_calls_per_gate_mode(mode: str, training: bool, grad: bool, want: list[int]) -> None:
    _, sgp = _pair(options=SGPOptions(gate=mode, gate_open_bias=-30.0))  # a learned gate that always skips
    image, _ = _inputs()
    sgp.train(training)
    with torch.set_grad_enabled(grad), _count_fusion_calls(sgp) as seen:
        enc = sgp.encode(image)
    assert seen == {"1": want, "3": want}
    if mode != "on":
        assert torch.equal(enc.gates, torch.zeros(BATCH, 2))


# ----------------------------------------------------------------------------------------------- training
def test_gumbel_straight_through_trains_the_gate() -> None:
    _, sgp = _pair()
    _randomise_fusion(sgp)
    sgp.train()
    image, prompts = _inputs()
    out = sgp(image, prompts)
    gates = out.extras["gates"]
    assert gates.requires_grad and set(gates.unique().tolist()) <= {0.0, 1.0}
    out.logits.square().mean().backward()
    for name, p in sgp.sgpm.named_parameters():
        if ".gate." in f".{name}":
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_hard_gate_at_inference_gives_no_gradient_to_the_gate() -> None:
    _, sgp = _pair()
    _randomise_fusion(sgp)
    image, prompts = _inputs(batch=2)
    sgp(image, prompts).logits.mean().backward()  # eval mode: argmax
    assert all(p.grad is None for p in sgp.sgpm["1"].gate.parameters())
    assert sgp.sgpm["1"].msff.fuse.weight.grad is not None


def test_gate_cost_is_the_mean_keep_probability_and_trains_the_gate() -> None:
    _, sgp = _pair()
    sgp.train()
    image, prompts = _inputs(batch=2)
    out = sgp(image, prompts)
    cost = sgp.gate_cost(out)
    torch.testing.assert_close(cost, out.extras["gate_probs"].mean())
    cost.backward()
    assert sgp.sgpm["3"].gate.fc2.bias.grad[1] > 0


def test_grad_checkpointing_keeps_the_gate_trainable() -> None:
    _, sgp = _pair()
    _randomise_fusion(sgp)
    sgp.train()
    sgp.image_encoder.grad_checkpointing = True
    image, prompts = _inputs(batch=2)
    sgp(image, prompts).logits.mean().backward()
    assert sgp.sgpm["1"].gate.fc1.weight.grad is not None
    assert sgp.image_encoder.blocks[0].attn.qkv.weight.grad is not None


# ----------------------------------------------------------------------------------------------- keys and weights
def test_state_dict_is_backbone_keys_plus_sgpm() -> None:
    sgp = build_model(ModelConfig.from_preset("tiny", method="sgp_sam", options={"blocks": [0, 2]}))
    official = list(build_sam3d(TINY).state_dict())
    keys = list(sgp.state_dict())
    assert keys[: len(official)] == official
    extra = keys[len(official) :]
    assert extra and all(k.startswith(("sgpm.0.", "sgpm.2.")) for k in extra)
    assert {k.split(".")[2] for k in extra} == {"gate", "msff"}


def test_official_checkpoint_loads_strictly_and_equals_plain_sam_med3d(official_ckpt: Path, official_io) -> None:
    sgp = build_model(ModelConfig.from_preset("tiny", method="sgp_sam", checkpoint=str(official_ckpt))).eval()
    plain = build_model(ModelConfig.from_preset("tiny", checkpoint=str(official_ckpt))).eval()
    assert isinstance(sgp, SGPSam)
    prompts = Prompts(points=official_io["points"], labels=official_io["labels"], mask=official_io["mask_input"])
    with torch.no_grad():
        got = sgp(official_io["image"], prompts)
        want = plain(official_io["image"], prompts)
    assert torch.equal(got.low_res_logits, want.low_res_logits)
    assert torch.equal(got.extras["gates"], torch.ones(2, 2))
    scale = official_io["low_res"].abs().max()
    torch.testing.assert_close(got.low_res_logits / scale, official_io["low_res"] / scale, atol=1e-4, rtol=1e-4)


def test_loading_official_weights_leaves_sgpm_at_its_initialisation(official_ckpt: Path) -> None:
    sgp = build_sgp_sam(TINY)
    before = {k: v.clone() for k, v in sgp.state_dict().items() if k.startswith("sgpm.")}
    report = load_sam_med3d_weights(sgp, official_ckpt)
    after = sgp.state_dict()
    assert sorted(report.new_keys) == sorted(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert torch.equal(sgp.sgpm["1"].msff.fuse.weight, torch.zeros_like(sgp.sgpm["1"].msff.fuse.weight))


# ----------------------------------------------------------------------------------------------- registry, options
def test_both_methods_are_registered_with_their_losses() -> None:
    assert {"sgp_sam", "sgp_dice"} <= set(known_methods())
    assert method_spec("sgp_sam").loss == "zoom" and method_spec("sgp_dice").loss == "dice"
    assert method_spec("sgp_dice").options is SGPOptions


def test_options_from_yaml_lists() -> None:
    cfg = ModelConfig.from_preset(
        "tiny", method="sgp_dice", options={"blocks": [3, 0], "dilations": [1, 2], "gate": "on", "reduction": 8}
    )
    model = build_model(cfg)
    assert isinstance(model, SGPSam)
    assert model.sgpm_blocks == (0, 3) and model.options.blocks == (0, 3) and model.gate_mode == "on"
    assert len(model.sgpm["0"].msff.branches) == 2
    assert model.sgpm["0"].msff.reduce.out_features == TINY.encoder_embed_dim // 8


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"gate": "lerned"}, ValueError, r"Unknown SGP gate mode 'lerned'\. Did you mean 'learned'\?"),
        ({"blocks": [1, 4]}, ValueError, r"blocks \[4\] are not blocks of the image encoder \(depth 4"),
        ({"blocks": [1, 1]}, ValueError, "duplicates"),
        ({"dilations": []}, ValueError, "dilations"),
        ({"kernel_size": 2}, ValueError, "kernel_size must be odd"),
        ({"gumbel_tau": 0.0}, ValueError, "gumbel_tau"),
        ({"reduction": 0}, ValueError, "reduction"),
        ({"gates": "on"}, ValueError, "did you mean 'model.options.gate'"),
        ({"blocks": "all"}, TypeError, "model.options.blocks"),
    ],
)
def test_bad_options_are_refused(options: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        build_model(ModelConfig.from_preset("tiny", method="sgp_sam", options=options))


def test_bad_gate_mode_at_run_time_and_wrong_decode_input() -> None:
    _, sgp = _pair()
    with pytest.raises(ValueError, match="Unknown SGP gate mode 'always'"):
        sgp.set_gate_mode("always")
    image, prompts = _inputs(batch=1)
    with torch.no_grad():
        embedding = sgp.encode(image).embedding
    with pytest.raises(TypeError, match="expects the EncodedImage"):
        sgp.decode(embedding, prompts)
