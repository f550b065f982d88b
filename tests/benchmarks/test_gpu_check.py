"""``benchmarks/gpu_check.py --device cpu --tiny``: the GPU readiness script's own code path, on a CPU."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from lesionsam.models.checkpoint import load_checkpoint

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def _script(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def test_cpu_smoke_run_makes_every_check_and_the_four_variant_ablation(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "gpu_check"
    assert (
        _script(monkeypatch).main(["--device", "cpu", "--tiny", "--out", str(out), "--workers", "1", "--steps", "4"])
        == 0
    )
    printed = capsys.readouterr().out
    report = json.loads((out / "gpu_check.json").read_text())
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert status == {
        "device": "ok",
        "train step": "ok",
        "predictor": "ok",
        "data loader": "ok",
        "DDP (NCCL)": "skipped",  # no GPU, let alone two
        "ablation": "ok",
    }
    for name in status:
        assert name in printed
    figures = {c["name"]: c["figures"] for c in report["checks"]}
    train = figures["train step"]
    assert train["autocast"] == "fp32" and train["peak_mb"] is None  # no GPU figure is claimed on a CPU
    steps_timed = len(train["seconds_all"])  # one timing per training step: what is measured, not how fast
    assert load_checkpoint(train["checkpoint"])["epoch"] == 2 and steps_timed >= 2
    loader = figures["data loader"]
    assert loader["workers=0"]["batches"] == loader["workers=1"]["batches"] > 0
    assert loader["workers=0"]["pin_memory"] is False and loader["pinned"] is None
    ablation = json.loads((out / "ablation" / "ablation.json").read_text())
    assert [m["method"] for m in ablation["methods"]] == ["finetune", "finetune_zoom", "sgp_dice", "sgp_sam"]
    assert figures["ablation"]["dice"] == {m["method"]: m["dice"]["mean"] for m in ablation["methods"]}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _script(monkeypatch).main(["--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no CUDA GPU" in err and "\n" not in err
    assert not (tmp_path / "g").exists()
