"""``lesionsam bench backbone``: the SAM-Med3D image encoder with fast and naive attention, side by side.

``bench_backbone`` times the SAM-Med3D image encoder with the exact fast window attention and with
the naive (official, padded) attention on the same weights and the same input, and reports time,
peak memory, the speed-up and the largest output difference. On CPU the peak is the rise of the
process's resident memory during the forward pass (Linux ``VmHWM`` after resetting it); on CUDA it
is ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field

import torch

from lesionsam.benchmarking.memory import DTYPES, rss_peak_reset, status_kb, sync
from lesionsam.benchmarking.result import JsonResult
from lesionsam.models.backbone import Sam3D, build_sam3d, get_preset


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
class BenchResult(JsonResult):
    """Results of one side-by-side run."""

    target: str
    preset: str
    batch: int
    device: str
    dtype: str
    threads: int
    rows: list[BenchRow] = field(default_factory=list)
    reference: str = ""


def seeded_model(preset: str, *, batch: int = 1, seed: int = 0) -> tuple[Sam3D, torch.Tensor]:
    """The benchmarks' SAM-Med3D of ``preset`` (eval mode) and a random input crop batch (B, C, S, S, S).

    The weights are the preset's initialisation with the relative positions, the position embedding and the qkv
    biases redrawn from ``seed`` (so the padding terms of the window attention matter); the input is drawn next.
    """
    cfg = get_preset(preset)
    gen = torch.Generator().manual_seed(seed)
    model = build_sam3d(cfg).eval()
    with torch.no_grad():
        for name, p in model.image_encoder.named_parameters():
            if "rel_pos" in name or "pos_embed" in name or name.endswith("qkv.bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    x = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, cfg.img_size, generator=gen)
    return model, x


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
    model, x = seeded_model(preset, batch=batch, seed=seed)
    encoder = model.image_encoder.to(dev, DTYPES[dtype])
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
            sync(dev)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
                base = torch.cuda.memory_allocated(dev)
            else:
                reset = rss_peak_reset()
                base = status_kb("VmRSS")
            for _ in range(repeats):
                t0 = time.perf_counter()
                out = encoder(x)
                sync(dev)
                times.append(time.perf_counter() - t0)
            if dev.type == "cuda":
                peak = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
            else:
                hwm = status_kb("VmHWM")
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
