"""``lesionsam bench predict``: ``lesionsam predict`` end to end on a synthetic full-size int16 CT with one click."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lesionsam.benchmarking.result import JsonResult
from lesionsam.benchmarking.synthetic_ct import synthetic_ct


@dataclass
class PredictBench(JsonResult):
    """End-to-end timing of ``lesionsam predict`` on one full-size CT with one click."""

    preset: str
    shape_ijk: tuple[int, int, int]
    spacing: tuple[float, float, float]
    device: str
    threads: int
    stages: dict[str, float] = field(default_factory=dict)
    windows: int = 0


def bench_predict(
    *,
    run_predict: Callable[..., Sequence[Any]],
    preset: str = "sam_med3d_vit_b",
    checkpoint: str | None = None,
    shape_ijk: tuple[int, int, int] = (512, 512, 120),
    spacing: tuple[float, float, float] = (0.7, 0.7, 2.5),
    device: str = "cpu",
    threads: int | None = None,
    progress: bool = False,
) -> PredictBench:
    """Time ``lesionsam predict`` end to end on a synthetic full-size int16 CT written as NRRD.

    ``run_predict`` is the ``lesionsam predict`` workflow (:func:`lesionsam.workflows.predict.predict`, passed in by
    the caller: this library layer does not import the workflows); it is called as ``run_predict(image, out,
    points=[...], predictor=..., progress=False)`` and returns the predicted cases (``.seconds``, ``.windows``).

    Stages: writing the test file (not part of the total), building the model, then the command itself
    (read, preprocess to 1.5 mm, model windows, inverse resampling, writing the mask).
    """
    import tempfile
    import warnings

    from lesionsam.data.io import write_image
    from lesionsam.inference.predictor import Predictor

    if threads:
        torch.set_num_threads(threads)
    i, j, k = shape_ijk
    result = PredictBench(
        preset=preset, shape_ijk=shape_ijk, spacing=spacing, device=device, threads=torch.get_num_threads()
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        vol, center = synthetic_ct((k, j, i), spacing)
        image = write_image(vol.array, Path(tmp) / "ct.nrrd", reference=vol)
        del vol
        result.stages["write test CT (not counted)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            predictor = Predictor.from_checkpoint(checkpoint, preset=preset, device=device)
        result.stages["build model"] = time.perf_counter() - t0
        if progress:
            print("  running lesionsam predict ...", file=sys.stderr)
        t0 = time.perf_counter()
        cases = run_predict(
            image,
            Path(tmp) / "mask.nrrd",
            points=[",".join(str(int(round(c))) for c in center)],
            predictor=predictor,
            progress=False,
        )
        result.stages["predict (read → mask written)"] = time.perf_counter() - t0
        result.stages["  of which model + merge + inverse"] = cases[0].seconds
        result.windows = cases[0].windows
    return result


def format_predict_table(result: PredictBench) -> str:
    """A plain-text table of a :class:`PredictBench`."""
    lines = [
        f"lesionsam bench predict: preset={result.preset} image={'x'.join(map(str, result.shape_ijk))} int16 NRRD "
        f"spacing={result.spacing} device={result.device} threads={result.threads} crops={result.windows}",
        f"{'stage':<38} {'seconds':>8}",
    ]
    lines += [f"{name:<38} {sec:>8.2f}" for name, sec in result.stages.items()]
    return "\n".join(lines)
