"""RefSAM3D: adapters, text prompts, hierarchical cross-attention and the multi-level decoder (tiny preset)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from lesionsam.models import ModelConfig, Prompts, build_model
from lesionsam.models.backbone import Sam3D, build_sam3d, get_preset
from lesionsam.models.checkpoint import BACKBONE_PREFIXES, extract_state_dict, read_weights_file
from lesionsam.models.methods.refsam3d import (
    NEW_PREFIXES,
    RefEncodedImage,
    RefSAM3D,
    RefSAM3DOptions,
    build_refsam3d,
    refsam3d_overhead,
)
from lesionsam.models.registry import method_spec

TINY = get_preset("tiny")
TEXTS = ["liver tumour", "enhancing brain tumour in the left lobe"]


def _pair(seed: int = 0) -> tuple[Sam3D, RefSAM3D]:
    """A seeded plain SAM-Med3D and a RefSAM3D sharing its parts (the same weights), both in eval mode."""
    torch.manual_seed(seed)
    sam = build_sam3d(TINY).eval()
    with torch.no_grad():  # non-zero positions and qkv biases, as real weights
        for name, p in sam.image_encoder.named_parameters():
            if "rel_pos" in name or "pos_embed" in name or name.endswith("qkv.bias"):
                p.normal_(0.0, 0.3)
    return sam, RefSAM3D.from_sam3d(sam).eval()


def _perturb_new_parts(model: RefSAM3D, seed: int = 1, head: bool = True) -> None:
    """Random values for the zero-initialised layers (adapter up-projections and, if ``head``, the decoder head's
    weight; its bias stays 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in model.adapters:
            for p in adapter.up.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        if head:
            last = model.ref_decoder.head[-1]
            last.weight.copy_(torch.randn(last.weight.shape, generator=gen) * 0.05)


def _inputs(batch: int = 2, seed: int = 2) -> tuple[Tensor, Prompts]:
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 1, TINY.img_size, TINY.img_size, TINY.img_size, generator=gen)
    points = torch.rand(batch, 2, 3, generator=gen) * (TINY.img_size - 1)
    labels = torch.tensor([[1, 0]] * batch)
    return image, Prompts(points=points, labels=labels)


# ----------------------------------------------------------------------------------------------- equal to backbone
def test_fresh_model_encoder_and_sam_decoder_equal_the_backbone() -> None:
    """Zero-initialised adapters: the adapted embedding and the SAM decoding of clicks are SAM-Med3D's exactly;
    the zero-initialised decoder head makes the full-res logits the trilinear upsampling of the low-res ones."""
    sam, ref = _pair()
    image, clicks = _inputs()
    with torch.no_grad():
        enc = ref.encode(image)
        want_embedding = sam.encode(image)
        assert isinstance(enc, RefEncodedImage)
        assert torch.equal(enc.embedding, want_embedding)
        assert len(enc.stages) == 4 and all(s.shape == (2, 4, 4, 4, TINY.encoder_embed_dim) for s in enc.stages)
        low, iou = ref.decode_sam(enc.embedding, clicks)
        want = sam.decode(want_embedding, clicks)
        assert torch.equal(low, want.low_res_logits) and torch.equal(iou, want.iou)
        out = ref.decode(enc, Prompts(points=clicks.points, labels=clicks.labels, text=TEXTS))
        assert torch.equal(out.logits, ref.upsample(out.low_res_logits))


def test_official_fixture_loads_and_sam_decoding_matches_the_official_output(official_ckpt: Path, official_io) -> None:
    model = build_model(ModelConfig.from_preset("tiny", method="refsam3d", checkpoint=str(official_ckpt))).eval()
    assert isinstance(model, RefSAM3D)
    file_sd = extract_state_dict(read_weights_file(official_ckpt))
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in file_sd.items())
    assert torch.equal(model.adapters[0].up.weight, torch.zeros_like(model.adapters[0].up.weight))
    prompts = Prompts(points=official_io["points"], labels=official_io["labels"], mask=official_io["mask_input"])
    with torch.no_grad():
        enc = model.encode(official_io["image"])
        low, _ = model.decode_sam(enc.embedding, prompts)
        out = model.decode(enc, Prompts(text=["liver tumour"] * 2, mask=official_io["mask_input"]))
    scale = official_io["low_res"].abs().max()
    torch.testing.assert_close(low / scale, official_io["low_res"] / scale, atol=1e-4, rtol=1e-4)
    assert out.logits.shape == (2, 1, 64, 64, 64)
    # the builder's freezing policy survives loading
    assert not model.image_encoder.patch_embed.proj.weight.requires_grad
    assert model.adapters[0].up.weight.requires_grad


# ----------------------------------------------------------------------------------------------- text prompts
def test_different_text_gives_a_different_mask() -> None:
    _, ref = _pair()
    _perturb_new_parts(ref)
    image, _ = _inputs(batch=1)
    with torch.no_grad():
        enc = ref.encode(image)
        a = ref.decode(enc, Prompts(text=["liver tumour"]))
        b = ref.decode(enc, Prompts(text=["enhancing brain tumour"]))
        again = ref.decode(enc, Prompts(text=["liver tumour"]))
    assert torch.equal(a.logits, again.logits)
    assert not torch.allclose(a.low_res_logits, b.low_res_logits)
    assert not torch.allclose(a.logits, b.logits)
    assert bool(((a.logits > 0) != (b.logits > 0)).any())


def test_text_condition_reaches_the_full_resolution_decoder() -> None:
    """FiLM: fresh (zero-initialised) modulations ignore the condition; trained ones change the full-resolution
    logits for the same SAM low-res logits, and a condition of None is no modulation."""
    _, ref = _pair()
    _perturb_new_parts(ref)
    image, _ = _inputs(batch=1)
    dec = ref.ref_decoder
    gen = torch.Generator().manual_seed(5)
    cond_a, cond_b = torch.randn(2, 1, TINY.prompt_embed_dim, generator=gen)
    with torch.no_grad():
        enc = ref.encode(image)
        low, _ = ref.decode_sam(enc.embedding, Prompts(points=torch.full((1, 1, 3), 30.0), labels=torch.ones(1, 1)))
        args = (enc.embedding, enc.stages, low, enc.image)
        plain = dec(*args)
        assert torch.equal(dec(*args, condition=cond_a), plain)
        # encode computes the image path once; decoding with it equals computing it in the decoder
        clicks = Prompts(points=torch.full((1, 1, 3), 30.0), labels=torch.ones(1, 1))
        assert enc.image_features is not None and len(enc.image_features) == 2
        assert torch.equal(ref.decode(enc, clicks).logits, plain)
        dec.film.weight.copy_(torch.randn(dec.film.weight.shape, generator=gen) * 0.1)
        a, b = dec(*args, condition=cond_a), dec(*args, condition=cond_b)
        assert torch.equal(dec(*args), plain)
    scale = float(plain.std())
    assert float((a - b).abs().max()) > 1e-2 * scale
    assert float((a - plain).abs().max()) > 1e-2 * scale


def test_text_only_and_text_with_clicks_and_mask_run_with_the_right_shapes() -> None:
    _, ref = _pair()
    image, clicks = _inputs()
    low_side, side = TINY.low_res_size, TINY.img_size
    with torch.no_grad():
        enc = ref.encode(image)
        text_only = ref.decode(enc, Prompts(text=TEXTS))
        both = ref(image, Prompts(points=clicks.points, labels=clicks.labels, text=TEXTS))
        with_mask = ref.decode(enc, Prompts(text=TEXTS, mask=both.low_res_logits))
    for out in (text_only, both, with_mask):
        assert out.low_res_logits.shape == (2, 1, low_side, low_side, low_side)
        assert out.logits.shape == (2, 1, side, side, side)
        assert out.iou.shape == (2, 1)
        assert torch.isfinite(out.logits).all()
    tokens, mask = text_only.extras["text_tokens"], text_only.extras["text_mask"]
    assert tokens.shape[:2] == mask.shape and tokens.shape[0] == 2 and tokens.shape[2] == TINY.prompt_embed_dim
    assert mask[:, 0].all() and mask.sum(1)[0] < mask.sum(1)[1]  # sentence token first; the short text is padded
    assert not torch.allclose(text_only.low_res_logits, both.low_res_logits)  # clicks change the result
    with torch.no_grad():
        again = ref.decode(enc, Prompts(text=TEXTS))
    assert torch.equal(again.logits, text_only.logits)  # decode is repeatable


def test_prompt_errors() -> None:
    _, ref = _pair()
    image, clicks = _inputs()
    enc = ref.encode(image)
    with pytest.raises(ValueError, match="needs a text prompt .* or clicks"):
        ref.decode(enc, Prompts())  # neither text nor clicks
    with torch.no_grad():
        clicks_only = ref.decode(enc, clicks)  # clicks without text: the SAM decoder alone + multi-level decoder
    assert clicks_only.logits.shape == (2, 1, TINY.img_size, TINY.img_size, TINY.img_size)
    with pytest.raises(ValueError, match="one text prompt per crop"):
        ref.decode(enc, Prompts(text=["liver tumour"]))
    with pytest.raises(ValueError, match="boxes"):
        ref.decode(enc, Prompts(text=TEXTS, boxes=torch.zeros(2, 6)))
    with pytest.raises(ValueError, match="one mask"):
        ref.decode(enc, Prompts(text=TEXTS), multimask_output=True)
    with pytest.raises(TypeError, match="RefEncodedImage"):
        ref.decode(enc.embedding, Prompts(text=TEXTS))


# ----------------------------------------------------------------------------------------------- training, freezing
def test_training_step_changes_only_the_trainable_parts() -> None:
    torch.manual_seed(0)
    model = build_refsam3d(TINY).train()
    trainable = set(model.trainable_parameter_names())
    params = dict(model.named_parameters())
    assert {n for n, p in params.items() if p.requires_grad} == trainable
    assert all(n.startswith((*NEW_PREFIXES, "mask_decoder.")) or ".norm1." in n or ".norm2." in n for n in trainable)
    assert all(n in trainable for n in params if n.startswith("mask_decoder."))
    assert not any(
        n.startswith(("prompt_encoder.", "image_encoder.patch_embed", "image_encoder.neck")) for n in trainable
    )
    assert any(n.startswith("image_encoder.blocks.0.norm1.") for n in trainable)
    assert all(n in trainable for n in params if n.startswith(NEW_PREFIXES))

    before = {n: p.detach().clone() for n, p in params.items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    image, clicks = _inputs(batch=1)
    target = (torch.rand(1, 1, TINY.img_size, TINY.img_size, TINY.img_size) > 0.9).float()
    encoded = model.encode(image)
    out = model.decode(encoded, Prompts(points=clicks.points, labels=clicks.labels, text=["liver tumour"]))
    region = model.region_scores(encoded, 0, target > 0.5, ["liver tumour", "liver cyst"])  # the class term
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, target)
    loss = loss + torch.nn.functional.cross_entropy(region, torch.tensor([0]))
    loss.backward()
    opt.step()

    for name, p in params.items():
        if name not in trainable:
            assert torch.equal(p, before[name]), f"frozen {name} changed"
    changed = {n for n in trainable if not torch.equal(params[n], before[n])}
    for prefix in (*NEW_PREFIXES, "image_encoder.blocks."):
        assert any(n.startswith(prefix) for n in changed), f"nothing under {prefix} changed"
    assert "adapters.0.up.weight" in changed and "ref_decoder.head.4.weight" in changed


def test_frozen_mask_decoder_option() -> None:
    model = build_refsam3d(TINY, RefSAM3DOptions(train_mask_decoder=False))
    frozen = set(model.frozen_parameter_names())
    assert {n for n, _ in model.named_parameters() if n.startswith("mask_decoder.")} <= frozen
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("mask_decoder."))


def test_freeze_backbone_false_trains_everything() -> None:
    model = build_refsam3d(TINY, RefSAM3DOptions(freeze_backbone=False))
    assert model.frozen_parameter_names() == []
    assert all(p.requires_grad for p in model.parameters())
    assert set(model.trainable_parameter_names()) == {n for n, _ in model.named_parameters()}


# ---------------------------------------------------------------------------------------------- keys, overhead, options
def test_state_dict_keys_are_the_backbone_keys_plus_new_prefixes(official_ckpt: Path) -> None:
    model = build_refsam3d(TINY)
    keys = set(model.state_dict())
    official = set(extract_state_dict(read_weights_file(official_ckpt)))
    backbone = {k for k in keys if k.startswith(BACKBONE_PREFIXES)}
    assert backbone == official == set(build_sam3d(TINY).state_dict())
    assert all(k.startswith(NEW_PREFIXES) for k in keys - backbone)
    for prefix in NEW_PREFIXES:
        assert any(k.startswith(prefix) for k in keys), prefix
    assert {k.split(".")[1] for k in keys if k.startswith("cross_attn.")} == {"0", "1", "2", "3"}
    assert {k.split(".")[1] for k in keys if k.startswith("adapters.")} == {str(i) for i in range(TINY.encoder_depth)}


def test_overhead_helper_counts_every_parameter() -> None:
    model = build_refsam3d(TINY)
    info = refsam3d_overhead(model)
    total = sum(p.numel() for p in model.parameters())
    assert info["backbone"] + info["new"] == total
    assert info["backbone"] == sum(p.numel() for p in build_sam3d(TINY).parameters())
    assert info["new"] == sum(info[p.rstrip(".")] for p in NEW_PREFIXES)
    assert 0 < info["ratio"] < 1 and info["new"] < info["trainable"] < total


def test_stages_default_and_validation() -> None:
    assert RefSAM3DOptions().resolve_stages(get_preset("sam_med3d_vit_b")) == (2, 5, 8, 11)
    assert RefSAM3DOptions().resolve_stages(TINY) == (0, 1, 2, 3)
    assert RefSAM3DOptions(stages=[3, 1]).resolve_stages(TINY) == (1, 3)
    with pytest.raises(ValueError, match="not blocks"):
        RefSAM3DOptions(stages=(1, 4)).resolve_stages(TINY)
    with pytest.raises(ValueError, match="at most 4"):
        RefSAM3DOptions(stages=(0, 1, 2, 3, 4)).resolve_stages(get_preset("sam_med3d_vit_b"))
    with pytest.raises(ValueError, match="distinct"):
        RefSAM3DOptions(stages=(1, 1))
    with pytest.raises(ValueError, match="adapter_reduction"):
        RefSAM3DOptions(adapter_reduction=0)
    two = build_refsam3d(TINY, RefSAM3DOptions(stages=(1, 3), decoder_channels=8))
    image, _ = _inputs(batch=1)
    with torch.no_grad():
        out = two.eval()(image, Prompts(text=["liver tumour"]))
    assert len(two.cross_attn) == 2 and out.logits.shape == (1, 1, 64, 64, 64)


def test_registered_with_options_and_loss() -> None:
    spec = method_spec("refsam3d")
    assert spec.options is RefSAM3DOptions and spec.loss == "dice_ce"
    model = build_model(ModelConfig.from_preset("tiny", method="refsam3d", options={"stages": [0, 3]}))
    assert isinstance(model, RefSAM3D) and model.stages == (0, 3)
    assert model.required_prompts == set() and model.accepted_prompts == {"text", "points", "mask"}


def test_competing_logits_are_the_log_odds_of_a_softmax_over_background_and_the_classes() -> None:
    """Reference: a softmax over (background = 0, own, others...) computed directly; log p / (1 - p)."""
    from lesionsam.models import competing_logits

    g = torch.Generator().manual_seed(0)
    own = 4 * torch.randn(2, 1, 3, 4, 5, generator=g)
    others = 4 * torch.randn(2, 2, 3, 4, 5, generator=g)
    probs = torch.softmax(torch.cat([torch.zeros_like(own), own, others], dim=1).double(), dim=1)[:, 1:2]
    expected = torch.log(probs) - torch.log1p(-probs)
    got = competing_logits(own, others)
    assert got.shape == own.shape
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert bool((got <= own).all())  # competition only ever takes voxels away
    # Negative wherever background or another class scores higher; positive where the class wins by more than
    # log(1 + K) = log 3 (then even K equal rivals at the runner-up's score cannot outweigh it).
    margin = own - torch.cat([torch.zeros_like(own), others], 1).max(1, keepdim=True).values
    assert not bool((got > 0)[margin < 0].any())
    assert bool((got > 0)[margin > math.log(3)].all()) and int((margin > math.log(3)).sum()) > 5
    # No competitor: the text's own logits.
    assert torch.equal(competing_logits(own, others[:, :0]), own)


def test_region_pooling_matches_a_scipy_reference() -> None:
    """Inside / shell / difference means of the region classifier against block means and scipy's max filter."""
    import numpy as np
    from scipy import ndimage

    from lesionsam.models.methods.refsam3d_parts import RegionClassifier

    head = RegionClassifier(feature_channels=2, text_dim=4, shell=2)
    g = torch.Generator().manual_seed(1)
    features = torch.randn(1, 2, 8, 8, 8, generator=g)
    masks = torch.zeros(2, 1, 16, 16, 16, dtype=torch.bool)
    masks[0, 0, 3:9, 4:10, 5:8] = True
    masks[1, 0, 10:13, 1:4, 12:16] = True
    got = head.pool(features, masks)
    f = features[0].numpy().astype(np.float64)
    for k in range(2):
        m = masks[k, 0].numpy().astype(np.float64).reshape(8, 2, 8, 2, 8, 2).mean((1, 3, 5))
        shell = np.clip(ndimage.maximum_filter(m, size=5, mode="constant", cval=0.0) - m, 0.0, None)
        inside = (f * m).sum((1, 2, 3)) / m.sum()
        around = (f * shell).sum((1, 2, 3)) / shell.sum()
        expected = np.concatenate([inside, around, inside - around])
        np.testing.assert_allclose(got[k].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_region_classifier_learns_lesion_classes_from_their_contrast_to_the_surroundings() -> None:
    """Two lesion kinds whose absolute intensity overlaps across crops (a random offset per crop) but whose contrast
    to the surrounding tissue differs: trained on the pair loss, the region scores classify held-out lesions."""
    import numpy as np

    from lesionsam.training.text_terms import region_class_loss

    torch.manual_seed(0)
    model = build_refsam3d(TINY)
    rng = np.random.default_rng(0)

    def crop() -> tuple[Tensor, Tensor]:
        image = torch.full((1, 1, 64, 64, 64), float(rng.uniform(-0.4, 0.4)))
        labels = torch.zeros(2, 1, 64, 64, 64)
        for j, contrast in enumerate((-0.3, -0.7)):  # "tumour" -0.3, "cyst" -0.7 below the tissue
            c = rng.integers(14, 50, size=3)
            r = int(rng.integers(4, 9))
            sl = tuple(slice(int(x) - r, int(x) + r) for x in c)
            if labels[(0, 0, *sl)].any() or labels[(1, 0, *sl)].any():
                continue
            image[(0, 0, *sl)] += contrast
            labels[(j, 0, *sl)] = 1.0
        image += 0.05 * torch.randn(image.shape, generator=torch.Generator().manual_seed(int(rng.integers(1e6))))
        return image, labels

    texts = ["liver tumour", "liver cyst"]
    train = [crop() for _ in range(6)]
    with torch.no_grad():
        encoded = [model.encode(torch.cat([im, im])) for im, _ in train]
    params = [p for n, p in model.named_parameters() if n.startswith(("region_head.", "text."))]
    opt = torch.optim.Adam(params, lr=3e-3)
    for _ in range(60):
        for enc, (_, lab) in zip(encoded, train, strict=True):
            opt.zero_grad()
            loss = region_class_loss(model, enc, lab, texts)
            loss.backward()
            opt.step()
    right = total = 0
    with torch.no_grad():
        for im, lab in (crop() for _ in range(6)):
            enc = model.encode(im)
            for j in range(2):
                if lab[j].any():
                    scores = model.region_scores(enc, 0, lab[j : j + 1] > 0.5, texts)
                    right += int(scores.argmax(1).item() == j)
                    total += 1
    assert total >= 8 and right == total
