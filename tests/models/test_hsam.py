"""H-SAM: LoRA encoder, stage-1 class tokens, prior-guided stage 2 and the hierarchical pixel decoder (tiny preset)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lesionsam.models import ModelConfig, Prompts, build_model
from lesionsam.models.backbone import Sam3D, build_sam3d, get_preset
from lesionsam.models.checkpoint import BACKBONE_PREFIXES, extract_state_dict, read_weights_file
from lesionsam.models.interface import SegModel
from lesionsam.models.methods.hsam import (
    HSAM,
    NEW_PREFIXES,
    HSAMEncodedImage,
    HSAMOptions,
    build_hsam,
    hsam_overhead,
)
from lesionsam.models.methods.hsam_parts import (
    class_balance_weights,
    cross_attention_guidance,
    prior_from_logits,
    self_attention_guidance,
)
from lesionsam.models.registry import method_spec

TINY = get_preset("tiny")
S, G, LOW = TINY.img_size, TINY.grid_size, TINY.low_res_size


def _sam(seed: int = 0) -> Sam3D:
    """A seeded plain SAM-Med3D with non-zero positions and qkv biases (as real weights), in eval mode."""
    torch.manual_seed(seed)
    sam = build_sam3d(TINY).eval()
    with torch.no_grad():
        for name, p in sam.image_encoder.named_parameters():
            if "rel_pos" in name or "pos_embed" in name or name.endswith("qkv.bias"):
                p.normal_(0.0, 0.3)
    return sam


def _perturb_lora(model: HSAM, seed: int = 1, std: float = 0.2) -> None:
    """Random values for the zero-initialised LoRA B matrices, so that LoRA changes the encoder."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lora in model.lora:
            lora.B.copy_(torch.randn(lora.B.shape, generator=gen) * std)


def _model(num_classes: int = 2, seed: int = 0, **options: object) -> HSAM:
    model = HSAM.from_sam3d(_sam(seed), HSAMOptions(num_classes=num_classes, **options)).eval()  # type: ignore[arg-type]
    _perturb_lora(model)
    return model


def _image(batch: int = 2, seed: int = 2) -> Tensor:
    return torch.randn(batch, 1, S, S, S, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("num_classes", [1, 2])
def test_output_shapes_and_extras(num_classes: int) -> None:
    model = _model(num_classes)
    channels = num_classes + 1
    assert model.num_classes == num_classes and model.num_output_channels == channels
    with torch.no_grad():
        out = model(_image())
    assert out.logits.shape == (2, channels, S, S, S) and out.logits.is_contiguous()
    assert out.low_res_logits.shape == (2, channels, LOW, LOW, LOW)
    assert torch.equal(out.iou, torch.ones(2, channels))
    low1 = out.extras["stage1_low_res_logits"]
    assert low1.shape == (2, channels, LOW, LOW, LOW)
    assert torch.equal(out.extras["stage1_logits"], model.upsample(low1))
    assert out.extras["prior"].shape == (2, channels, G, G, G)
    torch.testing.assert_close(out.low_res_logits, F.avg_pool3d(out.logits, S // LOW))
    assert torch.isfinite(out.logits).all() and torch.isfinite(low1).all()
    assert not torch.allclose(out.logits[:, 0], out.logits[:, 1])  # channels are distinct classes


def test_batch_items_are_independent() -> None:
    model = _model(2)
    image = _image(batch=2)
    with torch.no_grad():
        both = model(image)
        for i in range(2):
            one = model(image[i : i + 1])
            scale = both.logits[i].abs().max()
            torch.testing.assert_close(one.logits[0] / scale, both.logits[i] / scale, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(
                one.extras["stage1_low_res_logits"][0], both.extras["stage1_low_res_logits"][i], atol=1e-5, rtol=1e-5
            )


def test_decode_on_a_cached_encoding_is_repeatable() -> None:
    model = _model(1)
    with torch.no_grad():
        enc = model.encode(_image(batch=1))
        assert isinstance(enc, HSAMEncodedImage) and enc.embedding.shape == (1, TINY.prompt_embed_dim, G, G, G)
        a, b = model.decode(enc, Prompts()), model.decode(enc, Prompts())
    assert torch.equal(a.logits, b.logits)


# ----------------------------------------------------------------------------------------------- LoRA
def test_fresh_lora_equals_the_backbone_encoder_and_a_trained_one_does_not() -> None:
    sam = _sam()
    image = _image()
    with torch.no_grad():
        want = sam.encode(image)
        model = HSAM.from_sam3d(sam, HSAMOptions()).eval()
        assert all(torch.equal(lora.B, torch.zeros_like(lora.B)) for lora in model.lora)
        assert torch.equal(model.encode(image).embedding, want)
        _perturb_lora(model)
        changed = model.encode(image).embedding
    assert not torch.allclose(changed, want, atol=1e-3)


def test_lora_keeps_the_fast_attention_exact_against_the_naive_padded_path() -> None:
    """Padded window tokens are zeros after norm1, so their LoRA term is zero: both paths still agree."""
    model = _model(1)
    image = _image(batch=1)
    with torch.no_grad():
        fast = model.encode(image).embedding
        model.image_encoder.set_attention_impl("naive")
        naive = model.encode(image).embedding
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=1e-5)


def test_deepcopy_carries_the_lora_hooks_to_the_copy() -> None:
    model = _model(1)
    image = _image(batch=1)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(twin.encode(image).embedding, model.encode(image).embedding)
        before = model.encode(image).embedding
        _perturb_lora(twin, seed=5)
        assert torch.equal(model.encode(image).embedding, before)
        assert not torch.allclose(twin.encode(image).embedding, before, atol=1e-3)


def test_lora_gradients_are_the_same_under_encoder_gradient_checkpointing() -> None:
    """The hook is persistent, so the blocks recomputed in the backward pass include the LoRA update."""
    model = _model(1).train()
    image = _image(batch=1)
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.image_encoder.grad_checkpointing = checkpointing
        model.encode(image).embedding.square().mean().backward()
        grads.append(torch.cat([torch.cat([lora.A.grad.flatten(), lora.B.grad.flatten()]) for lora in model.lora]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


def test_a_second_hsam_on_the_same_parts_is_refused() -> None:
    sam = _sam()
    HSAM.from_sam3d(sam)
    with pytest.raises(ValueError, match="already carry the LoRA hooks"):
        HSAM.from_sam3d(sam)


# ----------------------------------------------------------------------------------------------- prompts
def test_prompts_are_rejected() -> None:
    model = _model(1)
    image = _image(batch=1)
    enc = model.encode(image)
    clicks = Prompts(points=torch.full((1, 1, 3), 10.0), labels=torch.ones(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"HSAM does not take prompt\(s\) \['points'\]; it accepts \['none'\]"):
        model.decode(enc, clicks)
    with pytest.raises(ValueError, match=r"does not take prompt\(s\) \['text'\]"):
        model(image, Prompts(text=["liver tumour"]))
    with pytest.raises(ValueError, match=r"does not take prompt\(s\) \['mask'\]"):
        model.decode(enc, Prompts(mask=torch.zeros(1, 1, LOW, LOW, LOW)))
    with pytest.raises(ValueError, match="one channel per class"):
        model.decode(enc, Prompts(), multimask_output=True)
    with pytest.raises(TypeError, match="HSAMEncodedImage"):
        model.decode(enc.embedding, Prompts())
    assert HSAM.prompt_free and not Sam3D.prompt_free and not SegModel.prompt_free
    assert model.required_prompts == model.accepted_prompts == frozenset()


# ----------------------------------------------------------------------------------------------- prior and stage 2
def test_prior_is_a_softmax_over_classes_pooled_onto_the_token_grid() -> None:
    """Not the public code's defects: a softmax over a size-1 axis (constant) and ``resize_`` (scrambled memory)."""
    logits = torch.zeros(1, 3, LOW, LOW, LOW)
    logits[0, 0] = 40.0  # background everywhere but where another class is higher
    half = LOW // 2
    logits[0, 1, :half, :half, half:] = 80.0  # class 1 fills the (D low, H low, W high) octant
    logits[0, 2, half:, :, :] = 80.0  # class 2 fills the D-high half
    logits[0, 0, half, 0, 0] = 160.0  # but loses one low-res voxel (1/64 of a token's block) to the background
    prior = prior_from_logits(logits, G)
    assert prior.shape == (1, 3, G, G, G) and prior.dtype == torch.float32
    torch.testing.assert_close(prior.sum(1), torch.ones(1, G, G, G))
    g, block = G // 2, LOW // G
    want = torch.zeros(1, 3, G, G, G)
    want[0, 0] = 1.0
    want[0, :2, :g, :g, g:] = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1)
    want[0, :, g:] = torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1, 1)
    want[0, :, g, 0, 0] = torch.tensor([1.0, 0.0, block**3 - 1.0]) / block**3
    torch.testing.assert_close(prior, want, atol=1e-6, rtol=0)


def test_class_balance_weights_favour_the_rare_class() -> None:
    n = G**3
    prior = torch.zeros(1, 2, n)
    prior[0, 1, :4] = 1.0  # 4 lesion tokens
    prior[0, 0, 4:] = 1.0
    w = class_balance_weights(prior)
    torch.testing.assert_close(w, 1.0 / (torch.tensor([[n - 4.0, 4.0]]) / n + 1.0 / n))
    fixed = class_balance_weights(prior, torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(fixed, torch.tensor([[0.5, 1.5]]))


def _soft_prior(seed: int, channels: int = 3, sharpness: float = 3.0) -> Tensor:
    """A spatially varying (1, K + 1, G, G, G) prior: softmax over classes of smooth random logits."""
    noise = torch.randn(1, channels, 2, 2, 2, generator=torch.Generator().manual_seed(seed)) * sharpness
    return F.interpolate(noise, size=(G, G, G), mode="trilinear", align_corners=True).softmax(1)


def test_the_prior_changes_stage_2_and_a_zero_guidance_scale_removes_it() -> None:
    """The stage-2 output follows the prior; a constant prior (what the public code's softmax over a size-1 axis
    gives) or γ = λ = 0 leaves plain attention."""
    model = _model(2)
    image = _image(batch=1)
    with torch.no_grad():
        s1 = model.stage1(model.encode(image).embedding)
        pe = model.prompt_encoder.get_dense_pe()

        def stage2(prior: Tensor) -> Tensor:
            return model.hsam_decoder.stage2(s1, prior, image, pe)

        real = model.prior(s1.low_res_logits)
        assert torch.equal(stage2(real), model(image).logits)
        a, b = _soft_prior(0), _soft_prior(1)
        priors = {"a": a, "b": b, "rolled": a.roll(shifts=1, dims=1), "uniform": torch.full_like(a, 1 / 3)}
        got = {name: stage2(p) for name, p in priors.items()}
        scale = got["a"].abs().max()
        for name in ("b", "rolled", "uniform"):
            assert (got[name] - got["a"]).abs().max() > 1e-2 * scale, f"the {name} prior did not change stage 2"
        model.hsam_decoder.set_guidance_scales(0.0)
        off = {name: stage2(p) for name, p in priors.items()}
    torch.testing.assert_close(off["b"], off["a"], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got["uniform"], off["a"], atol=1e-5, rtol=1e-5)


def test_fixed_class_weights_change_the_self_attention() -> None:
    """Under a soft prior the class weights re-balance the prior affinity and so the refined image tokens."""
    image = _image(batch=1)
    prior = _soft_prior(0, channels=2, sharpness=1.0).flatten(2)
    tokens = []
    with torch.no_grad():
        for weights in (None, (1.0, 50.0)):
            model = _model(1, class_weights=weights)
            s1 = model.stage1(model.encode(image).embedding)
            w = class_balance_weights(prior, model.hsam_decoder.class_weights)
            pe = model.prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2)
            refined, _ = model.hsam_decoder.refine(
                s1.image_tokens, pe, s1.class_tokens, self_attention_guidance(prior, w), cross_attention_guidance(prior)
            )
            tokens.append(refined)
    assert (tokens[0] - tokens[1]).abs().max() > 1e-3 * tokens[0].abs().max()  # float noise: ~1e-7


# ----------------------------------------------------------------------------------------------- training, freezing
def _ce_loss(model: HSAM, image: Tensor, seed: int = 3) -> Tensor:
    out = model(image)
    target = torch.randint(
        0, model.num_output_channels, (image.shape[0], S, S, S), generator=torch.Generator().manual_seed(seed)
    )
    return F.cross_entropy(out.logits, target) + F.cross_entropy(out.extras["stage1_logits"], target)


def test_training_step_changes_only_the_trainable_parameters() -> None:
    torch.manual_seed(0)
    model = build_hsam(TINY, HSAMOptions(num_classes=2)).train()
    _perturb_lora(model)
    params = dict(model.named_parameters())
    trainable = set(model.trainable_parameter_names())
    assert {n for n, p in params.items() if p.requires_grad} == trainable
    assert not any(n.startswith(("image_encoder.", "mask_decoder.iou_prediction_head.")) for n in trainable)
    assert [n for n in trainable if n.startswith("prompt_encoder.")] == ["prompt_encoder.no_mask_embed.weight"]
    assert all(n in trainable for n in params if n.startswith((*NEW_PREFIXES, "mask_decoder.transformer.")))

    before = {n: p.detach().clone() for n, p in params.items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    _ce_loss(model, _image(batch=1)).backward()
    missing = [n for n in trainable if params[n].grad is None or not params[n].grad.abs().sum() > 0]
    assert not missing, f"trainable parameters the loss does not reach: {missing}"
    opt.step()
    for name, p in params.items():
        if name not in trainable:
            assert torch.equal(p, before[name]), f"frozen {name} changed"
        else:
            assert not torch.equal(p, before[name]), f"trainable {name} did not change"


def test_gradients_reach_lora_class_tokens_and_guidance_scales() -> None:
    model = build_hsam(TINY, HSAMOptions(num_classes=1)).train()
    fresh = _ce_loss(model, _image(batch=1))
    fresh.backward()
    assert model.lora[0].B.grad.abs().sum() > 0  # B gets a gradient from the start (A's is B-weighted: 0)
    model.zero_grad()
    _perturb_lora(model)
    _ce_loss(model, _image(batch=1)).backward()
    dec = model.hsam_decoder
    for name, p in [
        ("lora.0.A", model.lora[0].A),
        ("lora.3.B", model.lora[3].B),
        ("class_tokens", dec.class_tokens.weight),
        ("class_queries", dec.refine.class_queries.weight),
        ("γ", dec.refine.self_attn.guidance_scale),
        ("λ", dec.refine.cross_attn.guidance_scale),
    ]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_freeze_encoder_false_trains_the_encoder_too() -> None:
    model = build_hsam(TINY, HSAMOptions(freeze_encoder=False))
    trainable = set(model.trainable_parameter_names())
    assert all(n in trainable for n, _ in model.image_encoder.named_parameters(prefix="image_encoder"))
    assert model.image_encoder.patch_embed.proj.weight.requires_grad
    assert not model.mask_decoder.iou_prediction_head.layers[0].weight.requires_grad


# ----------------------------------------------------------------------------------------------- weights, registry
def test_official_fixture_loads_strictly_and_lora_starts_at_the_official_encoder(
    official_ckpt: Path, official_io: dict[str, Tensor]
) -> None:
    config = ModelConfig.from_preset("tiny", method="hsam", checkpoint=str(official_ckpt), options={"num_classes": 2})
    model = build_model(config).eval()
    assert isinstance(model, HSAM) and model.num_output_channels == 3
    file_sd = extract_state_dict(read_weights_file(official_ckpt))
    sd = model.state_dict()
    assert {k for k in sd if k.startswith(BACKBONE_PREFIXES)} == set(file_sd)
    assert all(torch.equal(sd[k], v) for k, v in file_sd.items())
    assert all(k.startswith(NEW_PREFIXES) for k in set(sd) - set(file_sd))
    assert {k for k in sd if k.startswith("lora.")} == {
        f"lora.{i}.{m}" for i in range(TINY.encoder_depth) for m in "AB"
    }
    assert torch.equal(sd["lora.0.B"], torch.zeros_like(sd["lora.0.B"]))
    with torch.no_grad():
        embedding = model.encode(official_io["image"]).embedding
        out = model(official_io["image"])
    scale = official_io["image_embedding"].abs().max()
    torch.testing.assert_close(embedding / scale, official_io["image_embedding"] / scale, atol=1e-4, rtol=1e-4)
    assert out.logits.shape == (2, 3, S, S, S)
    assert not model.image_encoder.blocks[0].attn.qkv.weight.requires_grad and model.lora[0].A.requires_grad


def test_registered_with_options_and_loss() -> None:
    spec = method_spec("hsam")
    assert spec.options is HSAMOptions and spec.loss == "hsam"
    model = build_model(ModelConfig.from_preset("tiny", method="hsam", options={"num_classes": 2}))
    assert isinstance(model, HSAM) and model.num_classes == 2 and model.prompt_free
    weighted = build_model(
        ModelConfig.from_preset("tiny", method="hsam", options={"num_classes": 1, "class_weights": [1, 4]})
    )
    assert weighted.options.class_weights == (1.0, 4.0)


def test_overhead_helper_counts_every_parameter() -> None:
    model = build_hsam(TINY)
    info = hsam_overhead(model)
    total = sum(p.numel() for p in model.parameters())
    assert info["backbone"] + info["new"] == total
    assert info["backbone"] == sum(p.numel() for p in build_sam3d(TINY).parameters())
    assert info["lora"] == TINY.encoder_depth * 4 * (TINY.encoder_embed_dim + 3 * TINY.encoder_embed_dim)
    assert info["new"] == info["lora"] + info["hsam_decoder"]
    assert 0 < info["ratio"] < 1 and info["new"] < info["trainable"] < total


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"num_classes": 0}, "num_classes must be an integer >= 1"),
        ({"num_classes": 1.5}, "num_classes must be an integer >= 1"),
        ({"num_classes": float("nan")}, "num_classes must be an integer >= 1"),
        ({"lora_rank": 0}, "lora_rank must be an integer >= 1"),
        ({"lora_alpha": -1.0}, "lora_alpha must be a finite number > 0"),
        ({"lora_targets": "qvk"}, "Unknown H-SAM LoRA target 'qvk'. Did you mean 'qkv'"),
        ({"class_weights": (1.0,)}, r"needs 2 weights \(background first"),
        ({"class_weights": (1.0, 0.0)}, "finite and > 0"),
        ({"class_weights": "1,2"}, "list of K \\+ 1 numbers"),
        ({"decoder_channels": 1}, "decoder_channels must be an integer >= 2"),
        ({"freeze_encoder": "yes"}, "freeze_encoder must be true or false"),
    ],
)
def test_options_validation(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HSAMOptions(**options)


def test_patch_size_must_be_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="power-of-two patch size"):
        build_hsam(TINY.replace(img_size=48, patch_size=12))


@pytest.mark.slow
def test_full_preset_builds() -> None:
    model = build_hsam(get_preset("sam_med3d_vit_b"), HSAMOptions(num_classes=2))
    info = hsam_overhead(model)
    assert info["lora"] == 12 * 4 * (768 + 3 * 768)
    assert info["ratio"] < 0.1
    assert model.hsam_decoder.pixel_decoder.widths == (64, 32, 16, 16, 8)
