"""``lesionsam bench backbone --runtime onnxruntime``: the image encoder in PyTorch and in ONNX Runtime (float32 and
int8), side by side in one run, on the same weights and input.

The encoder of :func:`~lesionsam.benchmarking.backbone.seeded_model` (the bench's seeded random weights) is exported
to a temporary folder (float32, then dynamically quantised to int8), and the three are timed in interleaved rounds
(each round runs every row once, so a machine that slows down slows every row alike). Each row reports the median
time, the speed-up over PyTorch, the largest embedding difference from PyTorch, and how the masks it leads to agree
with PyTorch's: the PyTorch decoder is run on each row's embedding with one click at each of ``clicks`` points, and
the Dice of the thresholded masks with PyTorch's own is averaged (with the foreground fraction, so a mask that is all
on or all off, as random weights may give, is seen for what it is).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lesionsam.benchmarking.backbone import seeded_model
from lesionsam.benchmarking.result import JsonResult
from lesionsam.export.onnx_export import export_graph, ort_session, quantize_int8, require_onnx
from lesionsam.models import Prompts
from lesionsam.models.backbone.deploy import ENCODER_INPUTS, ENCODER_OUTPUTS, EncoderGraph


@dataclass
class RuntimeRow:
    """One runtime's measurements."""

    runtime: str
    seconds: float
    seconds_all: list[float]
    speedup: float
    max_abs_diff: float
    mask_dice: float
    mask_fraction: float


@dataclass
class RuntimeBench(JsonResult):
    """Results of ``bench backbone --runtime onnxruntime``."""

    target: str
    preset: str
    threads: int
    export_seconds: float
    clicks: int
    rows: list[RuntimeRow] = field(default_factory=list)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def bench_backbone_onnx(
    *,
    preset: str = "tiny",
    repeats: int = 3,
    warmup: int = 1,
    threads: int | None = None,
    clicks: int = 8,
    seed: int = 0,
    progress: bool = False,
) -> RuntimeBench:
    """Time the image encoder in PyTorch (fast attention) and in ONNX Runtime, float32 and int8.

    Args:
        preset: backbone preset (``tiny`` or ``sam_med3d_vit_b``).
        repeats: timed rounds (the median is reported); warmup: untimed rounds first.
        threads: CPU threads of both runtimes (``torch.set_num_threads`` and ONNX Runtime's intra-op threads).
        clicks: click positions for the mask agreement (a seeded random set of crop voxels).
        seed: seeds the weights, the input and the clicks.
        progress: print what is being done to stderr.
    """
    if repeats < 1 or clicks < 1:
        raise ValueError(f"repeats and clicks must be >= 1, got repeats={repeats}, clicks={clicks}")
    require_onnx()
    if threads:
        torch.set_num_threads(threads)
    model, x = seeded_model(preset, seed=seed)
    with tempfile.TemporaryDirectory(prefix="lesionsam-bench-onnx-") as tmp:
        t0 = time.perf_counter()
        f32, q8 = Path(tmp) / "encoder.onnx", Path(tmp) / "encoder.int8.onnx"
        export_graph(EncoderGraph(model), (x,), f32, ENCODER_INPUTS, ENCODER_OUTPUTS)
        quantize_int8(f32, q8)
        export_seconds = time.perf_counter() - t0
        if progress:
            print(f"  exported and quantised the encoder in {export_seconds:.1f} s", file=sys.stderr)
        sessions = {"onnxruntime": ort_session(f32, threads), "onnxruntime-int8": ort_session(q8, threads)}
        feeds = {"image": x.numpy()}

        def run_torch() -> np.ndarray:
            with torch.inference_mode():
                return model.encode(x).numpy()

        runs = {"torch": run_torch}
        runs.update({name: (lambda s=s: s.run(None, feeds)[0]) for name, s in sessions.items()})
        outputs = {name: run() for name, run in runs.items()}
        for _ in range(warmup - 1):
            for run in runs.values():
                run()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):
            for name, run in runs.items():
                t = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t)
    points = _click_points(model.img_size, clicks, seed)
    masks = {name: _masks(model, out, points) for name, out in outputs.items()}
    ref = statistics.median(times["torch"])
    result = RuntimeBench(
        target="backbone", preset=preset, threads=torch.get_num_threads(), export_seconds=export_seconds, clicks=clicks
    )
    for name in runs:
        med = statistics.median(times[name])
        result.rows.append(
            RuntimeRow(
                runtime=name,
                seconds=med,
                seconds_all=times[name],
                speedup=ref / med,
                max_abs_diff=float(np.abs(outputs[name] - outputs["torch"]).max()),
                mask_dice=float(np.mean([_dice(a, b) for a, b in zip(masks[name], masks["torch"], strict=True)])),
                mask_fraction=float(np.mean([m.mean() for m in masks[name]])),
            )
        )
        if progress:
            print(f"  {name:>16}: {med:.3f} s (median of {repeats})", file=sys.stderr)
    return result


def _click_points(size: int, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randint(size // 8, size - size // 8, (n, 3), generator=gen).float()


def _masks(model: torch.nn.Module, embedding: np.ndarray, points: torch.Tensor) -> list[np.ndarray]:
    """The PyTorch decoder's one-click masks (logits > 0) on ``embedding``, one per click."""
    emb = torch.from_numpy(np.ascontiguousarray(embedding))
    out = []
    with torch.inference_mode():
        for p in points:
            prompts = Prompts(points=p.view(1, 1, 3), labels=torch.ones(1, 1, dtype=torch.int64))
            out.append((model.decode(emb, prompts).logits[0, 0] > 0).numpy())
    return out


def format_runtime_table(result: RuntimeBench) -> str:
    """A plain-text table of a :class:`RuntimeBench`."""
    lines = [
        f"lesionsam bench backbone --runtime onnxruntime: preset={result.preset} batch=1 threads={result.threads} "
        f"(export + int8 quantisation {result.export_seconds:.1f} s)",
        f"{'runtime':<17} {'time (s)':>9} {'vs torch':>9} {'max |diff|':>11} {'mask Dice':>10} {'mask fg':>8}",
    ]
    for r in result.rows:
        lines.append(
            f"{r.runtime:<17} {r.seconds:>9.3f} {r.speedup:>8.2f}x {r.max_abs_diff:>11.2e} {r.mask_dice:>10.4f} "
            f"{r.mask_fraction:>8.3f}"
        )
    lines.append(
        f"(same weights and input; 'vs torch' = PyTorch time / this time; mask Dice: the PyTorch decoder on each "
        f"embedding, {result.clicks} one-click masks against PyTorch's own; mask fg: their foreground fraction)"
    )
    return "\n".join(lines)
