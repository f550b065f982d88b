"""``lesionsam bench auto``: H-SAM's prompt-free whole-volume inference of a full-size CT, and one window's time."""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field

import torch

from lesionsam.benchmarking.memory import sync
from lesionsam.benchmarking.result import JsonResult
from lesionsam.benchmarking.synthetic_ct import synthetic_ct


@dataclass
class AutoBench(JsonResult):
    """Automatic (prompt-free) whole-volume inference of one full-size CT, and the time per window of a preset."""

    preset: str
    window_preset: str
    shape_ijk: tuple[int, int, int]
    spacing: tuple[float, float, float]
    device: str
    threads: int
    batch: int
    windows: int = 0
    stages: dict[str, float] = field(default_factory=dict)
    window_seconds: float = float("nan")
    window_seconds_all: list[float] = field(default_factory=list)


def bench_auto(
    *,
    preset: str = "tiny",
    window_preset: str = "sam_med3d_vit_b",
    shape_ijk: tuple[int, int, int] = (512, 512, 120),
    spacing: tuple[float, float, float] = (0.7, 0.7, 2.5),
    num_classes: int = 2,
    batch: int = 2,
    device: str = "cpu",
    repeats: int = 3,
    threads: int | None = None,
    progress: bool = False,
) -> AutoBench:
    """Time ``Predictor.predict_auto`` (H-SAM, random weights: the time does not depend on them) on a synthetic
    512×512×120 int16 CT at ``preset`` — preprocessing to 1.5 mm, every sliding window, the inverse resampling of
    the K + 1 class probabilities and the arg-max — and one 128³ window of ``window_preset`` (median of
    ``repeats``; batch 1; an empty ``window_preset`` skips it)."""
    from lesionsam.inference.predictor import Predictor
    from lesionsam.inference.whole_volume import WholeVolume
    from lesionsam.models import ModelConfig, build_model

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    i, j, k = shape_ijk
    result = AutoBench(
        preset=preset,
        window_preset=window_preset,
        shape_ijk=shape_ijk,
        spacing=spacing,
        device=str(dev),
        threads=torch.get_num_threads(),
        batch=batch,
    )

    def hsam(name: str) -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model(ModelConfig.from_preset(name, method="hsam", options={"num_classes": num_classes}))

    vol, _ = synthetic_ct((k, j, i), spacing)
    model = hsam(preset).eval().to(dev)
    calls = {"windows": 0}

    def count_windows(module: torch.nn.Module, args: tuple) -> None:
        calls["windows"] += args[0].shape[0]

    hook = model.register_forward_pre_hook(count_windows)  # counts the crops, changes nothing
    predictor = Predictor(model, device=dev)
    t0 = time.perf_counter()
    predictor.set_image(vol)
    result.stages["preprocess (to 1.5 mm)"] = time.perf_counter() - t0
    if progress:
        print(f"  automatic inference over the whole volume ({preset}) ...", file=sys.stderr)
    t0 = time.perf_counter()
    pred = WholeVolume(predictor).predict_auto(batch_size=batch, progress=progress)
    hook.remove()
    result.stages["sliding windows + blending"] = pred.stages["sliding windows"]
    result.stages["inverse resampling + arg-max"] = pred.stages["back to the input grid"]
    result.stages["total (after reading)"] = sum(result.stages.values())
    result.windows = calls["windows"]
    assert pred.labels.shape == vol.array.shape
    del vol, predictor, model, pred
    if window_preset:
        full = hsam(window_preset).eval().to(dev)
        size = full.img_size
        x = torch.randn(1, 1, size, size, size, device=dev)
        with torch.inference_mode():
            full(x)  # warm-up
            for _ in range(repeats):
                sync(dev)
                t0 = time.perf_counter()
                full(x)
                sync(dev)
                result.window_seconds_all.append(time.perf_counter() - t0)
        result.window_seconds = statistics.median(result.window_seconds_all)
    return result


def format_auto_table(r: AutoBench) -> str:
    lines = [
        f"lesionsam bench auto: H-SAM --auto, preset={r.preset} image={'x'.join(map(str, r.shape_ijk))} "
        f"spacing={r.spacing} device={r.device} threads={r.threads} windows={r.windows} (batch {r.batch})",
        f"{'stage':<32} {'seconds':>8}",
    ]
    lines += [f"{name:<32} {sec:>8.2f}" for name, sec in r.stages.items()]
    if r.windows:
        per = r.stages["sliding windows + blending"] / r.windows
        lines.append(f"{'per window (incl. blending)':<32} {per:>8.3f}")
    if r.window_preset:
        lines.append(f"one window of {r.window_preset} (128³ forward, batch 1, median): {r.window_seconds:.3f} s")
    return "\n".join(lines)
