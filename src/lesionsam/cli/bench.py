"""``lesionsam bench``: speed and memory, measured side by side in one run."""

from __future__ import annotations

import argparse
from pathlib import Path

from lesionsam.cli.main import command


@command("bench")
def _bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure speed and memory side by side (fast vs naive attention, ...)",
        description="Benchmarks, measured side by side in one run and printed as a table with ratios.",
    )
    p.add_argument(
        "target",
        choices=["backbone", "sgp", "refsam3d", "predict", "auto", "interactive"],
        help="'backbone': the image encoder, fast vs naive attention; 'sgp': SGP-SAM's encoder with gates closed "
        "and open vs the plain backbone; 'refsam3d': RefSAM3D's encoder time and parameters vs the backbone; "
        "'predict': lesionsam predict end to end on a synthetic 512x512x120 int16 CT (NRRD) with one click; "
        "'auto': H-SAM's prompt-free whole-volume inference of that CT (--preset, default tiny) and the time of "
        "one window of the full preset; 'interactive': an interactive session on that CT (first click on a new "
        "lesion, refining click, box), float32 and bfloat16 side by side (2 threads unless --threads)",
    )
    p.add_argument("--preset", default=None, help="backbone preset (default: tiny for backbone, full for predict)")
    p.add_argument("--checkpoint", default=None, help="predict: weights to load (default: random weights)")
    p.add_argument("--batch", type=int, default=1, help="crops per forward pass (default 1)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="compute dtype")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per implementation (median reported)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    p.add_argument("--impls", default="fast,naive", help="comma-separated attention implementations")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")

    def run(a: argparse.Namespace) -> int:
        if a.json is not None:  # checked before minutes of measuring, not after
            from lesionsam.utils.paths import check_can_create, refuse_inputs_as_outputs

            if a.json.suffix.lower() != ".json":
                raise ValueError(f"--json {a.json}: give a file name ending in .json")
            check_can_create(a.json, what="--json")
            refuse_inputs_as_outputs([("--json", a.json)], [("--checkpoint", a.checkpoint)])
        if a.checkpoint is not None:
            from lesionsam.models.checkpoint import check_checkpoint_file

            check_checkpoint_file(a.checkpoint)
        from lesionsam.workflows import bench as wb

        full = a.preset or "sam_med3d_vit_b"
        common = {"batch": a.batch, "device": a.device, "dtype": a.dtype, "threads": a.threads}
        if a.target == "backbone":
            impls = tuple(s.strip() for s in a.impls.split(",") if s.strip())
            result = wb.bench_backbone(
                preset=a.preset or "tiny", repeats=a.repeats, impls=impls, progress=True, **common
            )
            table = wb.format_table(result)
        elif a.target == "sgp":
            from lesionsam.workflows.bench_sgp import bench_sgp, format_sgp_table

            result = bench_sgp(preset=full, repeats=max(a.repeats, 7), progress=True, **common)
            table = format_sgp_table(result)
        elif a.target == "refsam3d":
            result = wb.bench_refsam3d(
                preset=full, batch=a.batch, device=a.device, repeats=a.repeats, threads=a.threads
            )
            table = wb.format_refsam3d_table(result)
        elif a.target == "auto":
            result = wb.bench_auto(
                preset=a.preset or "tiny",
                batch=max(a.batch, 2),
                device=a.device,
                repeats=a.repeats,
                threads=a.threads,
                progress=True,
            )
            table = wb.format_auto_table(result)
        elif a.target == "interactive":
            from lesionsam.workflows.bench_interactive import bench_interactive, format_interactive_table

            result = bench_interactive(
                preset=full,
                checkpoint=a.checkpoint,
                device=a.device,
                threads=a.threads or 2,
                repeats=max(a.repeats, 5),
                progress=True,
            )
            table = format_interactive_table(result)
        else:
            result = wb.bench_predict(
                preset=full, checkpoint=a.checkpoint, device=a.device, threads=a.threads, progress=True
            )
            table = wb.format_predict_table(result)
        print(table)
        if a.json:
            result.write_json(a.json)
        return 0

    p.set_defaults(func=run)
