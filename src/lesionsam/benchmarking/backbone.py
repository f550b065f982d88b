"""Benchmarks: implementations measured side by side in one run, reported as ratios.

``bench_backbone`` times the SAM-Med3D image encoder with the exact fast window attention and with
the naive (official, padded) attention on the same weights and the same input, and reports time,
peak memory, the speed-up and the largest output difference. On CPU the peak is the rise of the
process's resident memory during the forward pass (Linux ``VmHWM`` after resetting it); on CUDA it
is ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from lesionsam.models.backbone import build_sam3d, get_preset
from lesionsam.utils.dataclass_io import atomic_write_bytes

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class BenchRow:
    """One implementation's measurements."""

    impl: str
    seconds: float
    seconds_all: list[float]
    peak_mb: float | None
    max_abs_diff: float
    speedup: float = 1.0


@dataclass
class BenchResult:
    """Results of one side-by-side run."""

    target: str
    preset: str
    batch: int
    device: str
    dtype: str
    threads: int
    rows: list[BenchRow] = field(default_factory=list)
    reference: str = ""

    def write_json(self, path: str | Path) -> Path:
        return atomic_write_bytes(path, json.dumps(asdict(self), indent=2).encode())


def _rss_peak_reset() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_kb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_backbone(
    *,
    preset: str = "tiny",
    batch: int = 1,
    device: str = "cpu",
    dtype: str = "float32",
    repeats: int = 3,
    warmup: int = 1,
    threads: int | None = None,
    impls: tuple[str, ...] = ("fast", "naive"),
    seed: int = 0,
    progress: bool = False,
) -> BenchResult:
    """Time the image encoder with each attention implementation on the same weights and input.

    Args:
        preset: backbone preset (``tiny`` or ``sam_med3d_vit_b``).
        batch: crops per forward pass.
        device: ``cpu`` or ``cuda`` (``cuda:N``).
        dtype: compute dtype (``float32``, ``bfloat16``, ``float16``).
        repeats: timed runs per implementation; the median is reported.
        warmup: untimed runs first.
        threads: CPU threads (``torch.set_num_threads``); None keeps the default.
        impls: attention implementations to compare; the last one is the reference for the ratio
            and the output difference.
        seed: seeds the random weights (relative positions and qkv biases are non-zero, so the
            padding terms matter) and the input.
        progress: print one line per implementation to stderr.

    Returns:
        :class:`BenchResult`, rows in ``impls`` order.
    """
    if batch < 1 or repeats < 1:
        raise ValueError(f"batch and repeats must be >= 1, got batch={batch}, repeats={repeats}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA GPU is available; use --device cpu")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if threads:
        torch.set_num_threads(threads)
    cfg = get_preset(preset)
    gen = torch.Generator().manual_seed(seed)
    model = build_sam3d(cfg).eval()
    with torch.no_grad():
        for name, p in model.image_encoder.named_parameters():
            if "rel_pos" in name or "pos_embed" in name or name.endswith("qkv.bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    encoder = model.image_encoder.to(dev, DTYPES[dtype])
    x = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, cfg.img_size, generator=gen)
    x = x.to(dev, DTYPES[dtype])
    result = BenchResult(
        target="backbone",
        preset=preset,
        batch=batch,
        device=str(dev),
        dtype=dtype,
        threads=torch.get_num_threads(),
        reference=impls[-1],
    )
    outputs: dict[str, torch.Tensor] = {}
    for impl in impls:
        encoder.set_attention_impl(impl)
        times = []
        with torch.inference_mode():
            for _ in range(warmup):
                encoder(x)
            _sync(dev)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
                base = torch.cuda.memory_allocated(dev)
            else:
                reset = _rss_peak_reset()
                base = _status_kb("VmRSS")
            for _ in range(repeats):
                t0 = time.perf_counter()
                out = encoder(x)
                _sync(dev)
                times.append(time.perf_counter() - t0)
            if dev.type == "cuda":
                peak = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
            else:
                hwm = _status_kb("VmHWM")
                peak = (hwm - base) / 1024 if reset and hwm is not None and base is not None else None
        outputs[impl] = out.float().cpu()
        med = statistics.median(times)
        result.rows.append(BenchRow(impl=impl, seconds=med, seconds_all=times, peak_mb=peak, max_abs_diff=0.0))
        if progress:
            print(f"  {impl:>6}: {med:.3f} s (median of {repeats})", file=sys.stderr)
    ref = result.rows[-1]
    for row in result.rows:
        row.speedup = ref.seconds / row.seconds
        row.max_abs_diff = float((outputs[row.impl] - outputs[ref.impl]).abs().max())
    return result


def format_table(result: BenchResult) -> str:
    """A plain-text table of a :class:`BenchResult`."""
    head = (
        f"lesionsam bench {result.target}: preset={result.preset} batch={result.batch} device={result.device} "
        f"dtype={result.dtype} threads={result.threads}"
    )
    lines = [head, f"{'attention':<10} {'time (s)':>10} {'peak mem (MB)':>14} {'speed-up':>9} {'max |diff|':>11}"]
    for r in result.rows:
        peak = f"{r.peak_mb:.0f}" if r.peak_mb is not None else "n/a"
        lines.append(f"{r.impl:<10} {r.seconds:>10.3f} {peak:>14} {r.speedup:>8.1f}x {r.max_abs_diff:>11.2e}")
    lines.append(f"(speed-up and difference relative to '{result.reference}', same weights and input)")
    return "\n".join(lines)


@dataclass
class PredictBench:
    """End-to-end timing of ``lesionsam predict`` on one full-size CT with one click."""

    preset: str
    shape_ijk: tuple[int, int, int]
    spacing: tuple[float, float, float]
    device: str
    threads: int
    stages: dict[str, float] = field(default_factory=dict)
    windows: int = 0

    def write_json(self, path: str | Path) -> Path:
        return atomic_write_bytes(path, json.dumps(asdict(self), indent=2).encode())


def synthetic_ct(shape_dhw: tuple[int, int, int], spacing_ijk: tuple[float, float, float], seed: int = 0):
    """A full-size CT-like int16 volume (air, body, an organ, one 15 mm lesion) and the lesion's (i, j, k) centre."""
    import numpy as np

    from lesionsam.data.io import Volume

    rng = np.random.default_rng(seed)
    d, h, w = shape_dhw
    zz, yy, xx = np.ogrid[:d, :h, :w]
    arr = np.full(shape_dhw, -1000, dtype=np.int16)
    body = ((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 < 1
    arr[:, body[0]] = 40
    organ = ((yy - 0.45 * h) / (0.15 * h)) ** 2 + ((xx - 0.4 * w) / (0.18 * w)) ** 2 + ((zz - d / 2) / (0.4 * d)) ** 2
    arr[organ < 1] = 60
    center = np.array([0.4 * w, 0.45 * h, d / 2])  # (i, j, k)
    r = ((xx - center[0]) * spacing_ijk[0]) ** 2 + ((yy - center[1]) * spacing_ijk[1]) ** 2
    lesion = r + ((zz - center[2]) * spacing_ijk[2]) ** 2 < 15.0**2
    arr[lesion] = 25
    arr += rng.normal(0, 12, shape_dhw).astype(np.int16)
    vol = Volume(arr, spacing_ijk, (-180.0, -180.0, -300.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    return vol, center


def bench_predict(
    *,
    preset: str = "sam_med3d_vit_b",
    checkpoint: str | None = None,
    shape_ijk: tuple[int, int, int] = (512, 512, 120),
    spacing: tuple[float, float, float] = (0.7, 0.7, 2.5),
    device: str = "cpu",
    threads: int | None = None,
    progress: bool = False,
) -> PredictBench:
    """Time ``lesionsam predict`` end to end on a synthetic full-size int16 CT written as NRRD.

    Stages: writing the test file (not part of the total), building the model, then the command itself
    (read, preprocess to 1.5 mm, model windows, inverse resampling, writing the mask).
    """
    import tempfile
    import warnings

    from lesionsam.data.io import write_image
    from lesionsam.inference.predictor import Predictor
    from lesionsam.workflows.predict import predict

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
        cases = predict(
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


@dataclass
class RefSAM3DBench:
    """Encoder time and parameters of RefSAM3D against the plain backbone (same backbone weights and input)."""

    preset: str
    batch: int
    device: str
    threads: int
    backbone_seconds: float
    refsam3d_seconds: float
    params: dict[str, float] = field(default_factory=dict)

    @property
    def overhead(self) -> float:
        return self.refsam3d_seconds / self.backbone_seconds - 1.0

    def write_json(self, path: str | Path) -> Path:
        return atomic_write_bytes(path, json.dumps({**asdict(self), "overhead": self.overhead}, indent=2).encode())


def bench_refsam3d(
    *,
    preset: str = "sam_med3d_vit_b",
    batch: int = 1,
    device: str = "cpu",
    repeats: int = 5,
    threads: int | None = None,
) -> RefSAM3DBench:
    """Time ``encode`` of SAM-Med3D and of RefSAM3D (adapters in every block, four stage features kept), interleaved
    runs, median; count RefSAM3D's new parameters."""
    from lesionsam.models.methods.refsam3d import RefSAM3D, RefSAM3DOptions, refsam3d_overhead

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    cfg = get_preset(preset)
    torch.manual_seed(0)
    sam = build_sam3d(cfg).eval().to(dev)
    ref = RefSAM3D.from_sam3d(sam, RefSAM3DOptions()).eval().to(dev)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.startswith("adapters."):
                p.normal_(0, 0.02)  # zero-initialised layers would let a lazy kernel skip work
    x = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, cfg.img_size, device=dev)
    times: dict[str, list[float]] = {"sam": [], "ref": []}
    with torch.inference_mode():
        sam.encode(x), ref.encode(x)  # warm-up
        for _ in range(repeats):
            for key, model in (("sam", sam), ("ref", ref)):
                _sync(dev)
                t0 = time.perf_counter()
                model.encode(x)
                _sync(dev)
                times[key].append(time.perf_counter() - t0)
    return RefSAM3DBench(
        preset=preset,
        batch=batch,
        device=str(dev),
        threads=torch.get_num_threads(),
        backbone_seconds=statistics.median(times["sam"]),
        refsam3d_seconds=statistics.median(times["ref"]),
        params=refsam3d_overhead(ref),
    )


def format_refsam3d_table(r: RefSAM3DBench) -> str:
    p = r.params
    lines = [
        f"lesionsam bench refsam3d: preset={r.preset} batch={r.batch} device={r.device} threads={r.threads}",
        f"{'encoder':<22} {'time (s)':>9} {'vs backbone':>12}",
        f"{'SAM-Med3D':<22} {r.backbone_seconds:>9.3f} {1.0:>11.3f}x",
        f"{'RefSAM3D (adapters)':<22} {r.refsam3d_seconds:>9.3f} {r.refsam3d_seconds / r.backbone_seconds:>11.3f}x",
        f"parameters: backbone {int(p['backbone']):,}; new {int(p['new']):,} (+{100 * p['ratio']:.1f}%: "
        + ", ".join(
            f"{k} {int(p[k]):,}"
            for k in ("adapters", "text", "text_projector", "cross_attn", "ref_decoder", "region_head")
        )
        + f"); trainable {int(p['trainable']):,}",
    ]
    return "\n".join(lines)


@dataclass
class AutoBench:
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

    def write_json(self, path: str | Path) -> Path:
        return atomic_write_bytes(path, json.dumps(asdict(self), indent=2).encode())


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
    pred = predictor.predict_auto(batch_size=batch, progress=progress)
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
                _sync(dev)
                t0 = time.perf_counter()
                full(x)
                _sync(dev)
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
