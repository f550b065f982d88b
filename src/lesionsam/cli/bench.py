"""``lesionsam bench``: speed and memory, measured side by side in one run."""

from __future__ import annotations

import argparse
from pathlib import Path

from lesionsam.cli.main import command
from lesionsam.workflows.bench import TARGETS


@command("bench")
def _bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure speed and memory side by side (fast vs naive attention, ...)",
        description="Benchmarks, measured side by side in one run and printed as a table with ratios.",
    )
    p.add_argument(
        "target",
        choices=TARGETS,
        help="'backbone': the image encoder, fast vs naive attention; 'sgp': SGP-SAM's encoder with gates closed "
        "and open vs the plain backbone; 'refsam3d': RefSAM3D's encoder time and parameters vs the backbone; "
        "'predict': lesionsam predict end to end on a synthetic 512x512x120 int16 CT (NRRD) with one click; "
        "'auto': H-SAM's prompt-free whole-volume inference of that CT (--preset, default tiny) and the time of "
        "one window of the full preset; 'interactive': an interactive session on that CT (first click on a new "
        "lesion, refining click, box), float32 and bfloat16 side by side (2 threads unless --threads); 'clicks': the "
        "click-curve protocol (evaluate-clicks, 10 clicks per lesion) through the engine vs one predict per click, "
        "on --data (default: small synthetic cases)",
    )
    p.add_argument("--preset", default=None, help="backbone preset (default: tiny for backbone, full for predict)")
    p.add_argument("--checkpoint", default=None, help="predict: weights to load (default: random weights)")
    p.add_argument("--batch", type=int, default=1, help="crops per forward pass (default 1)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="compute dtype")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per implementation (median reported)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    p.add_argument("--impls", default="fast,naive", help="comma-separated attention implementations")
    p.add_argument(
        "--runtime",
        default="torch",
        choices=["torch", "onnxruntime"],
        help="backbone: 'onnxruntime' times the encoder in PyTorch and in ONNX Runtime (float32 and int8) side by side "
        "instead of fast vs naive attention (needs pip install 'lesionsam[onnx]')",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument(
        "--data", type=Path, default=None, metavar="DIR", help="clicks: a data set folder (imagesTr, labelsTr)"
    )

    def run(a: argparse.Namespace) -> int:
        from lesionsam.workflows.bench import bench

        bench(
            a.target,
            preset=a.preset,
            checkpoint=a.checkpoint,
            batch=a.batch,
            device=a.device,
            dtype=a.dtype,
            repeats=a.repeats,
            threads=a.threads,
            impls=tuple(s.strip() for s in a.impls.split(",") if s.strip()),
            json_path=a.json,
            data=a.data,
            runtime=a.runtime,
        )
        return 0

    p.set_defaults(func=run)
