"""``lesionsam bench refsam3d``: RefSAM3D's encoder time and new parameters against the plain SAM-Med3D backbone."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from lesionsam.benchmarking.memory import sync
from lesionsam.benchmarking.result import JsonResult
from lesionsam.models.backbone import build_sam3d, get_preset


@dataclass
class RefSAM3DBench(JsonResult):
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

    def json_extra(self) -> dict[str, float]:
        return {"overhead": self.overhead}


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
                sync(dev)
                t0 = time.perf_counter()
                model.encode(x)
                sync(dev)
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
