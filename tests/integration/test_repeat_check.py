"""``lesionsam ablate --repeat-check METHOD:SEED``: one finished run retrained from its recorded settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lesionsam.cli.main import main
from lesionsam.configs import resolve_config
from lesionsam.data.synthetic import write_synthetic_dataset
from lesionsam.workflows.ablate import ablate_config
from lesionsam.workflows.repeat_check import repeat_check
from stand_ins import TINY_ABLATION

#: The tiny recipe of tests/integration/test_ablate.py: a few seconds per run on one CPU thread.
OVERRIDES = TINY_ABLATION


def _ablate(out: Path, overrides: tuple[str, ...]) -> Path | None:
    """The one-run ablation (finetune, seed 0, no click curves) of these tests into ``out``; its table."""
    return ablate_config(
        resolve_config("demo"),
        overrides=overrides,
        out=out,
        methods=("finetune",),
        seeds=(0,),
        clicks=0,
        progress=False,
    )


@pytest.fixture(scope="module")
def ablation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[str, ...]]:
    """A finished one-run ablation (finetune, seed 0) from the demo config on 32³ synthetic volumes."""
    root = tmp_path_factory.mktemp("rc")
    data = write_synthetic_dataset(root / "Task99", cases=6, seed=3, size=32)
    overrides = (f"data.root={data}", *OVERRIDES)
    out = root / "ablation"
    _ablate(out, overrides)
    return out, overrides


def test_a_repeat_at_the_same_thread_count_is_bit_identical_and_the_report_says_so(
    ablation: tuple[Path, tuple[str, ...]], capsys: pytest.CaptureFixture
) -> None:
    out, overrides = ablation
    path = repeat_check(out, ("finetune", 0), config=resolve_config("demo"), overrides=overrides, progress=False)
    threads = torch.get_num_threads()
    assert path == out / "repeat_check" / f"finetune_seed0_cpu_threads{threads}.json"
    result = json.loads(path.read_text())
    assert result["bit_identical"] and result["settings_differ"] == {}
    assert all(c == {"equal": True, "differing_tensors": 0} for c in result["checkpoints"].values())
    assert set(result["checkpoints"]) == {"best.pt", "last.pt"}
    assert all(m["change"] in (0.0, None) for m in result["metrics"].values())
    recorded = json.loads((out / "finetune_seed0" / "test_metrics" / "metrics.json").read_text())
    assert result["metrics"]["dice"]["recorded"] == recorded["summary"]["dice"]["mean"]
    printed = capsys.readouterr().err
    assert f"finetune seed 0 (cpu, {threads} thread(s)): bit-identical" in printed
    assert "every recorded setting is the same now" in printed
    # The next collecting call puts the check in the report.
    table = _ablate(out, overrides)
    assert table is not None
    md = table.read_text()
    assert "## What the numbers depend on" in md and f"- threads: {threads}" in md
    assert "**Bit-identical at the same thread count and device (1 repeat check(s))" in md
    summary = json.loads((out / "ablation.json").read_text())["provenance"]
    assert summary["same"]["threads"] == threads and summary["repeat_checks"][0]["bit_identical"]


def test_a_repeat_at_another_thread_count_names_it(
    ablation: tuple[Path, tuple[str, ...]], capsys: pytest.CaptureFixture
) -> None:
    out, overrides = ablation
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        path = repeat_check(out, ("finetune", 0), config=resolve_config("demo"), overrides=overrides, progress=False)
    finally:
        torch.set_num_threads(threads)
    result = json.loads(path.read_text())
    assert path.name == f"finetune_seed0_cpu_threads{threads + 1}.json"
    assert result["settings_differ"]["threads"] == [threads, threads + 1]
    assert set(result["settings_differ"]) <= {"threads", "omp_num_threads"}
    printed = capsys.readouterr().err
    assert f"recorded settings that differ now: threads {threads} → {threads + 1}" in printed
    if not result["bit_identical"]:  # then it says how far the test metrics moved
        assert "test metrics: mean Dice" in printed


def test_a_repeat_check_is_refused_for_another_config_or_an_unfinished_run(
    ablation: tuple[Path, tuple[str, ...]], capsys: pytest.CaptureFixture
) -> None:
    out, overrides = ablation
    base = ["ablate", "demo", *overrides, "--out", str(out)]
    assert main(["ablate", "demo", *overrides, "train.lr=0.5", "--out", str(out), "--repeat-check", "finetune:0"]) == 2
    assert "made with another config than this call plans (train.lr)" in capsys.readouterr().err
    assert main([*base, "--repeat-check", "sgp_sam:0"]) == 2
    assert "is not a finished run of this ablation" in capsys.readouterr().err
    assert main([*base, "--repeat-check", "finetune:0", "--shard", "0/2"]) == 2
    assert "leave out --only-run and --shard" in capsys.readouterr().err
    assert main([*base, "--repeat-check", "finetune"]) == 2
    assert "--repeat-check takes METHOD:SEED" in capsys.readouterr().err


def test_the_demo_ablation_is_checked_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("LESIONSAM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ablation"
    assert main(["ablate", "--quick", "--methods", "finetune", "--seeds", "0", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["ablate", "--out", str(out), "--repeat-check", "finetune:0"]) == 2  # made with --quick
    assert "give the --out and --quick the ablation was made with" in capsys.readouterr().err
    assert main(["ablate", "--quick", "--out", str(out), "--repeat-check", "finetune:0"]) == 0
    printed = capsys.readouterr().err
    assert "finetune seed 0 (cpu, " in printed and "bit-identical: every weight" in printed
    recorded = json.loads((out / "finetune_seed0" / "provenance.json").read_text())
    assert recorded["initial_weights"]["source"].startswith(str(tmp_path / "cache"))  # the pretrained anatomy model
