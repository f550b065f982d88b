"""ONNX export and the ONNX Runtime backend on a tiny model: the graphs against PyTorch, a prediction through the
same engine, and refusals of malformed or mismatched export folders (one line, exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from lesionsam.cli.main import main  # noqa: E402
from lesionsam.data.io import read_image  # noqa: E402
from lesionsam.export.manifest import MANIFEST, ExportError, file_sha256, read_manifest  # noqa: E402
from lesionsam.inference.onnx_model import OnnxModel  # noqa: E402
from lesionsam.models import ModelConfig, Prompts, build_model  # noqa: E402
from lesionsam.models.checkpoint import save_checkpoint  # noqa: E402

MAX_POINTS = 4


def _tiny_checkpoint(path: Path, method: str = "sam_med3d") -> tuple[Path, torch.nn.Module]:
    """A tiny lesionsam checkpoint whose masks are neither empty nor full (position tables redrawn larger)."""
    torch.manual_seed(0)
    config = ModelConfig.from_preset("tiny", method=method)
    model = build_model(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.normal_(0.0, 0.5)
    ckpt = save_checkpoint(path, model=model, config={"model": config, "data": {"target_label": 2}}, method=method)
    return ckpt, model


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, torch.nn.Module]:
    """(checkpoint, export folder with the int8 encoder, the PyTorch model): exported once for the module."""
    tmp = tmp_path_factory.mktemp("onnx")
    ckpt, model = _tiny_checkpoint(tmp / "run" / "best.pt")
    out = tmp / "export"
    assert main(["export", str(ckpt), "--out", str(out), "--int8", "--max-points", str(MAX_POINTS)]) == 0
    return ckpt, out, model


@pytest.fixture(scope="module")
def synthetic_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from lesionsam.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic") / "data"
    write_synthetic_dataset(root, cases=1, size=48, seed=0, progress=False)
    return root / "imagesTr" / "case_000.nii.gz", root / "labelsTr" / "case_000.nii.gz"


def test_export_writes_the_graphs_and_a_manifest(exported) -> None:
    ckpt, out, _ = exported
    m = read_manifest(out)
    assert sorted(p.name for p in out.iterdir()) == ["decoder.onnx", "encoder.int8.onnx", "encoder.onnx", MANIFEST]
    assert (m.method, m.crop_size, m.low_res_size, m.max_points, m.target_label) == ("sam_med3d", 64, 16, 4, 2)
    assert m.checkpoint_sha256 == file_sha256(ckpt)
    assert m.preprocess["spacing"] == [1.5, 1.5, 1.5] and m.preprocess["modality"] == "CT"
    assert m.encoder.inputs == {"image": [1, 1, 64, 64, 64]} and m.encoder.outputs == {"embedding": [1, 48, 4, 4, 4]}
    assert m.decoder.outputs == {"low_res_logits": [1, 1, 16, 16, 16], "logits": [1, 1, 64, 64, 64], "iou": [1, 1]}
    assert m.check["encoder_max_abs_diff"] <= 1e-4 and m.check["decoder_max_abs_diff"] <= 1e-4
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]  # the temporary folder was renamed


def test_onnx_encoder_and_decoder_match_pytorch(exported) -> None:
    _, out, model = exported
    onnx = OnnxModel(out)
    gen = torch.Generator().manual_seed(3)
    image = torch.randn(2, 1, 64, 64, 64, generator=gen)  # two crops: the adapter runs batch rows one by one
    with torch.inference_mode():
        want = model.encode(image)
    got = onnx.encode(image)
    assert got.shape == (2, 48, 4, 4, 4)
    assert np.abs(got - want.numpy()).max() <= 1e-4
    assert want.abs().max() > 0.1  # a real comparison
    points = torch.tensor([[[10.0, 20.0, 30.0], [40.0, 5.0, 7.0], [33.0, 33.0, 33.0]]])
    labels = torch.tensor([[1, 0, 1]])
    mask = torch.randn(1, 1, 16, 16, 16, generator=gen)
    for prompts in (Prompts(points=points, labels=labels), Prompts(points=points, labels=labels, mask=mask)):
        with torch.inference_mode():
            ref = model.decode(want[:1], prompts)
        out_onnx = onnx.decode(got[:1], prompts)
        for name in ("low_res_logits", "logits", "iou"):
            diff = (getattr(out_onnx, name) - getattr(ref, name)).abs().max()
            assert diff <= 1e-4, (name, float(diff))
    too_many = Prompts(
        points=torch.zeros(1, MAX_POINTS + 1, 3), labels=torch.ones(1, MAX_POINTS + 1, dtype=torch.int64)
    )
    with pytest.raises(ValueError, match="at most 4"):
        onnx.decode(got[:1], too_many)


def test_prediction_through_onnxruntime_equals_pytorch(exported, synthetic_case, tmp_path: Path) -> None:
    ckpt, out, _ = exported
    image, labels = synthetic_case
    masks = {}
    for runtime, weights in (("torch", ckpt), ("onnxruntime", out), ("onnxruntime-int8", out)):
        dst = tmp_path / f"{runtime}.nii.gz"
        args = ["predict", str(image), "--out", str(dst), "--clicks-from", str(labels), "--label", "2"]
        assert main([*args, "--checkpoint", str(weights), "--runtime", runtime]) == 0
        masks[runtime] = read_image(dst).array
    fg = masks["torch"] > 0
    assert 0 < fg.sum() < fg.size // 10  # a real mask, neither empty nor everything
    np.testing.assert_array_equal(masks["onnxruntime"], masks["torch"])
    q = masks["onnxruntime-int8"] > 0
    assert 2 * (q & fg).sum() / (q.sum() + fg.sum()) > 0.8  # int8 close (the bench measures it properly)


def _copy(out: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(out, dst)
    return dst


def _rewrite_manifest(folder: Path, **changes) -> None:
    raw = json.loads((folder / MANIFEST).read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            raw[section][field] = value
        else:
            raw[section] = value
    (folder / MANIFEST).write_text(json.dumps(raw))


def _predict_error(folder: Path, synthetic_case, tmp_path: Path, capsys) -> str:
    image, labels = synthetic_case
    dst = tmp_path / "m.nii.gz"
    args = ["predict", str(image), "--out", str(dst), "--clicks-from", str(labels), "--label", "2"]
    assert main([*args, "--checkpoint", str(folder), "--runtime", "onnxruntime"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert not dst.exists()
    return err


def test_a_changed_graph_file_is_refused(exported, synthetic_case, tmp_path: Path, capsys) -> None:
    folder = _copy(exported[1], tmp_path)
    data = (folder / "encoder.onnx").read_bytes()
    (folder / "encoder.onnx").write_bytes(data[: len(data) // 2])  # truncated
    assert "not the graph the manifest names" in _predict_error(folder, synthetic_case, tmp_path, capsys)


def test_an_unloadable_graph_is_refused_even_with_its_hash(exported, synthetic_case, tmp_path: Path, capsys) -> None:
    folder = _copy(exported[1], tmp_path)
    junk = folder / "encoder.onnx"
    junk.write_bytes(b"not an onnx graph at all")
    _rewrite_manifest(folder, encoder__bytes=junk.stat().st_size, encoder__sha256=file_sha256(junk))
    assert "is not a graph ONNX Runtime can load" in _predict_error(folder, synthetic_case, tmp_path, capsys)


def test_a_swapped_graph_is_refused(exported, synthetic_case, tmp_path: Path, capsys) -> None:
    folder = _copy(exported[1], tmp_path)
    shutil.copy(folder / "decoder.onnx", folder / "encoder.onnx")  # the decoder where the encoder should be
    enc = folder / "encoder.onnx"
    _rewrite_manifest(folder, encoder__bytes=enc.stat().st_size, encoder__sha256=file_sha256(enc))
    assert "are not the manifest's" in _predict_error(folder, synthetic_case, tmp_path, capsys)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("json", "is not valid JSON"),
        ("format", "is not 'lesionsam-onnx/1'"),
        ("crop", "expected [1, None, 32, 32, 32]"),
        ("missing", "missing or malformed field"),
    ],
)
def test_a_malformed_or_mismatched_manifest_is_refused(
    exported, synthetic_case, tmp_path: Path, capsys, breakage: str, message: str
) -> None:
    folder = _copy(exported[1], tmp_path)
    if breakage == "json":
        (folder / MANIFEST).write_text('{"format": "lesionsam-onnx/1", ')
    elif breakage == "format":
        _rewrite_manifest(folder, format="something-else")
    elif breakage == "crop":
        _rewrite_manifest(folder, crop_size=32)
    else:
        raw = json.loads((folder / MANIFEST).read_text())
        del raw["decoder"]
        (folder / MANIFEST).write_text(json.dumps(raw))
    assert message in _predict_error(folder, synthetic_case, tmp_path, capsys)
    with pytest.raises(ExportError, match="export again"):
        read_manifest(folder)


def test_export_refuses_an_existing_folder_and_unexportable_methods(exported, tmp_path: Path, capsys) -> None:
    ckpt, out, _ = exported
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["export", str(ckpt), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    sgp, _ = _tiny_checkpoint(tmp_path / "sgp.pt", method="sgp_sam")
    assert main(["export", str(sgp), "--out", str(tmp_path / "sgp_export")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "method 'sgp_sam' cannot be exported: its gates" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "sgp.pt"]  # nothing half-written


def test_runtime_flags_are_checked(exported, synthetic_case, tmp_path: Path, capsys) -> None:
    ckpt, _, _ = exported
    image, labels = synthetic_case
    args = ["predict", str(image), "--out", str(tmp_path / "m.nii.gz"), "--clicks-from", str(labels), "--label", "2"]
    assert main([*args, "--checkpoint", str(ckpt), "--runtime", "onnxruntime"]) == 2  # a .pt file, not a folder
    assert "not an export folder" in capsys.readouterr().err
    assert main(["bench", "sgp", "--runtime", "onnxruntime"]) == 2
    assert "bench backbone" in capsys.readouterr().err
    assert main(["bench", "backbone", "--runtime", "onnxruntime", "--dtype", "bfloat16"]) == 2
    assert "one float32 crop on the CPU" in capsys.readouterr().err


def test_serve_sessions_click_through_onnxruntime_as_through_pytorch(exported, synthetic_case) -> None:
    """``serve``'s session factory with ``runtime="onnxruntime"``: a click, a refining click and a box give the
    label maps the PyTorch sessions give."""
    from lesionsam.inference.boxes import Box
    from lesionsam.serve.server import session_factory

    ckpt, out, _ = exported
    image, labels = synthetic_case
    volume = read_image(image)
    lesion = np.argwhere(read_image(labels).array == 2)[0]  # (k, j, i) of a tumour voxel
    ijk = tuple(int(v) for v in lesion[::-1])
    maps = []
    for checkpoint, runtime in ((ckpt, "torch"), (out, "onnxruntime")):
        make_session, name = session_factory(checkpoint, runtime=runtime)
        session = make_session(volume)
        first = session.click(ijk)
        session.click((ijk[0] + 1, ijk[1], ijk[2]), positive=False, lesion=first.lesion)
        session.box(Box(lo=(max(ijk[0] - 4, 0), max(ijk[1] - 4, 0), ijk[2]), hi=(ijk[0] + 4, ijk[1] + 4, ijk[2])))
        maps.append(session.label_map())
    assert name.endswith("(onnxruntime)")
    assert maps[0].any()
    np.testing.assert_array_equal(maps[1], maps[0])
