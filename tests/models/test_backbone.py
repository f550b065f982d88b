"""The SAM-Med3D backbone: official keys and shapes, official outputs, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lesionsam.models import Prompts
from lesionsam.models.backbone import Sam3DConfig, build_sam3d, get_preset
from lesionsam.models.checkpoint import load_sam_med3d_weights


@pytest.fixture(scope="module")
def official_tiny(official_ckpt: Path):
    model = build_sam3d(get_preset("tiny")).eval()
    load_sam_med3d_weights(model, official_ckpt)
    return model


def test_full_preset_state_dict_equals_the_official_key_list(official_keys_tsv: Path) -> None:
    rows = official_keys_tsv.read_text().splitlines()[1:]
    spec = {key: shape for key, shape in (r.split("\t") for r in rows)}
    with torch.device("meta"):
        model = build_sam3d(get_preset("sam_med3d_vit_b"))
    ours = {k: "x".join(map(str, v.shape)) for k, v in model.state_dict().items()}
    assert list(ours) == list(spec)  # same keys, same order
    assert ours == spec
    assert sum(v.numel() for v in model.state_dict().values()) == 100_509_616


def test_tiny_preset_matches_the_fixture_config(tiny_fixture_config: dict) -> None:
    cfg = get_preset("tiny")
    c = tiny_fixture_config
    assert (cfg.img_size, cfg.patch_size, cfg.encoder_embed_dim, cfg.encoder_depth) == (
        c["img"],
        c["ps"],
        c["emb"],
        c["depth"],
    )
    assert (cfg.encoder_num_heads, list(cfg.encoder_global_attn_indexes), cfg.window_size, cfg.prompt_embed_dim) == (
        c["heads"],
        c["glob"],
        c["win"],
        c["ped"],
    )


@pytest.mark.parametrize("impl", ["fast", "naive"])
def test_image_encoder_equals_official(official_tiny, official_io, impl: str) -> None:
    official_tiny.image_encoder.set_attention_impl(impl)
    with torch.no_grad():
        emb = official_tiny.image_encoder(official_io["image"])
    official_tiny.image_encoder.set_attention_impl("fast")
    torch.testing.assert_close(emb, official_io["image_embedding"], atol=1e-5, rtol=1e-4)


def test_prompt_encoder_equals_official(official_tiny, official_io) -> None:
    pts = (official_io["points"], official_io["labels"])
    with torch.no_grad():
        sparse, dense = official_tiny.prompt_encoder(points=pts, boxes=None, masks=official_io["mask_input"])
        sparse0, dense0 = official_tiny.prompt_encoder(points=pts, boxes=None, masks=None)
    torch.testing.assert_close(sparse, official_io["sparse"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dense, official_io["dense"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sparse0, official_io["sparse_nomask"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dense0, official_io["dense_nomask"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("multimask", [False, True])
def test_mask_decoder_equals_official(official_tiny, official_io, multimask: bool) -> None:
    suffix = "_nomask" if multimask else ""
    with torch.no_grad():
        low, iou = official_tiny.mask_decoder(
            image_embeddings=official_io["image_embedding"],
            image_pe=official_tiny.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=official_io["sparse" + suffix],
            dense_prompt_embeddings=official_io["dense" + suffix],
            multimask_output=multimask,
        )
    want_low = official_io["low_res_multi" if multimask else "low_res"]
    want_iou = official_io["iou_multi" if multimask else "iou"]
    scale = want_low.abs().max()
    torch.testing.assert_close(low / scale, want_low / scale, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(iou, want_iou, atol=1e-5, rtol=1e-4)


def test_whole_model_forward_equals_official_chain(official_tiny, official_io) -> None:
    prompts = Prompts(points=official_io["points"], labels=official_io["labels"], mask=official_io["mask_input"])
    with torch.no_grad():
        out = official_tiny(official_io["image"], prompts)
    scale = official_io["low_res"].abs().max()
    torch.testing.assert_close(out.low_res_logits / scale, official_io["low_res"] / scale, atol=1e-4, rtol=1e-4)
    assert out.logits.shape == (2, 1, 64, 64, 64)
    assert out.iou.shape == (2, 1)


@pytest.mark.parametrize("multimask", [False, True])
def test_fresh_full_resolution_path_keeps_the_official_outputs(
    official_tiny, official_io, official_ckpt, multimask
) -> None:
    """Official weights in a model with the full-resolution decoder path present and fresh: identical outputs."""
    model = build_sam3d(get_preset("tiny"), full_res_channels=8).eval()
    report = load_sam_med3d_weights(model, official_ckpt)
    assert report.new_keys and all(k.startswith("full_res.") for k in report.new_keys)
    prompts = Prompts(points=official_io["points"], labels=official_io["labels"], mask=official_io["mask_input"])
    with torch.no_grad():
        encoded = model.encode(official_io["image"])
        out = model.decode(encoded, prompts, multimask_output=multimask)
        want = official_tiny(official_io["image"], prompts, multimask_output=multimask)
    assert torch.equal(out.low_res_logits, want.low_res_logits)
    assert torch.equal(out.logits, want.logits)
    assert torch.equal(out.iou, want.iou)
    if not multimask:
        scale = official_io["low_res"].abs().max()
        torch.testing.assert_close(out.low_res_logits / scale, official_io["low_res"] / scale, atol=1e-4, rtol=1e-4)


def test_forward_without_prompts_and_multimask(official_tiny, official_io) -> None:
    with torch.no_grad():
        out = official_tiny(official_io["image"], Prompts(), multimask_output=True)
    assert out.low_res_logits.shape == (2, 3, 16, 16, 16)


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ((1, 64, 64, 64), torch.float32, "5-D tensor"),
        ((1, 2, 64, 64, 64), torch.float32, "1 channel"),
        ((1, 1, 64, 64, 48), torch.float32, "64³ crop"),
        ((1, 1, 64, 64, 64), torch.int16, "floating-point"),
    ],
)
def test_image_encoder_rejects_bad_input(official_tiny, shape, dtype, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        official_tiny.image_encoder(torch.zeros(shape, dtype=dtype))


def test_config_rejects_crop_not_divisible_by_patch() -> None:
    with pytest.raises(ValueError, match="not a multiple of patch_size 16"):
        Sam3DConfig(img_size=100)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("prompt_embed_dim", 40, "divisible by 3"),
        ("encoder_num_heads", 7, "does not divide"),
        ("encoder_global_attn_indexes", (2, 12), "outside 0..11"),
    ],
)
def test_config_rejects_inconsistent_sizes(field: str, value, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Sam3DConfig(**{field: value})


def test_points_outside_the_crop_are_refused(official_tiny) -> None:
    coords = torch.tensor([[[10.0, 64.0, 3.0]]])
    with pytest.raises(ValueError, match=r"outside the 64x64x64 crop"):
        official_tiny.prompt_encoder(points=(coords, torch.tensor([[1]])), boxes=None, masks=None)
    with pytest.raises(ValueError, match="outside"):
        official_tiny.prompt_encoder(points=(-coords, torch.tensor([[1]])), boxes=None, masks=None)


def test_bad_click_labels_and_shapes_are_refused(official_tiny) -> None:
    coords = torch.tensor([[[10.0, 10.0, 3.0]]])
    with pytest.raises(ValueError, match="click labels must be"):
        official_tiny.prompt_encoder(points=(coords, torch.tensor([[2]])), boxes=None, masks=None)
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        official_tiny.prompt_encoder(points=(coords[..., :2], torch.tensor([[1]])), boxes=None, masks=None)
    with pytest.raises(ValueError, match="mask prompt must have shape"):
        official_tiny.prompt_encoder(points=None, boxes=None, masks=torch.zeros(1, 1, 8, 8, 8))


def test_boxes_and_text_are_refused_by_plain_sam_med3d(official_tiny) -> None:
    image = torch.zeros(1, 1, 64, 64, 64)
    with pytest.raises(ValueError, match="does not take prompt"):
        official_tiny(image, Prompts(boxes=torch.zeros(1, 6)))
    with pytest.raises(ValueError, match="does not take prompt"):
        official_tiny(image, Prompts(text=["liver tumour"]))
    with pytest.raises(ValueError, match="points and labels go together"):
        Prompts(points=torch.zeros(1, 1, 3))
