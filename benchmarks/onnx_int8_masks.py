"""Masks through the engine with each ``--runtime``: PyTorch, ONNX Runtime float32 and int8, on synthetic cases.

Exports a checkpoint (default: the tiny preset with random weights whose position tables are redrawn, so that masks
are neither empty nor full) with ``--int8``, predicts one centre click per tumour with each runtime and prints, per
case, whether the float32 masks equal PyTorch's and the int8 masks' Dice against PyTorch's::

    python benchmarks/onnx_int8_masks.py --out /tmp/int8 [--checkpoint CKPT] [--cases 6] [--data MSD_FOLDER]

``--data`` uses an existing data set (``imagesTr``, ``labelsTr``, tumour label 2, e.g. the demo's test set) instead
of writing ``--cases`` synthetic ones; the mean int8 Dice over the cases where PyTorch's mask is not empty is printed
last.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from lesionsam.cli.main import main as lesionsam
from lesionsam.data.io import read_image
from lesionsam.data.synthetic import write_synthetic_dataset
from lesionsam.models import ModelConfig, build_model
from lesionsam.models.checkpoint import save_checkpoint

RUNTIMES = ("torch", "onnxruntime", "onnxruntime-int8")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="a new folder for the data, export and masks")
    parser.add_argument("--checkpoint", type=Path, default=None, help="weights (default: tiny random, see above)")
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--data", type=Path, default=None, help="an existing data set instead of synthetic cases")
    a = parser.parse_args()
    data = a.data if a.data is not None else a.out / "data"
    if a.data is None:
        write_synthetic_dataset(data, cases=a.cases, size=64, seed=1, progress=False)
    ckpt = a.checkpoint
    if ckpt is None:
        torch.manual_seed(0)
        config = ModelConfig.from_preset("tiny")
        model = build_model(config).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "rel_pos" in name or "pos_embed" in name:
                    p.normal_(0.0, 0.5)
        data = {"target_label": 2}
        ckpt = save_checkpoint(
            a.out / "run/best.pt", model=model, config={"model": config, "data": data}, method="sam_med3d"
        )
    assert lesionsam(["export", str(ckpt), "--out", str(a.out / "onnx"), "--int8"]) == 0
    for rt in RUNTIMES:
        weights = ckpt if rt == "torch" else a.out / "onnx"
        args = ["predict", str(data / "imagesTr"), "--out", str(a.out / rt), "--label", "2"]
        args += ["--clicks-from", str(data / "labelsTr"), "--checkpoint", str(weights), "--runtime", rt]
        assert lesionsam(args) == 0
    dices = []
    for case in sorted((a.out / "torch").iterdir()):
        masks = {rt: read_image(a.out / rt / case.name).array > 0 for rt in RUNTIMES}
        ref = masks["torch"]
        if ref.any():
            dices.append(_dice(masks["onnxruntime-int8"], ref))
        print(
            f"{case.name}: {int(ref.sum())} voxels; float32 equal: {bool((masks['onnxruntime'] == ref).all())}; "
            f"int8 Dice {_dice(masks['onnxruntime-int8'], ref):.4f}"
        )
    if dices:
        mean, low = float(np.mean(dices)), min(dices)
        print(f"int8 vs PyTorch over {len(dices)} cases with a mask: mean Dice {mean:.4f}, min {low:.4f}")


if __name__ == "__main__":
    main()
