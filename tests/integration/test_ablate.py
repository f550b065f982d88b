"""``lesionsam ablate CONFIG``: methods × seeds from a run config on an MSD-layout folder, resumable, shardable."""

from __future__ import annotations

import inspect
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lesionsam.cli.main import main
from lesionsam.config import RunConfig
from lesionsam.configs import resolve_config
from lesionsam.data.synthetic import write_synthetic_dataset
from lesionsam.models.checkpoint import load_checkpoint
from lesionsam.training.trainer import Trainer
from lesionsam.utils.dataclass_io import from_dict
from lesionsam.workflows.ablate import ablate_config, parse_shard, select_runs
from stand_ins import TINY_ABLATION

OVERRIDES = TINY_ABLATION
METHODS = ("finetune", "sgp_sam")
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("msd") / "Task99", cases=6, seed=3, size=32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Killed(RuntimeError):
    """Stands in for a killed process."""


def test_ablation_from_a_config_is_sharded_resumed_after_a_kill_and_collected(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "ablation"
    overrides = (f"data.root={data_root}", *OVERRIDES)
    kw: dict[str, Any] = {"overrides": overrides, "out": out, "methods": METHODS, "seeds": SEEDS, "progress": False}
    kw["clicks"] = 3
    config = resolve_config("demo")

    # 1. One of two shards: method-major order, every second run from the first.
    assert ablate_config(config, shard=(0, 2), **kw) is None
    done = {p.parent.parent.name for p in out.glob("*/test_metrics/metrics.json")}
    assert done == {"finetune_seed0", "sgp_sam_seed0"}
    assert not (out / "ablation.md").exists()
    mtimes = {name: (out / name / "best.pt").stat().st_mtime_ns for name in done}

    # 2. A plain call makes the others; it is killed after the first epoch of sgp_sam seed 1.
    def kill(trainer: Trainer, event: str, info: dict[str, Any]) -> None:
        if event == "epoch" and (trainer.cfg.model.method, trainer.cfg.train.seed) == ("sgp_sam", 1):
            raise Killed

    with pytest.raises(Killed):
        ablate_config(config, callbacks=[kill], **kw)
    assert (out / "finetune_seed1" / "test_metrics" / "metrics.json").is_file()
    half = out / "sgp_sam_seed1"
    assert load_checkpoint(half / "last.pt")["epoch"] == 1 and not (half / "test_metrics").exists()
    mtimes["finetune_seed1"] = (out / "finetune_seed1" / "best.pt").stat().st_mtime_ns

    # 3. The next call trains nothing finished again and finishes the half-done run from its last.pt.
    trained: list[tuple[str, int, int]] = []

    def record(trainer: Trainer, event: str, info: dict[str, Any]) -> None:
        if event == "epoch":
            trained.append((trainer.cfg.model.method, trainer.cfg.train.seed, int(info["epoch"])))

    table = ablate_config(config, callbacks=[record], **kw)
    assert table == out / "ablation.md"
    assert trained == [("sgp_sam", 1, 2)]  # only its second epoch (epochs count from 1)
    assert {n: (out / n / "best.pt").stat().st_mtime_ns for n in mtimes} == mtimes
    # Exactly as an uninterrupted run: same weights after the same two epochs.
    cfg = from_dict(RunConfig, load_checkpoint(half / "last.pt")["config"])
    ref = Trainer(cfg, tmp_path / "reference", progress=False).fit()
    assert ref.last_checkpoint is not None
    resumed, fresh = load_checkpoint(half / "last.pt")["state_dict"], load_checkpoint(ref.last_checkpoint)["state_dict"]
    assert resumed.keys() == fresh.keys()
    assert all(torch.equal(resumed[k], fresh[k]) for k in fresh)

    # The test set is held out: never trained or validated on; exactly its cases are scored.
    splits = json.loads((out / "splits.json").read_text())
    test = set(splits["test"])
    assert test and len(test) + len(splits["train"]) + len(splits["val"]) == 6
    summary = json.loads((out / "ablation.json").read_text())
    assert [m["method"] for m in summary["methods"]] == list(METHODS)
    md = table.read_text()
    for m in summary["methods"]:
        assert m["seeds"] == list(SEEDS)
        dice = []
        for seed in SEEDS:
            run = out / f"{m['method']}_seed{seed}"
            run_splits = json.loads((run / "splits.json").read_text())
            assert not test & (set(run_splits["train"]) | set(run_splits["val"]))
            metrics = json.loads((run / "test_metrics" / "metrics.json").read_text())
            assert {c["case"] for c in metrics["cases"]} == test
            dice.append(metrics["summary"]["dice"]["mean"])
        assert m["dice"]["values"] == dice
        row = next(line for line in md.splitlines() if line.startswith(f"| {m['method']} |"))
        assert f"{np.mean(dice):.3f} ± {np.std(dice, ddof=1):.3f}" in row
    assert "sgp_sam − finetune" in md and "## Gate activation rate by lesion size" in md
    assert "## Protocol" in md and f"{len(test)} test cases" in md
    # The interactive protocol: per method, the mean over seeds of each seed's clicks.json summary.
    curves = {c["method"]: c for c in summary["clicks"]}
    for method in METHODS:
        runs = [
            json.loads((out / f"{method}_seed{seed}" / "test_clicks" / "clicks.json").read_text()) for seed in SEEDS
        ]
        first = [r["summary"]["dice_mean"][0] for r in runs]
        assert all(r["settings"]["n_clicks"] == 3 for r in runs)
        assert curves[method]["dice_after"][0]["values"] == first
        assert curves[method]["auc"]["mean"] == pytest.approx(np.mean([r["summary"]["auc_mean"] for r in runs]))
        row = next(
            line for line in md.split("## Interactive protocol")[1].splitlines() if line.startswith(f"| {method} |")
        )
        assert f"{np.mean(first):.3f} ± {np.std(first, ddof=1):.3f}" in row


def test_runs_are_selected_by_name_or_shard() -> None:
    runs = select_runs(("a", "b"), (0, 1, 2), only=[("b", 2), ("a", 1)])
    assert runs == [("a", 1), ("b", 2)]
    all_runs = select_runs(("a", "b"), (0, 1, 2))
    shards = [select_runs(("a", "b"), (0, 1, 2), shard=parse_shard(f"{i}/4")) for i in range(4)]
    assert sorted(r for s in shards for r in s) == sorted(all_runs) and sum(map(len, shards)) == len(all_runs)
    with pytest.raises(ValueError, match="not one of the planned runs"):
        select_runs(("a",), (0,), only=[("a", 3)])


def test_five_seeds_by_default_in_the_functions_and_the_cli() -> None:
    from lesionsam.cli.main import build_parser
    from lesionsam.workflows.ablate import DEFAULT_SEEDS, ablate, parse_seeds

    assert DEFAULT_SEEDS == (0, 1, 2, 3, 4)
    for fn in (ablate, ablate_config):
        assert inspect.signature(fn).parameters["seeds"].default == DEFAULT_SEEDS
    args = build_parser().parse_args(["ablate"])
    assert parse_seeds(args.seeds) == list(DEFAULT_SEEDS)
    assert parse_seeds(build_parser().parse_args(["ablate", "--seeds", "3,7"]).seeds) == [3, 7]  # still chosen


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data.root={root}", "--methods", "finetune,sgp_sm"], "Did you mean 'sgp_sam'"),
        (["data.root={root}", "--seeds", "0,x"], "--seeds"),
        (["data.root={root}", "--seeds", "1,1"], "--seeds"),
        (["data.root={root}", "--seeds", ","], "--seeds"),
        (["data.root={root}", "--shard", "2/2"], "--shard"),
        (["data.root={root}", "--only-run", "sgp_sam"], "--only-run"),
        (["data.root={root}", "--only-run", "sgp_sam:7"], "not one of the planned runs"),
        (["data.root={root}", "--test-fraction", "1.5"], "--test-fraction"),
        (["data.root={root}", "--quick"], "--quick"),
        (["data.root={missing}"], "{missing}"),
        ([], "data.root is empty"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    args: list[str], message: str, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    names = {"root": data_root, "missing": tmp_path / "no_such_data"}
    out = tmp_path / "out"
    assert main(["ablate", "demo", *(a.format(**names) for a in args), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lesionsam ablate: error:") and "\n" not in err
    assert message.format(**names) in err
    assert not out.exists()


def test_overrides_need_a_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["ablate", "data.root=x", "--out", str(tmp_path / "o")]) == 2
    assert "need a CONFIG" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_without_a_config_the_demo_ablation_keeps_its_layout_and_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LESIONSAM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ablation"
    base = ["ablate", "--quick", "--methods", "finetune,sgp_sam", "--seeds", "0", "--out", str(out)]
    assert main([*base, "--only-run", "sgp_sam:0"]) == 0  # one run, no table
    assert not (out / "ablation.md").exists() and not (out / "finetune_seed0").exists()
    assert main(base) == 0
    for name in ("finetune_seed0", "sgp_sam_seed0"):
        assert (out / name / "test_metrics" / "metrics.json").is_file() and (out / name / "best.pt").is_file()
    assert (out / "data" / "train" / "dataset.json").is_file() and (out / "data" / "test" / "dataset.json").is_file()
    assert (out / "sgp_sam_seed0" / "gates.csv").is_file() and not (out / "finetune_seed0" / "gates.csv").exists()
    summary = json.loads((out / "ablation.json").read_text())
    for m in summary["methods"]:
        metrics = json.loads((out / f"{m['method']}_seed0" / "test_metrics" / "metrics.json").read_text())
        assert m["dice"]["values"] == [metrics["summary"]["dice"]["mean"]]
    assert "## Protocol" not in (out / "ablation.md").read_text()  # the demo's table as before


def test_a_torchrun_job_trains_each_run_with_ddp_and_tests_it_once(data_root: Path, tmp_path: Path) -> None:
    """torchrun, 2 processes, gloo on CPU: every run is trained by both ranks, rank 0 tests it and writes the table."""
    out = tmp_path / "ddp"
    overrides = [f"data.root={data_root}", *OVERRIDES, "train.epochs=1", "train.device=cpu"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}"]
    cmd += [
        "-m",
        "lesionsam.cli.main",
        "ablate",
        "demo",
        *overrides,
        "--methods",
        "finetune",
        "--seeds",
        "0,1",
        "--clicks",
        "2",
    ]
    proc = subprocess.run(
        [*cmd, "--out", str(out)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(out / "ablation.md")  # printed by rank 0 only
    for seed in (0, 1):
        run = out / f"finetune_seed{seed}"
        assert load_checkpoint(run / "last.pt")["epoch"] == 1
        metrics = json.loads((run / "test_metrics" / "metrics.json").read_text())
        assert {c["case"] for c in metrics["cases"]} == set(json.loads((out / "splits.json").read_text())["test"])
    summary = json.loads((out / "ablation.json").read_text())
    assert summary["methods"][0]["seeds"] == [0, 1]
