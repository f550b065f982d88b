"""Loading official checkpoints strictly, refusing bad files, and our own atomic checkpoints."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import pytest
import torch

from lesionsam.models import ModelConfig, build_model
from lesionsam.models.backbone import build_sam3d, get_preset
from lesionsam.models.checkpoint import (
    CheckpointError,
    describe_fit,
    load_checkpoint,
    load_sam_med3d_weights,
    save_checkpoint,
)
from lesionsam.models.registry import load_model


def _seeded_official_file(tmp_path: Path, cfg=None, *, prefix: str = "", wrap: bool = True) -> Path:
    """A checkpoint in the official layout with seeded noise in every tensor."""
    gen = torch.Generator().manual_seed(7)
    sd = {prefix + k: torch.randn(v.shape, generator=gen) * 0.2 for k, v in build_sam3d(cfg).state_dict().items()}
    path = tmp_path / "official.pth"
    torch.save({"model_state_dict": sd, "epoch": 5} if wrap else sd, path)
    return path


@pytest.mark.parametrize(("prefix", "wrap"), [("", True), ("module.", True), ("_orig_mod.", False), ("", False)])
def test_official_layout_loads_strictly(tmp_path: Path, prefix: str, wrap: bool) -> None:
    cfg = get_preset("tiny")
    path = _seeded_official_file(tmp_path, cfg, prefix=prefix, wrap=wrap)
    model = build_sam3d(cfg)
    report = load_sam_med3d_weights(model, path)
    assert report.loaded == len(model.state_dict()) and not report.resized
    want = torch.load(path, weights_only=True)
    want = want["model_state_dict"] if wrap else want
    got = model.state_dict()
    for key, value in want.items():
        assert torch.equal(got[key[len(prefix) :]], value)


def test_seeded_checkpoint_gives_equal_outputs_on_both_attention_paths(tmp_path: Path) -> None:
    cfg = get_preset("tiny")
    model = build_sam3d(cfg).eval()
    load_sam_med3d_weights(model, _seeded_official_file(tmp_path, cfg))
    x = torch.randn(2, 1, 64, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fast = model.image_encoder(x)
        model.image_encoder.set_attention_impl("naive")
        naive = model.image_encoder(x)
    torch.testing.assert_close(fast, naive, atol=1e-4, rtol=1e-4)


def test_checkpoint_of_another_model_names_missing_and_unexpected_keys(tmp_path: Path) -> None:
    other = get_preset("tiny").replace(encoder_depth=3, encoder_global_attn_indexes=(1,))
    path = _seeded_official_file(tmp_path, other)
    with pytest.raises(CheckpointError) as err:
        load_sam_med3d_weights(build_sam3d(get_preset("tiny")), path)
    msg = str(err.value)
    assert "missing key(s) (first: image_encoder.blocks.3." in msg
    assert "'encoder_depth': 3" in msg  # says which sizes the file has


def test_checkpoint_with_other_shapes_names_the_key_and_the_fitting_preset(tmp_path: Path) -> None:
    path = _seeded_official_file(tmp_path, get_preset("tiny"))
    wider = get_preset("tiny").replace(encoder_embed_dim=120)
    with pytest.raises(CheckpointError, match=r"image_encoder\..* has shape .* preset 'tiny'"):
        load_sam_med3d_weights(build_sam3d(wider), path)


def test_describe_fit_recognises_the_official_full_model_and_2d_sam() -> None:
    with torch.device("meta"):
        full = build_sam3d(get_preset("sam_med3d_vit_b")).state_dict()
    assert "preset 'sam_med3d_vit_b'" in describe_fit(full)
    sam2d = {"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}
    assert "2D Segment Anything" in describe_fit(sam2d)
    assert "not a SAM-Med3D model" in describe_fit({"encoder.conv.weight": torch.zeros(1)})


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = _seeded_official_file(tmp_path, get_preset("tiny"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_sam_med3d_weights(build_sam3d(get_preset("tiny")), path)


class _NotATensor:
    def __init__(self) -> None:
        self.payload = "would run arbitrary code on load"


def test_file_needing_arbitrary_unpickling_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pth"
    torch.save({"model_state_dict": {"x": torch.zeros(1)}, "obj": _NotATensor()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True and will not run arbitrary"):
        load_sam_med3d_weights(build_sam3d(get_preset("tiny")), path)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": 1}))  # not a zip file at all: still a clear refusal
    with pytest.raises(CheckpointError):
        load_sam_med3d_weights(build_sam3d(get_preset("tiny")), plain)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_sam_med3d_weights(build_sam3d(get_preset("tiny")), tmp_path / "nope.pth")


def test_position_weights_are_interpolated_to_another_crop_size(official_ckpt: Path) -> None:
    cfg = get_preset("tiny").replace(img_size=96)  # 6³ tokens instead of 4³
    model = build_sam3d(cfg).eval()
    with pytest.warns(UserWarning, match="interpolated"):
        report = load_sam_med3d_weights(model, official_ckpt)
    # pos_embed and the rel-pos tables of the two global blocks (1 and 3); windowed blocks keep theirs.
    assert sorted(report.resized) == sorted(
        ["image_encoder.pos_embed"] + [f"image_encoder.blocks.{b}.attn.rel_pos_{a}" for b in (1, 3) for a in "dhw"]
    )
    assert model.image_encoder.pos_embed.shape == (1, 6, 6, 6, 96)
    with torch.no_grad():
        out = model.image_encoder(torch.randn(1, 1, 96, 96, 96))
    assert out.shape == (1, 48, 6, 6, 6) and torch.isfinite(out).all()
    with pytest.raises(CheckpointError, match="pos_embed has shape"):
        load_sam_med3d_weights(build_sam3d(cfg), official_ckpt, allow_resize=False)


def test_own_checkpoint_round_trip_is_self_contained_and_atomic(tmp_path: Path, official_ckpt: Path) -> None:
    cfg = ModelConfig.from_preset("tiny", checkpoint=str(official_ckpt))
    model = build_model(cfg).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    path = save_checkpoint(
        tmp_path / "run" / "last.pt",
        model=model,
        config={"model": cfg},
        method="sam_med3d",
        optimizer=opt,
        epoch=3,
        metrics={"dice": 0.5},
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.yaml", "last.pt"]  # no temp files left
    ckpt = load_checkpoint(path)
    assert ckpt["format_version"] == 1 and ckpt["method"] == "sam_med3d" and ckpt["epoch"] == 3
    assert ckpt["metrics"] == {"dice": 0.5}
    again, _ = load_model(path)
    x = torch.randn(1, 1, 64, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again.image_encoder(x), model.image_encoder(x))


def test_failed_save_leaves_the_previous_file_intact(tmp_path: Path, monkeypatch) -> None:
    model = build_sam3d(get_preset("tiny"))
    path = save_checkpoint(tmp_path / "last.pt", model=model, config={}, method="sam_med3d")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model=model, config={}, method="sam_med3d")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "last.pt"]


def test_official_file_is_not_taken_for_our_format(official_ckpt: Path) -> None:
    with pytest.raises(CheckpointError, match="not a lesionsam checkpoint.*preset 'tiny'"):
        load_checkpoint(official_ckpt)


def test_no_warning_when_sizes_match(official_ckpt: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_sam_med3d_weights(build_sam3d(get_preset("tiny")), official_ckpt)
