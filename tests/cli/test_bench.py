"""``lesionsam bench backbone``: a side-by-side table, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lesionsam.cli.main import main


def test_bench_backbone_prints_fast_and_naive_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "backbone", "--preset", "tiny", "--repeats", "1", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "fast" in table and "naive" in table and "speed-up" in table
    data = json.loads(out.read_text())
    assert [r["impl"] for r in data["rows"]] == ["fast", "naive"]
    assert data["rows"][1]["speedup"] == 1.0
    assert data["rows"][0]["max_abs_diff"] < 1e-4  # same outputs on the same weights and input


def test_bench_without_gpu_says_so(capsys: pytest.CaptureFixture) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["bench", "backbone", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lesionsam bench: error:") and "no CUDA GPU" in err and err.count("\n") == 1


def test_unknown_preset_is_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "backbone", "--preset", "tinyy"]) == 2
    assert "Did you mean 'tiny'" in capsys.readouterr().err


def test_bench_sgp_compares_gates_closed_and_open_with_the_backbone(capsys: pytest.CaptureFixture) -> None:
    from lesionsam.benchmarking.sgp import bench_sgp, format_sgp_table

    result = bench_sgp(preset="tiny", repeats=1, warmup=0)
    table = format_sgp_table(result)
    assert main(["bench", "sgp", "--preset", "tiny", "--repeats", "1"]) == 0  # the command runs too
    assert "backbone" in capsys.readouterr().out
    assert "backbone" in table
    closed = next(r for r in result.rows if r.gate_mode == "off")
    opened = next(r for r in result.rows if r.gate_mode == "on")
    assert closed.max_abs_diff == 0.0  # closed gates: exactly the backbone
    plain = next(r for r in result.rows if r.gate_mode is None)
    assert opened.params == closed.params > plain.params


def test_bench_refsam3d_reports_time_and_new_parameters(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "refsam3d", "--preset", "tiny", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "RefSAM3D" in out and "adapters" in out and "backbone 1,462,714" in out


def test_bench_auto_times_whole_volume_inference_and_one_window(capsys: pytest.CaptureFixture) -> None:
    from lesionsam.benchmarking.auto import bench_auto, format_auto_table

    result = bench_auto(preset="tiny", window_preset="tiny", shape_ijk=(96, 96, 40), repeats=1)
    # 96×96×40 voxels of 0.7×0.7×2.5 mm → 45×45×67 at 1.5 mm: 64³ windows with overlap 0.25 → 1×1×2 windows.
    repeats = len(result.window_seconds_all)
    assert result.windows == 2 and repeats == 1
    table = format_auto_table(result)
    assert "windows=2" in table and "one window of tiny" in table


def test_bench_interactive_times_each_step_for_both_dtypes() -> None:
    from lesionsam.benchmarking.interactive import STEPS, bench_interactive, format_interactive_table

    r = bench_interactive(preset="tiny", shape_ijk=(64, 64, 24), spacing=(1.5, 1.5, 3.0), repeats=2, threads=1)
    steps_measured = {dtype: set(steps) for dtype, steps in r.seconds.items()}  # what is timed, not how fast
    assert steps_measured == {"float32": set(STEPS), "bfloat16": set(STEPS)}
    assert len(r.dice_vs_float32["bfloat16"]) == 2 and all(0.0 <= d <= 1.0 for d in r.dice_vs_float32["bfloat16"])
    table = format_interactive_table(r)
    assert "refining click" in table and "bfloat16 masks vs float32" in table
    # The server round trip, through a real uvicorn server on loopback, beside the library's own timing.
    assert set(r.round_trip) == {
        "first click, HTTP",
        "first click, library",
        "refining click, HTTP",
        "refining click, library",
    }
    assert "server round trip, refining click, HTTP" in table
    # Zoom-in's first and refining click (every lesion zoomed 2x), and its extra cost per lesion.
    assert (
        set(r.zoom)
        == {
            f"{step}, {name}"
            for step in ("first click", "refining click")
            for name in ("zoomed", "zoomed, first pass zoomed")
        }
        and r.zoom_factor == 2.0
    )
    assert "zoom-in's extra cost per lesion" in table


def test_bench_interactive_reports_the_remote_protocol_beside_the_library() -> None:
    from lesionsam.benchmarking.interactive import bench_interactive, format_interactive_table

    r = bench_interactive(
        preset="tiny", shape_ijk=(64, 64, 24), spacing=(1.5, 1.5, 3.0), dtypes=("float32",), repeats=1, threads=1
    )
    assert set(r.remote_round_trip) == {
        "first point, nnInteractive client",
        "first point, library",
        "refining point, nnInteractive client",
        "refining point, library",
    }
    table = format_interactive_table(r)
    assert "remote protocol round trip, refining point, nnInteractive client" in table
    assert "remote protocol overhead of a refining point" in table
