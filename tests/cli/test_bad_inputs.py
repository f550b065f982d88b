"""A corpus of broken inputs against every command: exit 2, one error line, nothing on disk changed.

Every case runs ``lesionsam`` in-process (``main(argv)``) inside one shared folder (the "world": a small synthetic
data set, broken files, an existing run folder) and checks that

* the exit code is 2 and stderr holds exactly one line, ``lesionsam <command>: error: ...`` with the expected
  words and no traceback (INFO log lines of ``train`` aside);
* the whole world, the existing run folder and every output path included, is byte-for-byte unchanged and
  nothing was created (no file, no empty folder).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from lesionsam.cli.main import main
from lesionsam.data.io import read_image, write_image
from lesionsam.data.synthetic import write_synthetic_dataset
from lesionsam.utils.paths import refuse_inputs_as_outputs

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _tree(root: Path) -> dict[str, str]:
    """Every file's sha256 and every folder (as 'dir') under ``root``, by relative path (links not followed)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = Path(dirpath) / f
            out[os.path.relpath(p, root)] = "link" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class Pickled:
    """Not a tensor: a checkpoint holding one is refused by ``weights_only=True``."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    w = tmp_path_factory.mktemp("world")
    ds = w / "ds"
    write_synthetic_dataset(ds, cases=2, size=32, seed=3, progress=False)
    vol = read_image(ds / "imagesTr" / "case_000.nii.gz")
    shutil.copy(ds / "imagesTr" / "case_000.nii.gz", w / "img.nii.gz")
    shutil.copy(ds / "labelsTr" / "case_000.nii.gz", w / "lab.nii.gz")  # no dataset.json beside it
    (w / "link.nii.gz").symlink_to(w / "img.nii.gz")
    os.link(w / "img.nii.gz", w / "hard.nii.gz")
    write_image(vol.array, w / "plain.nii", reference=vol, compress=False)
    for name in ("plain.nii", "img.nii.gz"):
        data = (w / name).read_bytes()
        (w / f"half_{name}").write_bytes(data[: len(data) // 2])
    (w / "empty.pt").write_bytes(b"")
    (w / "text.pt").write_text("these are not the weights you are looking for\n")
    (w / "lfs.pth").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123abcd\nsize 415800000\n")
    shutil.copy(w / "img.nii.gz", w / "image_as.pth")
    import torch

    torch.save({"model_state_dict": {}, "obj": Pickled()}, w / "unsafe.pt")
    (w / "bad.yaml").write_text("train:\n  epochs: 3\n   lr: [1\n")
    (w / "prompts_str.json").write_text(json.dumps({"lesions": [{"id": 4, "points": [["x", 10, 10]]}]}))
    (w / "prompts_box.json").write_text(json.dumps({"lesions": [{"id": 1, "box": [1, 2, 3]}]}))
    (w / "afile").write_text("a file, not a folder\n")
    # A data set whose dataset.json names a file that is not there.
    shutil.copytree(ds, w / "ds_missing")
    (w / "ds_missing" / "imagesTr" / "case_001.nii.gz").unlink()
    # Predictions and ground truths for evaluate.
    (w / "pred").mkdir()
    shutil.copy(ds / "labelsTr" / "case_000.nii.gz", w / "pred" / "case_000.nii.gz")
    (w / "gt_nojson").mkdir()
    shutil.copy(ds / "labelsTr" / "case_000.nii.gz", w / "gt_nojson" / "case_000.nii.gz")
    (w / "gt_half").mkdir()
    (w / "gt_half" / "case_000.nii.gz").write_bytes((w / "half_img.nii.gz").read_bytes())
    # Folders of images where only a later case is broken: nothing may be written for the earlier ones.
    (w / "imgs_bad").mkdir()
    shutil.copy(w / "img.nii.gz", w / "imgs_bad" / "case_000.nii.gz")
    shutil.copy(w / "half_img.nii.gz", w / "imgs_bad" / "case_001.nii.gz")
    (w / "imgs_nolab").mkdir()
    shutil.copy(w / "img.nii.gz", w / "imgs_nolab" / "case_000.nii.gz")
    shutil.copy(w / "img.nii.gz", w / "imgs_nolab" / "case_009.nii.gz")
    # An existing run folder: a failed train must leave it exactly as it is.
    run = w / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: earlier\ntrain: {epochs: 7}\n")
    (run / "last.pt").write_text("an earlier run's checkpoint (here: text)\n")
    (run / "splits.json").write_text('{"train": ["case_000"], "val": []}\n')
    return w


TRAIN = ["train", "demo", "model.preset=tiny", "train.epochs=1", "train.device=cpu"]

#: (id, argv with {w} for the world folder, words the error line must hold)
CASES: list[tuple[str, list[str], str]] = [
    # ---- predict: outputs that are inputs
    ("predict-out-is-input", ["predict", "{w}/img.nii.gz", "--out", "{w}/img.nii.gz", "--point", "5,5,5"], "same file"),
    ("predict-out-symlink", ["predict", "{w}/img.nii.gz", "--out", "{w}/link.nii.gz", "--point", "5,5,5"], "same file"),
    (
        "predict-out-hardlink",
        ["predict", "{w}/img.nii.gz", "--out", "{w}/hard.nii.gz", "--point", "5,5,5"],
        "same file",
    ),
    (
        "predict-out-dotted",
        ["predict", "{w}/img.nii.gz", "--out", "{w}/ds/../img.nii.gz", "--point", "5,5,5"],
        "same file",
    ),
    (
        "predict-folder-out-is-input-folder",
        ["predict", "{w}/ds/imagesTr", "--out", "{w}/ds/imagesTr", "--clicks-from", "{w}/ds/labelsTr", "--label", "2"],
        "same file",
    ),
    (
        "predict-out-is-clicks-from",
        ["predict", "{w}/img.nii.gz", "--out", "{w}/lab.nii.gz", "--clicks-from", "{w}/lab.nii.gz", "--label", "2"],
        "same file",
    ),
    (
        "predict-probabilities-is-input",
        [
            "predict",
            "{w}/img.nii.gz",
            "--out",
            "{w}/new/m.nii.gz",
            "--point",
            "5,5,5",
            "--probabilities",
            "{w}/img.nii.gz",
        ],
        "same file",
    ),
    (
        "predict-probabilities-is-out",
        ["predict", "{w}/img.nii.gz", "--out", "{w}/m.nii.gz", "--point", "5,5,5", "--probabilities", "{w}/m.nii.gz"],
        "same path as --out",
    ),
    (
        "predict-folder-probabilities-is-out",
        ["predict", "{w}/ds/imagesTr", "--out", "{w}/new", "--clicks-from", "{w}/ds/labelsTr", "--label", "2"]
        + ["--probabilities", "{w}/new"],
        "would overwrite the masks",
    ),
    # ---- predict: outputs that cannot be written (checked before any work; no folder created)
    (
        "predict-probabilities-bad-suffix",
        ["predict", "{w}/img.nii.gz", "--out", "{w}/new/m.nii.gz", "--point", "5,5,5", "--probabilities", "{w}/p.txt"],
        "--probabilities",
    ),
    (
        # SimpleITK writes no float DICOM: refused before any work (it used to fail after the mask was written)
        "predict-probabilities-dicom",
        ["predict", "{w}/img.nii.gz", "--out", "{w}/new/m.nii.gz", "--point", "5,5,5", "--probabilities", "{w}/p.dcm"],
        "DICOM cannot hold float probabilities",
    ),
    (
        "predict-probabilities-parent-is-file",
        ["predict", "{w}/img.nii.gz", "--out", "{w}/new/m.nii.gz", "--point", "5,5,5"]
        + ["--probabilities", "{w}/afile/p.nii.gz"],
        "is a file, not a folder",
    ),
    (
        "predict-out-parent-is-file",
        ["predict", "{w}/img.nii.gz", "--out", "{w}/afile/sub/m.nii.gz", "--point", "5,5,5"],
        "is a file, not a folder",
    ),
    ("predict-out-bad-suffix", ["predict", "{w}/img.nii.gz", "--out", "{w}/new/m.txt", "--point", "5,5,5"], "--out"),
    # ---- predict: broken inputs
    (
        "predict-truncated-nii-gz",
        ["predict", "{w}/half_img.nii.gz", "--out", "{w}/new/m.nii.gz", "--point", "5,5,5"],
        "truncated",
    ),
    (
        "predict-truncated-nii",
        ["predict", "{w}/half_plain.nii", "--out", "{w}/new/m.nii.gz", "--point", "5,5,5"],
        "truncated",
    ),
    (
        "predict-missing-input",
        ["predict", "{w}/nope.nii.gz", "--out", "{w}/new/m.nii.gz", "--point", "5,5,5"],
        "not found",
    ),
    ("predict-bad-point", ["predict", "{w}/img.nii.gz", "--out", "{w}/new/m.nii.gz", "--point", "1,2"], "three comma"),
    (
        "predict-negative-point-outside",
        ["predict", "{w}/img.nii.gz", "--out", "{w}/new/m.nii.gz", "--point", "-5,10,10", "--preset", "tiny"],
        "outside the image",
    ),
    (
        "predict-negative-only",
        ["predict", "{w}/img.nii.gz", "--out", "{w}/new/m.nii.gz", "--negative", "5,5,5"],
        "give exactly one of",
    ),
    (
        "predict-auto-and-text",
        ["predict", "{w}/img.nii.gz", "--out", "{w}/new/m.nii.gz", "--auto", "--text", "tumour"],
        "exclude each other",
    ),
    (
        "predict-prompts-string-coordinate",
        ["predict", "{w}/img.nii.gz", "--out", "{w}/new/m.nii.gz", "--prompts", "{w}/prompts_str.json"],
        "lesion 0 (id 4), field 'points'",
    ),
    (
        "predict-clicks-from-without-label",
        ["predict", "{w}/img.nii.gz", "--out", "{w}/new/m.nii.gz", "--clicks-from", "{w}/lab.nii.gz"],
        "--label N",
    ),
    (
        "predict-ckpt-empty",
        ["predict", "{w}/img.nii.gz", "--out", "{w}/new/m.nii.gz", "--point", "5,5,5", "--checkpoint", "{w}/empty.pt"],
        "is empty (0 bytes)",
    ),
    (
        "predict-ckpt-text",
        ["predict", "{w}/img.nii.gz", "--out", "{w}/new/m.nii.gz", "--point", "5,5,5", "--checkpoint", "{w}/text.pt"],
        "is a text file, not a PyTorch checkpoint",
    ),
    (
        "predict-ckpt-lfs",
        ["predict", "{w}/img.nii.gz", "--out", "{w}/new/m.nii.gz", "--point", "5,5,5", "--checkpoint", "{w}/lfs.pth"],
        "Git LFS pointer",
    ),
    (
        "predict-ckpt-nifti",
        [
            "predict",
            "{w}/img.nii.gz",
            "--out",
            "{w}/new/m.nii.gz",
            "--point",
            "5,5,5",
            "--checkpoint",
            "{w}/image_as.pth",
        ],
        "is a NIfTI image, not a checkpoint",
    ),
    (
        "predict-ckpt-unsafe",
        ["predict", "{w}/img.nii.gz", "--out", "{w}/new/m.nii.gz", "--point", "5,5,5", "--checkpoint", "{w}/unsafe.pt"],
        "weights_only",
    ),
    (
        "predict-auto-with-a-promptable-model",
        ["predict", "{w}/img.nii.gz", "--out", "{w}/new/m.nii.gz", "--auto", "--preset", "tiny"]
        + ["--checkpoint", str(FIXTURES / "tiny_official_ckpt.pth")],
        "method 'sam_med3d' needs clicks or text",
    ),
    (
        "predict-folder-later-image-truncated",
        ["predict", "{w}/imgs_bad", "--out", "{w}/new", "--clicks-from", "{w}/ds/labelsTr", "--label", "2"]
        + ["--preset", "tiny"],
        "truncated",
    ),
    (
        "predict-folder-later-label-missing",
        ["predict", "{w}/imgs_nolab", "--out", "{w}/new", "--clicks-from", "{w}/ds/labelsTr", "--label", "2"]
        + ["--preset", "tiny"],
        "no label map for case 'case_009'",
    ),
    # ---- evaluate
    (
        "evaluate-out-parent-is-file",
        ["evaluate", "{w}/pred", "{w}/ds/labelsTr", "--out", "{w}/afile/m"],
        "is a file, not a folder",
    ),
    (
        "evaluate-out-is-file",
        ["evaluate", "{w}/pred", "{w}/ds/labelsTr", "--out", "{w}/afile"],
        "is a file, not a folder",
    ),
    ("evaluate-missing-pred-dir", ["evaluate", "{w}/nope", "{w}/ds/labelsTr", "--out", "{w}/new"], "not found"),
    ("evaluate-no-label-no-dataset-json", ["evaluate", "{w}/pred", "{w}/gt_nojson", "--out", "{w}/new"], "--label N"),
    (
        "evaluate-missing-predictions",
        ["evaluate", "{w}/pred", "{w}/ds/labelsTr", "--out", "{w}/new", "--label", "2"],
        "--allow-missing",
    ),
    ("evaluate-truncated-gt", ["evaluate", "{w}/pred", "{w}/gt_half", "--out", "{w}/new", "--label", "2"], "truncated"),
    (
        "evaluate-label-absent",
        ["evaluate", "{w}/pred", "{w}/gt_nojson", "--out", "{w}/new", "--label", "9"],
        "label 9 not found",
    ),
    (
        "evaluate-bad-tolerance",
        ["evaluate", "{w}/pred", "{w}/gt_nojson", "--out", "{w}/new", "--label", "2", "--nsd-tolerance", "-1"],
        "tolerance",
    ),
    (
        "evaluate-bad-iou-threshold",
        ["evaluate", "{w}/pred", "{w}/gt_nojson", "--out", "{w}/new", "--label", "2", "--iou-threshold", "0"],
        "IoU threshold must be in (0, 1]",
    ),
    # ---- train (an existing run folder must stay byte-for-byte the same)
    ("train-missing-root", [*TRAIN, "data.root={w}/nope", "--out", "{w}/run"], "not found"),
    (
        "train-dataset-json-names-missing-files",
        [*TRAIN, "data.root={w}/ds_missing", "--out", "{w}/run"],
        "do not exist",
    ),
    (
        "train-unsafe-checkpoint",
        [*TRAIN, "data.root={w}/ds", "model.checkpoint={w}/unsafe.pt", "--out", "{w}/run"],
        "weights_only",
    ),
    (
        "train-text-checkpoint",
        [*TRAIN, "data.root={w}/ds", "model.checkpoint={w}/text.pt", "--out", "{w}/run"],
        "is a text file",
    ),
    (
        "train-empty-checkpoint",
        [*TRAIN, "data.root={w}/ds", "model.checkpoint={w}/empty.pt", "--out", "{w}/run"],
        "is empty",
    ),
    ("train-resume-bad-last", [*TRAIN, "data.root={w}/ds", "--out", "{w}/run", "--resume"], "is a text file"),
    ("train-yaml-syntax", ["train", "{w}/bad.yaml", "--out", "{w}/run"], "bad.yaml:3:6: is not valid YAML"),
    (
        "train-unknown-key",
        [*TRAIN, "train.epoch=3", "--out", "{w}/run"],
        "unknown config key 'train.epoch'; did you mean 'train.epochs'?",
    ),
    ("train-bad-override", [*TRAIN, "train.lr=[1", "--out", "{w}/run"], "not valid YAML"),
    ("train-wrong-type", [*TRAIN, "train.epochs=many", "--out", "{w}/run"], "expected an integer"),
    (
        "train-checkpoint-is-run-output",
        [*TRAIN, "data.root={w}/ds", "model.checkpoint={w}/run/last.pt", "--out", "{w}/run"],
        "same file",
    ),
    ("train-out-is-file", [*TRAIN, "data.root={w}/ds", "--out", "{w}/afile"], "is a file, not a folder"),
    ("train-unknown-method", [*TRAIN, "model.method=sam_med3", "--out", "{w}/run"], "sam_med3d"),
    # ---- synth
    ("synth-no-cases", ["synth", "{w}/new", "--cases", "0"], "cases must be >= 1"),
    ("synth-tiny-size", ["synth", "{w}/new", "--cases", "1", "--size", "5"], "size must be"),
    ("synth-negative-seed", ["synth", "{w}/new", "--cases", "1", "--seed", "-1"], "seed must be"),
    ("synth-out-is-file", ["synth", "{w}/afile", "--cases", "1", "--size", "32"], "is a file"),
    ("synth-out-parent-is-file", ["synth", "{w}/afile/sub", "--cases", "1", "--size", "32"], "is a file, not a folder"),
    # ---- bench (refused before any measuring)
    ("bench-zero-repeats", ["bench", "backbone", "--repeats", "0"], ">= 1"),
    ("bench-bad-impl", ["bench", "backbone", "--impls", "bogus"], "bogus"),
    ("bench-bad-preset", ["bench", "backbone", "--preset", "bogus"], "bogus"),
    ("bench-json-parent-is-file", ["bench", "backbone", "--json", "{w}/afile/r.json"], "is a file, not a folder"),
    ("predict-box-syntax", ["predict", "{w}/img.nii.gz", "--out", "{w}/m.nii.gz", "--box", "1,2,3"], "six comma"),
    (
        "predict-box-flat",
        ["predict", "{w}/img.nii.gz", "--out", "{w}/m.nii.gz", "--box", "5,5,5,5,5,9"],
        "flat on 2 axes",
    ),
    (
        "predict-box-outside",
        ["predict", "{w}/img.nii.gz", "--out", "{w}/m.nii.gz", "--preset", "tiny", "--box", "0,0,0,40,9,9"],
        "leaves the image",
    ),
    (
        "predict-box-world",
        ["predict", "{w}/img.nii.gz", "--out", "{w}/m.nii.gz", "--box", "1,1,1,5,5,5", "--world"],
        "--world",
    ),
    (
        "predict-prompts-box",
        ["predict", "{w}/img.nii.gz", "--out", "{w}/m.nii.gz", "--prompts", "{w}/prompts_box.json"],
        "six integers",
    ),
    ("bench-json-bad-suffix", ["bench", "backbone", "--json", "{w}/r.txt"], ".json"),
    ("bench-text-checkpoint", ["bench", "predict", "--checkpoint", "{w}/text.pt"], "is a text file"),
    # ---- serve (refused before a model loads or a port opens)
    ("serve-root-missing", ["serve", "--root", "{w}/nope"], "not an existing folder"),
    ("serve-root-is-file", ["serve", "--root", "{w}/afile"], "not an existing folder"),
    ("serve-bad-port", ["serve", "--root", "{w}", "--port", "0"], "--port must be in 1..65535"),
    ("serve-bad-upload-limit", ["serve", "--root", "{w}", "--max-upload-mb", "-1"], "--max-upload-mb must be > 0"),
    ("serve-zero-sessions", ["serve", "--root", "{w}", "--max-sessions", "0"], "--max-sessions must be >= 1"),
    ("serve-missing-checkpoint", ["serve", "--root", "{w}", "--checkpoint", "{w}/nope.pth"], "checkpoint not found"),
    ("serve-text-checkpoint", ["serve", "--root", "{w}", "--checkpoint", "{w}/text.pt"], "is a text file"),
    ("serve-missing-proposals", ["serve", "--root", "{w}", "--proposals", "{w}/nope.pth"], "checkpoint not found"),
]


@pytest.fixture()
def fresh_logging():
    """Each in-process run configures logging afresh onto the captured stderr."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()
    yield
    root.handlers[:] = saved


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, list[str]]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("INFO ")]
    return code, lines


def test_the_corpus_is_large_and_covers_every_command() -> None:
    assert len(CASES) >= 40
    assert {argv[0] for _, argv, _ in CASES} >= {"predict", "evaluate", "train", "synth", "bench", "serve"}
    assert len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("argv", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bad_input_exits_2_with_one_line_and_changes_nothing(
    world: Path, argv: list[str], words: str, capsys: pytest.CaptureFixture, fresh_logging: None, monkeypatch
) -> None:
    monkeypatch.chdir(world)
    args = [a.replace("{w}", str(world)) for a in argv]
    before = _tree(world)
    code, lines = _run(args, capsys)
    assert code == 2, f"exit {code}; stderr: {lines}"
    assert len(lines) == 1, f"expected one error line, got {len(lines)}: {lines}"
    line = lines[0]
    assert line.startswith(f"lesionsam {args[0]}: error: "), line
    assert "Traceback" not in line and "allow_missing=" not in line
    assert words in line, f"{words!r} not in {line!r}"
    assert _tree(world) == before, "the command changed the disk"


# --------------------------------------------------------------------------- property: never write what is read
@pytest.mark.parametrize("output", ["--out", "--probabilities"])
@pytest.mark.parametrize("alias", ["same", "symlink", "hardlink", "dotted", "relative"])
@pytest.mark.parametrize("role", ["image", "clicks-from"])
def test_predict_never_writes_a_path_it_reads(
    world: Path, output: str, alias: str, role: str, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    """Every spelling of an input path (itself, a symlink, a hard link, ``a/../``, relative) is refused as output."""
    monkeypatch.chdir(world)
    target = world / ("img.nii.gz" if role == "image" else "lab.nii.gz")
    spelled = {
        "same": str(target),
        "symlink": str(world / f"alias_{role}.nii.gz"),
        "hardlink": str(world / f"hard_{role}.nii.gz"),
        "dotted": str(world / "ds" / ".." / target.name),
        "relative": target.name,
    }[alias]
    if alias == "symlink" and not Path(spelled).is_symlink():
        Path(spelled).symlink_to(target)
    if alias == "hardlink" and not Path(spelled).exists():
        os.link(target, spelled)
    argv = ["predict", str(world / "img.nii.gz"), "--clicks-from", str(world / "lab.nii.gz"), "--label", "2"]
    argv += ["--out", spelled] if output == "--out" else ["--out", str(world / "new" / "m.nii.gz")]
    if output == "--probabilities":
        argv += ["--probabilities", spelled]
    before = _tree(world)
    code, lines = _run(argv, capsys)
    assert code == 2 and len(lines) == 1 and "same file" in lines[0], lines
    assert _tree(world) == before


def test_refuse_inputs_as_outputs_property(tmp_path: Path) -> None:
    """For random files and random spellings, a write is refused exactly when it names a read file."""
    rng = np.random.default_rng(0)
    files = []
    for n in range(6):
        p = tmp_path / f"d{n % 2}" / f"f{n}.nii.gz"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(bytes([n]))
        files.append(p)
    (tmp_path / "ln.nii.gz").symlink_to(files[0])
    os.link(files[1], tmp_path / "hl.nii.gz")
    spellings = {str(f): f for f in files}
    spellings[str(tmp_path / "ln.nii.gz")] = files[0]
    spellings[str(tmp_path / "hl.nii.gz")] = files[1]
    spellings[str(tmp_path / "d0" / ".." / "d1" / files[1].name)] = files[1]
    spellings[str(tmp_path / "new.nii.gz")] = None  # not a file yet
    for _ in range(200):
        reads = [files[i] for i in rng.choice(len(files), size=3, replace=False)]
        written, meant = list(spellings.items())[rng.integers(len(spellings))]
        clash = meant in reads
        if clash:
            with pytest.raises(ValueError, match="same file"):
                refuse_inputs_as_outputs([("--out", written)], [("input", r) for r in reads])
        else:
            refuse_inputs_as_outputs([("--out", written)], [("input", r) for r in reads])
