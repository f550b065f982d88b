"""The full-resolution decoder path (``model.full_res_channels``): off by default and left out of written configs,
declared per method, zero-initialised (a fresh path adds exactly zero), trainable, and saved and loaded strictly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lesionsam.models import ModelConfig, Prompts, build_model
from lesionsam.models.backbone import FullResEncoded, build_sam3d, get_preset
from lesionsam.models.backbone.full_res import FullResPath, full_res_levels
from lesionsam.models.checkpoint import CheckpointError, load_sam_med3d_weights, save_checkpoint
from lesionsam.models.registry import load_model, method_spec
from lesionsam.utils.dataclass_io import apply_overrides, from_dict, to_dict

CLICK = Prompts(points=torch.tensor([[[30.0, 28.0, 33.0]]]), labels=torch.ones(1, 1, dtype=torch.int64))


def _config(method: str = "finetune", **kwargs: object) -> ModelConfig:
    return ModelConfig(method=method, preset="tiny", backbone=get_preset("tiny"), **kwargs)  # type: ignore[arg-type]


def test_the_path_is_off_by_default_and_left_out_of_a_written_config() -> None:
    off = _config()
    assert "full_res_channels" not in to_dict(off)
    assert from_dict(ModelConfig, to_dict(off)) == off
    model = build_model(off)
    assert not any(k.startswith("full_res.") for k in model.state_dict())
    assert isinstance(model.encode(torch.zeros(1, 1, 64, 64, 64)), torch.Tensor)  # the official encode, unchanged
    on = from_dict(ModelConfig, apply_overrides(to_dict(off), ["full_res_channels=8"]))
    assert on.full_res_channels == 8 and to_dict(on)["full_res_channels"] == 8
    assert from_dict(ModelConfig, to_dict(on)) == on


@pytest.mark.parametrize("value", [0, -1, True, 2.5])
def test_a_bad_channel_count_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="full_res_channels must be an integer >= 1"):
        _config(full_res_channels=value)


@pytest.mark.parametrize("method", ["sam_med3d", "finetune", "finetune_zoom", "sgp_sam", "sgp_dice"])
def test_every_click_method_carries_the_path_and_a_fresh_one_changes_nothing(method: str) -> None:
    assert method_spec(method).full_res
    torch.manual_seed(0)
    plain = build_model(_config(method)).eval()
    with_path = build_model(_config(method, full_res_channels=4)).eval()
    result = with_path.load_state_dict(plain.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(k.startswith("full_res.") for k in result.missing_keys)
    image = torch.randn(2, 1, 64, 64, 64)
    prompts = Prompts(points=torch.full((2, 1, 3), 30.0), labels=torch.ones(2, 1, dtype=torch.int64))
    with torch.no_grad():
        want = plain.decode(plain.encode(image), prompts)
        got = with_path.decode(with_path.encode(image), prompts)
    assert torch.equal(got.logits, want.logits) and torch.equal(got.low_res_logits, want.low_res_logits)
    assert got.extras.keys() == want.extras.keys()


@pytest.mark.parametrize(("method", "why"), [("refsam3d", "ref_decoder"), ("hsam", "hierarchical pixel decoder")])
def test_methods_with_their_own_full_resolution_decoder_refuse_the_path(method: str, why: str) -> None:
    assert not method_spec(method).full_res and why in method_spec(method).full_res_note
    with pytest.raises(ValueError, match=f"no full-resolution decoder path.*{why}.*remove model.full_res_channels"):
        build_model(_config(method, full_res_channels=8))


def test_the_residual_is_added_to_the_upsampled_low_res_logits_once_trained() -> None:
    torch.manual_seed(1)
    model = build_sam3d(get_preset("tiny"), full_res_channels=4).eval()
    with torch.no_grad():
        for p in model.full_res.parameters():  # type: ignore[union-attr]
            p.normal_(0.0, 0.3)
        encoded = model.encode(torch.randn(1, 1, 64, 64, 64))
        assert isinstance(encoded, FullResEncoded)
        assert [tuple(f.shape) for f in encoded.features] == [(1, 4, 64, 64, 64), (1, 8, 32, 32, 32)]
        one = model.decode(encoded, CLICK)
        multi = model.decode(encoded, CLICK, multimask_output=True)
    assert one.low_res_logits.shape == (1, 1, 16, 16, 16) and one.logits.shape == (1, 1, 64, 64, 64)
    assert multi.logits.shape == (1, 3, 64, 64, 64)
    residual = one.logits - model.upsample(one.low_res_logits)
    assert float(residual.abs().max()) > 1e-3
    # each mask token has its own residual channel: the single mask's is not any ambiguity mask's
    multi_residual = multi.logits - model.upsample(multi.low_res_logits)
    assert not any(torch.allclose(residual[:, 0], multi_residual[:, i]) for i in range(3))


def test_decode_refuses_an_encoding_without_the_stem_features() -> None:
    with_path = build_sam3d(get_preset("tiny"), full_res_channels=4)
    plain = build_sam3d(get_preset("tiny"))
    image = torch.zeros(1, 1, 64, 64, 64)
    with torch.no_grad():
        with pytest.raises(TypeError, match="full-resolution path but decode got no stem features"):
            with_path.decode(with_path.image_encoder(image), CLICK)
        with pytest.raises(TypeError, match="model has no full-resolution path"):
            plain.decode(with_path.encode(image), CLICK)


def test_only_the_last_convolution_is_zero_so_every_part_learns() -> None:
    torch.manual_seed(2)
    model = build_sam3d(get_preset("tiny"), full_res_channels=4)
    path = model.full_res
    assert path is not None
    assert not path.head.out.weight.any() and not path.head.out.bias.any()
    assert all(p.any() for n, p in path.named_parameters() if not n.startswith("head.out."))
    opt = torch.optim.SGD(path.parameters(), lr=0.1)
    image, target = torch.randn(1, 1, 64, 64, 64), torch.zeros(1, 1, 64, 64, 64)
    target[..., 24:36, 24:36, 24:36] = 1.0
    grads = []
    for _ in range(2):
        opt.zero_grad()
        out = model.decode(model.encode(image), CLICK)
        torch.nn.functional.binary_cross_entropy_with_logits(out.logits, target).backward()
        grads.append({n: float(p.grad.abs().sum()) for n, p in path.named_parameters()})  # type: ignore[union-attr]
        opt.step()
    assert grads[0]["head.out.weight"] > 0  # the first step reaches the last convolution...
    assert all(v == 0 for n, v in grads[0].items() if not n.startswith("head.out."))  # ...and only it
    assert all(v > 0 for v in grads[1].values())  # from the second step on, every part of the path


def test_a_batch_decoded_against_one_encoded_crop_broadcasts_the_stem_features() -> None:
    torch.manual_seed(3)
    model = build_sam3d(get_preset("tiny"), full_res_channels=4).eval()
    with torch.no_grad():
        for p in model.full_res.head.out.parameters():  # type: ignore[union-attr]
            p.normal_(0.0, 0.3)
        encoded = model.encode(torch.randn(1, 1, 64, 64, 64))
        pts = torch.tensor([[[30.0, 28.0, 33.0]], [[20.0, 40.0, 10.0]]])
        both = model.decode(encoded, Prompts(points=pts, labels=torch.ones(2, 1, dtype=torch.int64)))
        second = model.decode(encoded, Prompts(points=pts[1:], labels=torch.ones(1, 1, dtype=torch.int64)))
    torch.testing.assert_close(both.logits[1:], second.logits, atol=1e-5, rtol=1e-5)


def test_official_weights_load_strictly_and_a_saved_path_loads_back_with_it(
    tmp_path: Path, official_ckpt: Path
) -> None:
    cfg = _config(checkpoint=str(official_ckpt), full_res_channels=4)
    model = build_model(cfg).eval()  # official weights into a model with the path: the path keeps its init
    assert not model.full_res.head.out.weight.any()  # type: ignore[union-attr]
    with torch.no_grad():
        for p in model.full_res.parameters():  # type: ignore[union-attr]
            p.add_(0.05)
    path = save_checkpoint(tmp_path / "run" / "last.pt", model=model, config={"model": cfg}, method="finetune")
    assert "full_res_channels: 4" in (tmp_path / "run" / "config.yaml").read_text()
    again, _ = load_model(path)
    assert again.state_dict().keys() == model.state_dict().keys()
    image = torch.randn(1, 1, 64, 64, 64)
    with torch.no_grad():
        assert torch.equal(
            again.decode(again.encode(image), CLICK).logits, model.decode(model.encode(image), CLICK).logits
        )
    plain_cfg = _config()  # the same weights without the path do not fit a model without it
    with pytest.raises(CheckpointError, match="unexpected key"):
        load_sam_med3d_weights(build_model(plain_cfg), model.state_dict())


def test_levels_follow_the_patch_size() -> None:
    assert full_res_levels(16) == 2 and full_res_levels(8) == 1 and full_res_levels(32) == 3
    for bad in (4, 12):
        with pytest.raises(ValueError, match="power-of-two patch size >= 8"):
            full_res_levels(bad)
    path = FullResPath(in_chans=1, embed_dim=48, num_mask_tokens=4, patch_size=32, channels=2)
    feats = path.stem(torch.zeros(1, 1, 32, 32, 32))
    assert [f.shape[1:] for f in feats] == [(2, 32, 32, 32), (4, 16, 16, 16), (8, 8, 8, 8)]
    res = path.head(torch.zeros(1, 6, 4, 4, 4), torch.zeros(1, 4, 4, 4, 4), feats)
    assert res.shape == (1, 4, 32, 32, 32) and not res.any()


def test_sgpm_high_res_needs_the_path() -> None:
    with pytest.raises(ValueError, match="high_res draws on the full-resolution decoder path's stem"):
        build_model(_config("sgp_sam", options={"high_res": True}))


def test_sgpm_high_res_changes_the_gate_input_and_keeps_the_official_outputs(official_ckpt: Path) -> None:
    torch.manual_seed(4)
    high = build_model(
        _config("sgp_sam", checkpoint=str(official_ckpt), full_res_channels=4, options={"high_res": True})
    )
    low = build_model(_config("sgp_sam", full_res_channels=4))
    result = low.load_state_dict(high.state_dict(), strict=False)  # same weights, less the summary's projections
    assert result.unexpected_keys and all(".high_res." in k for k in result.unexpected_keys)
    official = build_sam3d(get_preset("tiny")).eval()
    load_sam_med3d_weights(official, official_ckpt)
    seen: dict[str, list[torch.Tensor]] = {"high": [], "low": []}
    for name, model in (("high", high), ("low", low)):
        model.eval()
        for module in model.sgpm.values():  # type: ignore[attr-defined]
            module.gate.register_forward_hook(lambda _m, args, _out, n=name: seen[n].append(args[0]))
    image = torch.randn(2, 1, 64, 64, 64)
    prompts = Prompts(points=torch.full((2, 1, 3), 30.0), labels=torch.ones(2, 1, dtype=torch.int64))
    with torch.no_grad():
        got = high.decode(high.encode(image), prompts)
        low.encode(image)
        want = official.decode(official.encode(image), prompts)
    assert len(seen["high"]) == len(seen["low"]) == 2
    assert all(not torch.allclose(h, lo) for h, lo in zip(seen["high"], seen["low"], strict=True))
    assert torch.equal(got.logits, want.logits) and torch.equal(got.low_res_logits, want.low_res_logits)
