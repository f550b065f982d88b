"""Benchmark of SGP-SAM's encoder overhead: the plain backbone vs SGP-SAM with its gates closed and open.

``bench_sgp`` builds one SAM-Med3D and an SGP-SAM that shares its parts (the same weights), then times, on
the same input, the plain image encoder, SGP-SAM's encoder with every gate closed (gate mode ``"off"``: the
gating units run, the fusion blocks are not computed — the cost a learned gate pays when it skips) and with
every gate open (``"on"``: every fusion block runs). The fusion weights are seeded non-zero, so the open
variant really changes the embedding (its ``max |diff|`` is > 0; the closed variant's is exactly 0).

The three variants are timed in turn within each repeat, in an order rotated each repeat, so that drifts of
the machine hit them alike; a variant's ratio to the backbone is the median over repeats of the paired
per-repeat ratios, which a load change between repeats does not bias. The design target is at most 3 %
overhead with the gates closed. The backbone's run-to-run spread is reported beside it: where it exceeds the
target, the end-to-end figure cannot decide, and the isolated estimate is the one to read — one SGPM timed
alone on the token grid (closed and open, fastest of at least 20 calls) × the number of modules, over the
backbone's fastest run. Its cost is small against the encoder's, so this figure stays readable on a machine
busy with other work.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lesionsam.benchmarking.memory import DTYPES, sync
from lesionsam.benchmarking.result import JsonResult
from lesionsam.models.backbone import build_sam3d, get_preset
from lesionsam.models.methods.sgp import SGPOptions, SGPSam

#: (label, gate mode or None for the plain backbone), in timing order.
VARIANTS: tuple[tuple[str, str | None], ...] = (
    ("backbone", None),
    ("SGP-SAM gates closed", "off"),
    ("SGP-SAM gates open", "on"),
)


@dataclass
class SGPBenchRow:
    """One variant's measurements.

    Attributes:
        variant: row label.
        gate_mode: SGP gate mode (None for the plain backbone).
        seconds: median encoder time per forward pass.
        seconds_best: fastest timed run (least disturbed by other load on the machine).
        seconds_all: every timed run.
        ratio: median over repeats of ``time / backbone time`` in the same repeat (paired).
        ratio_best: ``seconds_best / backbone seconds_best``.
        params: parameters on the timed path (image encoder, plus the SGPMs for SGP-SAM).
        open_rate: fraction of (sample, module) gates open (None for the backbone).
        max_abs_diff: largest difference of the embedding from the backbone's.
    """

    variant: str
    gate_mode: str | None
    seconds: float
    seconds_best: float
    seconds_all: list[float]
    ratio: float
    ratio_best: float
    params: int
    open_rate: float | None
    max_abs_diff: float


@dataclass
class SGPBenchResult(JsonResult):
    """Results of one side-by-side run of :func:`bench_sgp`."""

    preset: str
    batch: int
    device: str
    dtype: str
    threads: int
    repeats: int
    blocks: list[int]
    params_backbone: int
    params_sgpm: int
    rows: list[SGPBenchRow] = field(default_factory=list)
    #: seconds of one SGPM call alone on the (batch, G, G, G, C) tokens, gate closed / open (fastest of >= 20).
    module_seconds_closed: float = 0.0
    module_seconds_open: float = 0.0
    target: str = "sgp"

    @property
    def closed_overhead(self) -> float:
        """End-to-end relative time overhead of SGP-SAM with closed gates (0.02 = 2 %; paired median)."""
        return next(r.ratio for r in self.rows if r.gate_mode == "off") - 1.0

    @property
    def closed_overhead_isolated(self) -> float:
        """The closed modules' own time (n_modules × one closed SGPM call) over the backbone's (fastest runs)."""
        return len(self.blocks) * self.module_seconds_closed / self.rows[0].seconds_best

    @property
    def backbone_spread(self) -> float | None:
        """Run-to-run spread of the backbone: interquartile range / median (None with fewer than 3 runs)."""
        runs = self.rows[0].seconds_all
        if len(runs) < 3:
            return None
        q1, _, q3 = statistics.quantiles(runs, n=4)
        return (q3 - q1) / statistics.median(runs)


def bench_sgp(
    *,
    preset: str = "sam_med3d_vit_b",
    batch: int = 1,
    device: str = "cpu",
    dtype: str = "float32",
    repeats: int = 3,
    warmup: int = 1,
    threads: int | None = None,
    options: SGPOptions | None = None,
    seed: int = 0,
    progress: bool = False,
) -> SGPBenchResult:
    """Time the plain image encoder vs SGP-SAM's encoder with gates closed and open, same weights and input.

    Args:
        preset: backbone preset (``sam_med3d_vit_b`` or ``tiny``).
        batch: crops per forward pass.
        device: ``cpu`` or ``cuda`` (``cuda:N``).
        dtype: compute dtype (``float32``, ``bfloat16``, ``float16``).
        repeats: timed runs per variant (interleaved); the median is reported.
        warmup: untimed runs of each variant first.
        threads: CPU threads (``torch.set_num_threads``); None keeps the default.
        options: SGP-SAM options (default: an SGPM after each global-attention block); the gate mode is
            overridden per variant.
        seed: seeds the weights (fusion weights non-zero) and the input.
        progress: print one line per repeat to stderr.

    Returns:
        :class:`SGPBenchResult`, rows in :data:`VARIANTS` order.

    Raises:
        ValueError: bad batch/repeats, unknown dtype, or CUDA requested without a GPU.
    """
    if batch < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"batch and repeats must be >= 1 and warmup >= 0, got {batch=}, {repeats=}, {warmup=}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA GPU is available; use --device cpu")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if threads:
        torch.set_num_threads(threads)
    cfg = get_preset(preset)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    sam = build_sam3d(cfg)
    sgp = SGPSam.from_sam3d(sam, options)
    with torch.no_grad():
        for module in sgp.sgpm.values():
            for p in module.msff.fuse.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    sgp.to(dev, DTYPES[dtype]).eval()  # moves the shared parts of ``sam`` too
    x = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, cfg.img_size, generator=gen)
    x = x.to(dev, DTYPES[dtype])

    def run(mode: str | None) -> tuple[Tensor, Tensor | None]:
        if mode is None:
            return sam.image_encoder(x), None
        sgp.set_gate_mode(mode)
        encoded = sgp.encode(x)
        return encoded.embedding, encoded.gates

    times: dict[str, list[float]] = {label: [] for label, _ in VARIANTS}
    outputs: dict[str, tuple[Tensor, Tensor | None]] = {}
    with torch.inference_mode():
        for _, mode in VARIANTS:
            for _ in range(warmup):
                run(mode)
        sync(dev)
        for rep in range(repeats):
            # Rotate the order each repeat so that no variant always runs first (or after the same one).
            for label, mode in VARIANTS[rep % len(VARIANTS) :] + VARIANTS[: rep % len(VARIANTS)]:
                t0 = time.perf_counter()
                outputs[label] = run(mode)
                sync(dev)
                times[label].append(time.perf_counter() - t0)
            if progress:
                done = ", ".join(f"{label} {times[label][-1]:.3f} s" for label, _ in VARIANTS)
                print(f"  run {rep + 1}/{repeats}: {done}", file=sys.stderr)
        module = next(iter(sgp.sgpm.values()), None)
        module_seconds = {"off": 0.0, "on": 0.0}
        if module is not None:
            grid = cfg.grid_size
            tokens = torch.randn(batch, grid, grid, grid, cfg.encoder_embed_dim, generator=gen).to(dev, DTYPES[dtype])
            for mode in module_seconds:
                module.set_gate_mode(mode)
                calls = []
                for n in range(warmup + max(20, repeats)):
                    t0 = time.perf_counter()
                    module(tokens)
                    sync(dev)
                    if n >= warmup:
                        calls.append(time.perf_counter() - t0)
                module_seconds[mode] = min(calls)
    encoder_params = sum(p.numel() for p in sam.image_encoder.parameters())
    sgpm_params = sum(p.numel() for p in sgp.sgpm.parameters())
    result = SGPBenchResult(
        preset=preset,
        batch=batch,
        device=str(dev),
        dtype=dtype,
        threads=torch.get_num_threads(),
        repeats=repeats,
        blocks=list(sgp.sgpm_blocks),
        params_backbone=sum(p.numel() for p in sam.parameters()),
        params_sgpm=sgpm_params,
        module_seconds_closed=module_seconds["off"],
        module_seconds_open=module_seconds["on"],
    )
    reference = outputs[VARIANTS[0][0]][0].float()
    base_runs = times[VARIANTS[0][0]]
    base_best = min(base_runs)
    for label, mode in VARIANTS:
        med = statistics.median(times[label])
        embedding, gates = outputs[label]
        result.rows.append(
            SGPBenchRow(
                variant=label,
                gate_mode=mode,
                seconds=med,
                seconds_best=min(times[label]),
                seconds_all=times[label],
                ratio=statistics.median(t / b for t, b in zip(times[label], base_runs, strict=True)),
                ratio_best=min(times[label]) / base_best,
                params=encoder_params + (sgpm_params if mode is not None else 0),
                open_rate=float(gates.float().mean()) if gates is not None and gates.numel() else None,
                max_abs_diff=float((embedding.float() - reference).abs().max()),
            )
        )
    return result


def format_sgp_table(result: SGPBenchResult) -> str:
    """A plain-text table of an :class:`SGPBenchResult`."""
    lines = [
        f"lesionsam bench sgp: preset={result.preset} batch={result.batch} device={result.device} "
        f"dtype={result.dtype} threads={result.threads} SGPM after blocks {result.blocks}",
        f"{'encoder':<22} {'median (s)':>10} {'best (s)':>9} {'vs backbone':>12} {'(best)':>8} {'params':>12} "
        f"{'gates open':>11} {'max |diff|':>11}",
    ]
    for r in result.rows:
        rate = f"{r.open_rate:.0%}" if r.open_rate is not None else "-"
        lines.append(
            f"{r.variant:<22} {r.seconds:>10.3f} {r.seconds_best:>9.3f} {r.ratio:>11.3f}x {r.ratio_best:>7.3f}x "
            f"{r.params:>12,} {rate:>11} {r.max_abs_diff:>11.2e}"
        )
    total = result.params_backbone + result.params_sgpm
    n = len(result.blocks)
    if n:
        closed, opened = result.module_seconds_closed, result.module_seconds_open
        share = 100 * n / result.rows[0].seconds_best
        lines.append(
            f"one SGPM alone (best): closed {1e3 * closed:.2f} ms, open {1e3 * opened:.2f} ms; × {n} modules = "
            f"{share * closed:.2f}% / {share * opened:.2f}% of the backbone's best time"
        )
    lines.append(
        f"whole model: SAM-Med3D {result.params_backbone:,} parameters; SGP-SAM {total:,} "
        f"(SGPM +{result.params_sgpm:,}, +{100 * result.params_sgpm / result.params_backbone:.2f}%)"
    )
    spread, end_to_end, isolated = result.backbone_spread, result.closed_overhead, result.closed_overhead_isolated
    if spread is None or spread > 0.03:
        verdict = f"end-to-end too noisy to decide here; isolated estimate {'met' if isolated <= 0.03 else 'NOT met'}"
    else:
        verdict = "met" if end_to_end <= 0.03 else "NOT met"
    spread_text = f"±{100 * spread:.1f}%" if spread is not None else "unknown, fewer than 3 runs"
    lines.append(
        f"target: gates closed ≤ 3% over the backbone — {verdict}: end-to-end {100 * end_to_end:+.1f}% "
        f"(backbone run-to-run spread {spread_text}), isolated {100 * isolated:+.2f}%"
    )
    lines.append(
        f"({result.repeats} interleaved runs per variant, same weights and input; ratios are medians of paired "
        "per-run ratios)"
    )
    return "\n".join(lines)
