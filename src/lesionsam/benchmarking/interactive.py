"""``lesionsam bench interactive``: the time of each interaction of an :class:`InteractiveSession` on a full-size CT.

On a synthetic 512 × 512 × 120 int16 CT (0.7 × 0.7 × 2.5 mm,
:func:`~lesionsam.benchmarking.synthetic_ct.synthetic_ct`), with the full ViT-B preset (random weights unless a
checkpoint is given), for each compute dtype in turn (side by side in one run):

* **open**: preprocessing the image once (reorient, resample to 1.5 mm, normalise);
* **first click**: a positive click that starts a new lesion (one window encoded and decoded, the lesion's region
  resampled onto the input grid, the label-map patch composed);
* **refining click**: a click on that lesion (decoder only, from the cached embedding and previous low-res logits);
* **box**: a 3D box that starts a new lesion (encode + decode, like a first click, plus the prior mask);
* **encoder alone**: the encode of one crop (for bfloat16: the predictor's bfloat16 copy of the model under
  autocast), the floor under a first click.

Each lesion gets one window (``max_windows=1``): with random weights a mask may grow anywhere, which would time
the weights rather than the engine. Medians over ``repeats`` lesions, each at a different place. The masks of the
bfloat16 run are compared with those of the float32 run (Dice per lesion, same prompts).
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from lesionsam.benchmarking.result import JsonResult
from lesionsam.benchmarking.synthetic_ct import synthetic_ct
from lesionsam.evaluation.dice import dice as voxel_dice

#: What is timed, in the order of the table.
STEPS = ("open", "first click", "refining click", "box", "encoder alone")


@dataclass
class InteractiveBench(JsonResult):
    """Median seconds of each step per dtype, and the bfloat16 masks' agreement with float32."""

    preset: str
    shape_ijk: tuple[int, int, int]
    spacing: tuple[float, float, float]
    device: str
    threads: int
    repeats: int
    load: float
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    dice_vs_float32: dict[str, list[float]] = field(default_factory=dict)
    #: ``lesionsam serve``'s round trip (first dtype): the same clicks through HTTP and on the library, median s.
    round_trip: dict[str, float] = field(default_factory=dict)
    #: nnInteractive's protocol (first dtype): a first and a refining point through ``nninteractive-client`` beside
    #: the library on the same array and spacing, median s (empty when the client is not installed).
    remote_round_trip: dict[str, float] = field(default_factory=dict)
    #: zoom-in (first dtype): a first and a refining click of a lesion zoomed ``zoom_factor`` times, median s: framed
    #: by a first pass on the usual grid then the zoomed window resampled from the input, encoded and decoded
    #: ("zoomed"), or by the zoomed window alone ("zoomed, first pass zoomed": a small lesion with first=zoomed).
    zoom: dict[str, float] = field(default_factory=dict)
    zoom_factor: float = 0.0


def bench_interactive(
    *,
    preset: str = "sam_med3d_vit_b",
    checkpoint: str | None = None,
    shape_ijk: tuple[int, int, int] = (512, 512, 120),
    spacing: tuple[float, float, float] = (0.7, 0.7, 2.5),
    dtypes: tuple[str, ...] = ("float32", "bfloat16"),
    device: str = "cpu",
    threads: int | None = 2,
    repeats: int = 5,
    progress: bool = False,
    round_trip: bool = True,
    zoom_factor: float = 2.0,
) -> InteractiveBench:
    """Time an interactive session's steps (see the module docstring); ``zoom_factor`` > 1 also times a first and a
    refining click of a lesion zoomed that many times (0: not)."""
    import os

    from lesionsam.inference.boxes import Box
    from lesionsam.inference.predictor import Predictor
    from lesionsam.inference.session import InteractiveSession

    if threads:
        torch.set_num_threads(threads)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    i, j, k = shape_ijk
    image, center = synthetic_ct((k, j, i), spacing)
    result = InteractiveBench(
        preset=preset,
        shape_ijk=shape_ijk,
        spacing=spacing,
        device=device,
        threads=torch.get_num_threads(),
        repeats=repeats,
        load=os.getloadavg()[0],
    )
    # Lesion positions: around the synthetic lesion, spread so that no two share a window.
    rng = np.random.default_rng(0)
    offsets = rng.uniform(-1, 1, size=(repeats, 3)) * np.array([0.15 * i, 0.15 * j, 0.2 * k])
    points = [tuple(int(v) for v in np.clip(center + o, 8, np.array(shape_ijk) - 9)) for o in offsets]
    masks: dict[str, list[np.ndarray]] = {}
    for dtype in dtypes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(0)
            predictor = Predictor.from_checkpoint(checkpoint, preset=preset, device=device, max_windows=1, dtype=dtype)
        if progress:
            print(f"  {dtype}: opening the image ...", file=sys.stderr)
        t0 = time.perf_counter()
        session = InteractiveSession(predictor, image)
        opened = time.perf_counter() - t0
        times: dict[str, list[float]] = {s: [] for s in STEPS[1:]}
        masks[dtype] = []
        for n, p in enumerate(points):
            if progress:
                print(f"  {dtype}: lesion {n + 1}/{repeats}", file=sys.stderr)
            t0 = time.perf_counter()
            lesion = session.click(p).lesion
            times["first click"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            session.click((p[0] + 3, p[1] - 2, p[2]), positive=True, lesion=lesion)
            times["refining click"].append(time.perf_counter() - t0)
            masks[dtype].append(session.label_map() == lesion)
            box = Box(tuple(v - 10 for v in p[:2]) + (p[2] - 3,), tuple(v + 10 for v in p[:2]) + (p[2] + 3,))
            t0 = time.perf_counter()
            session.box(box)
            times["box"].append(time.perf_counter() - t0)
            session.reset()
            crop = torch.randn(1, 1, predictor.crop, predictor.crop, predictor.crop)
            t0 = time.perf_counter()
            with session.runner.compute():
                session.runner.encoder.encode(crop)
            times["encoder alone"].append(time.perf_counter() - t0)
        result.seconds[dtype] = {"open": opened, **{s: statistics.median(v) for s, v in times.items()}}
    if zoom_factor > 1.0:
        result.zoom = _zoomed_clicks(checkpoint, preset, device, dtypes[0], image, points, zoom_factor)
        result.zoom_factor = zoom_factor
    for dtype in dtypes[1:]:
        result.dice_vs_float32[dtype] = [voxel_dice(a, b) for a, b in zip(masks[dtype], masks[dtypes[0]], strict=True)]
    if round_trip:
        from lesionsam.serve.bench import bench_round_trip

        if progress:
            print(f"  {dtypes[0]}: server round trip ...", file=sys.stderr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(0)
            predictor = Predictor.from_checkpoint(
                checkpoint, preset=preset, device=device, max_windows=1, dtype=dtypes[0]
            )
        p = points[0]
        trip = bench_round_trip(
            image,
            lambda volume: InteractiveSession(predictor, volume),
            first=p,
            refine=[((p[0] + 3, p[1] - 2, p[2]), True)],
            repeats=min(repeats, 3),
        )
        result.round_trip = {
            "first click, HTTP": trip.first_http,
            "first click, library": trip.first_direct,
            "refining click, HTTP": trip.refine_http,
            "refining click, library": trip.refine_direct,
        }
        result.remote_round_trip = _remote_round_trip(image, predictor, p, repeats=min(repeats, 3), progress=progress)
    return result


def _zoomed_clicks(
    checkpoint: str | None,
    preset: str,
    device: str,
    dtype: str,
    image: object,
    points: list[tuple[int, int, int]],
    factor: float,
) -> dict[str, float]:
    """Median s of a first and a refining click with every lesion zoomed ``factor`` times (a fixed factor: with
    random weights a size-adaptive choice would time the weights), framed both ways (:class:`ZoomPolicy` ``first``):
    a first pass on the usual grid, then the view (``usual``); the view alone (``zoomed``: what a small lesion costs
    with ``--zoom auto,first=zoomed``)."""
    from lesionsam.inference.predictor import Predictor
    from lesionsam.inference.session import InteractiveSession
    from lesionsam.inference.zoom import ZoomPolicy

    out: dict[str, float] = {}
    for first, name in (("usual", "zoomed"), ("zoomed", "zoomed, first pass zoomed")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(0)
            predictor = Predictor.from_checkpoint(
                checkpoint,
                preset=preset,
                device=device,
                max_windows=1,
                dtype=dtype,
                zoom=ZoomPolicy(fixed=factor, first=first),
            )
        session = InteractiveSession(predictor, image)  # type: ignore[arg-type]
        times: tuple[list[float], list[float]] = ([], [])
        for p in points:
            t0 = time.perf_counter()
            lesion = session.click(p).lesion
            times[0].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            session.click((p[0] + 1, p[1] - 1, p[2]), positive=True, lesion=lesion)
            times[1].append(time.perf_counter() - t0)
            session.reset()
        out[f"first click, {name}"] = statistics.median(times[0])
        out[f"refining click, {name}"] = statistics.median(times[1])
    return out


def _remote_round_trip(
    image: object, predictor: object, p: tuple[int, int, int], *, repeats: int, progress: bool
) -> dict[str, float]:
    """nnInteractive's protocol through its real client (3D Slicer's, napari's, ITK-SNAP's way in), beside the library
    on the same array and spacing: median s (nothing when ``nninteractive-client`` is not installed)."""
    from lesionsam.inference.session import InteractiveSession
    from lesionsam.serve.remote.bench import bench_remote_round_trip

    if progress:
        print("  nnInteractive client round trip ...", file=sys.stderr)
    try:
        trip = bench_remote_round_trip(
            image,  # type: ignore[arg-type]
            lambda volume: InteractiveSession(predictor, volume),  # type: ignore[arg-type]
            first=p,
            refine=[((p[0] + 3, p[1] - 2, p[2]), True)],
            repeats=repeats,
        )
    except ImportError:
        print("  (nninteractive-client not installed: no protocol round trip)", file=sys.stderr)
        return {}
    return {
        "first point, nnInteractive client": trip.first_client,
        "first point, library": trip.first_library,
        "refining point, nnInteractive client": trip.refine_client,
        "refining point, library": trip.refine_library,
    }


def format_interactive_table(r: InteractiveBench) -> str:
    """A plain-text table of an :class:`InteractiveBench`."""
    dtypes = list(r.seconds)
    lines = [
        f"lesionsam bench interactive: preset={r.preset} image={'x'.join(map(str, r.shape_ijk))} spacing={r.spacing} "
        f"device={r.device} threads={r.threads} lesions={r.repeats} (median s; one window per lesion; "
        f"load average at start {r.load:.2f})",
        f"{'step':<16}" + "".join(f"{d:>12}" for d in dtypes),
    ]
    for step in STEPS:
        lines.append(f"{step:<16}" + "".join(f"{r.seconds[d][step]:>12.3f}" for d in dtypes))
    for dtype, dice in r.dice_vs_float32.items():
        lines.append(f"{dtype} masks vs float32: Dice min {min(dice):.4f}, mean {float(np.mean(dice)):.4f}")
    for step, seconds in r.round_trip.items():
        lines.append(f"server round trip, {step}: {seconds:.3f} s ({dtypes[0]})")
    for step, seconds in r.remote_round_trip.items():
        lines.append(f"remote protocol round trip, {step}: {seconds:.3f} s ({dtypes[0]})")
    if r.zoom:
        first = r.seconds[dtypes[0]]["first click"]
        for step, seconds in r.zoom.items():
            lines.append(f"zoom-in x{r.zoom_factor:g}, {step}: {seconds:.3f} s ({dtypes[0]})")
        for name in ("zoomed", "zoomed, first pass zoomed"):
            extra = r.zoom[f"first click, {name}"] - first
            lines.append(f"zoom-in's extra cost per lesion (first click, {name}): {extra:+.3f} s")
    client, library = (r.remote_round_trip.get(f"refining point, {w}") for w in ("nnInteractive client", "library"))
    if client is not None and library is not None:
        lines.append(f"remote protocol overhead of a refining point: {client - library:+.3f} s")
    return "\n".join(lines)
