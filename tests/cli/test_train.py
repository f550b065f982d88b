"""``lesionsam train`` with a packaged preset and overrides."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lesionsam.cli.main import main
from lesionsam.config import load_run_config
from lesionsam.configs import preset_names, resolve_config
from lesionsam.data.synthetic import write_synthetic_dataset
from lesionsam.models.checkpoint import load_checkpoint


def test_packaged_presets_load() -> None:
    assert {"demo", "liver_sgp_sam", "brats_sgp_sam"} <= set(preset_names())
    liver = load_run_config(resolve_config("liver_sgp_sam"))
    assert (liver.data.target_label, liver.data.modality, liver.model.backbone.img_size) == (2, "CT", 128)
    brats = load_run_config(resolve_config("brats_sgp_sam"))
    assert (brats.data.target_label, brats.data.modality, brats.data.channel) == (3, "MRI", 2)
    assert brats.data.spacing == (1.5, 1.5, 1.5) and brats.model.method == "sgp_sam"


def test_train_command_with_overrides_and_accumulation(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_synthetic_dataset(tmp_path / "ds", cases=4, size=40, seed=1)
    args = ["train", "demo", f"data.root={tmp_path / 'ds'}", "train.epochs=1", "train.batch_size=1"]
    args += ["train.accumulate=2", "train.num_clicks=2", "model.method=finetune", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "best validation Dice" in captured.out
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["config"]["train"]["accumulate"] == 2
    n_train = len(json.loads((tmp_path / "run" / "splits.json").read_text())["train"])
    assert ckpt["extra"]["global_step"] == math.ceil(n_train / 2)  # batch 1, two micro-steps per optimiser step


def test_train_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "demo", "train.epoch=3"]) == 2
    assert "unknown config key 'train.epoch'; did you mean 'train.epochs'?" in capsys.readouterr().err
    assert main(["train", "nope.yaml"]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["train", "demo"]) == 2
    assert "data.root" in capsys.readouterr().err


def test_hsam_trains_from_its_preset_and_predicts_automatically(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    liver = load_run_config(resolve_config("liver_hsam"))
    assert (liver.model.method, liver.model.options["num_classes"], liver.data.target_labels) == ("hsam", 2, (1, 2))
    assert liver.train.loss == "hsam" and liver.model.backbone.img_size == 128
    data = tmp_path / "ds"
    write_synthetic_dataset(data, cases=4, size=40, seed=2, lesion_classes=2)
    common = ["train", "liver_hsam", f"data.root={data}", "model.preset=tiny", "data.spacing=[1.0,1.0,1.0]"]
    common += ["train.epochs=1", "train.device=cpu", "train.warmup_steps=0"]
    assert main([*common, "data.target_labels=[2]", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "segments 2 lesion class(es) but the data name 1 target label(s)" in err and err.count("\n") == 1
    assert main([*common, "data.target_labels=[2,4]", "--out", str(tmp_path / "run")]) == 0
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ckpt["method"] == "hsam" and any(k.startswith("lora.") for k in ckpt["state_dict"])
    image = sorted((data / "imagesTr").iterdir())[0]
    out = tmp_path / "auto.nii.gz"
    assert (
        main(["predict", str(image), "--out", str(out), "--checkpoint", str(tmp_path / "run" / "best.pt"), "--auto"])
        == 0
    )
    from lesionsam.data.io import read_image

    mask, img = read_image(out), read_image(image)
    assert mask.same_geometry(img) and set(np.unique(mask.array)) <= {0, 2, 4}


def test_the_run_folders_own_config_is_read_never_rewritten(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``train RUN/config.yaml --out RUN``: the file read is not written (byte for byte), and overrides that would
    change it are refused with one line before anything is touched."""
    write_synthetic_dataset(tmp_path / "ds", cases=4, size=40, seed=1)
    run = tmp_path / "run"
    args = ["train", "demo", f"data.root={tmp_path / 'ds'}", "train.epochs=1", "train.batch_size=1"]
    assert main([*args, "model.method=finetune", "--out", str(run)]) == 0
    own = run / "config.yaml"
    own.write_text(own.read_text() + "# the user's note\n")  # a comment the loader ignores; a rewrite would drop it
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()

    assert main(["train", str(own), "train.epochs=3", "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is the run folder's own config.yaml" in err and "copy it" in err and len(err.splitlines()) == 1
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before

    assert main(["train", str(own), "train.epochs=1", "--out", str(run), "--resume"]) == 0  # no change: allowed
    assert own.read_bytes() == before["config.yaml"]
