"""``lesionsam bench``: choose a benchmark, run it (:mod:`lesionsam.benchmarking`), print its table, write its JSON."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lesionsam.benchmarking.auto import AutoBench
    from lesionsam.benchmarking.backbone import BenchResult
    from lesionsam.benchmarking.clicks import ClicksBench
    from lesionsam.benchmarking.interactive import InteractiveBench
    from lesionsam.benchmarking.onnx_backbone import RuntimeBench
    from lesionsam.benchmarking.predict import PredictBench
    from lesionsam.benchmarking.refsam3d import RefSAM3DBench
    from lesionsam.benchmarking.sgp import SGPBenchResult

#: The benchmarks of ``lesionsam bench TARGET``.
TARGETS = ("backbone", "sgp", "refsam3d", "predict", "auto", "interactive", "clicks")


def bench(
    target: str,
    *,
    preset: str | None = None,
    checkpoint: str | None = None,
    batch: int = 1,
    device: str = "cpu",
    dtype: str = "float32",
    repeats: int = 3,
    threads: int | None = None,
    impls: tuple[str, ...] = ("fast", "naive"),
    json_path: Path | None = None,
    data: Path | None = None,
    runtime: str = "torch",
) -> (
    BenchResult
    | SGPBenchResult
    | RefSAM3DBench
    | PredictBench
    | AutoBench
    | InteractiveBench
    | ClicksBench
    | RuntimeBench
):
    """Run one benchmark, print its table and (with ``json_path``) write its results as JSON.

    Args:
        target: one of :data:`TARGETS`.
        preset: backbone preset (default: ``tiny`` for ``backbone`` and ``auto``, ``sam_med3d_vit_b`` otherwise).
        checkpoint: ``predict``/``interactive``: weights to load (default: random weights).
        batch, device, dtype, repeats, threads: as the benchmark functions take them (``sgp`` runs at least 7
            repeats, ``interactive`` at least 5 with 2 threads unless ``threads``, ``auto`` a batch of at least 2).
        impls: ``backbone``: attention implementations to compare (the last one is the reference).
        json_path: a ``.json`` file to write the results to; checked before measuring, written atomically.
        runtime: ``backbone``: ``"torch"`` compares attention implementations; ``"onnxruntime"`` compares the
            encoder in PyTorch with ONNX Runtime, float32 and int8 (exported on the fly; ``impls`` unused).
        data: ``clicks``: a data set folder (``imagesTr``, ``labelsTr``, a ``dataset.json`` naming the lesion), e.g.
            the demo's test set (default: 4 small synthetic cases, with the tiny preset's random weights).

    Returns:
        The chosen benchmark's result dataclass (each has ``write_json``).

    Raises:
        ValueError: an unknown target, an unusable ``json_path`` or checkpoint, or a bad benchmark argument.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown benchmark {target!r}; use one of {', '.join(TARGETS)}")
    if json_path is not None:  # checked before minutes of measuring, not after
        from lesionsam.utils.paths import check_can_create, refuse_inputs_as_outputs

        if json_path.suffix.lower() != ".json":
            raise ValueError(f"--json {json_path}: give a file name ending in .json")
        check_can_create(json_path, what="--json")
        refuse_inputs_as_outputs([("--json", json_path)], [("--checkpoint", checkpoint)])
    if checkpoint is not None:
        from lesionsam.models.checkpoint import check_checkpoint_file

        check_checkpoint_file(checkpoint)
    full = preset or "sam_med3d_vit_b"
    common = {"batch": batch, "device": device, "dtype": dtype, "threads": threads}
    if runtime not in ("torch", "onnxruntime"):
        raise ValueError(f"unknown --runtime {runtime!r}; use torch or onnxruntime (it times float32 and int8)")
    if runtime != "torch" and target != "backbone":
        raise ValueError(f"--runtime onnxruntime is measured by 'bench backbone' only, not by {target!r}")
    if runtime == "onnxruntime" and (device != "cpu" or dtype != "float32" or batch != 1):
        raise ValueError("--runtime onnxruntime times one float32 crop on the CPU: drop --device, --dtype and --batch")
    if target == "backbone" and runtime == "onnxruntime":
        from lesionsam.benchmarking.onnx_backbone import bench_backbone_onnx, format_runtime_table

        result = bench_backbone_onnx(preset=preset or "tiny", repeats=repeats, threads=threads, progress=True)
        table = format_runtime_table(result)
    elif target == "backbone":
        from lesionsam.benchmarking.backbone import bench_backbone, format_table

        result = bench_backbone(preset=preset or "tiny", repeats=repeats, impls=impls, progress=True, **common)
        table = format_table(result)
    elif target == "sgp":
        from lesionsam.benchmarking.sgp import bench_sgp, format_sgp_table

        result = bench_sgp(preset=full, repeats=max(repeats, 7), progress=True, **common)
        table = format_sgp_table(result)
    elif target == "refsam3d":
        from lesionsam.benchmarking.refsam3d import bench_refsam3d, format_refsam3d_table

        result = bench_refsam3d(preset=full, batch=batch, device=device, repeats=repeats, threads=threads)
        table = format_refsam3d_table(result)
    elif target == "auto":
        from lesionsam.benchmarking.auto import bench_auto, format_auto_table

        result = bench_auto(
            preset=preset or "tiny",
            batch=max(batch, 2),
            device=device,
            repeats=repeats,
            threads=threads,
            progress=True,
        )
        table = format_auto_table(result)
    elif target == "clicks":
        result = _bench_clicks(data, checkpoint=checkpoint, preset=preset, device=device, threads=threads)
        from lesionsam.benchmarking.clicks import format_clicks_table

        table = format_clicks_table(result)
    elif target == "interactive":
        from lesionsam.benchmarking.interactive import bench_interactive, format_interactive_table

        result = bench_interactive(
            preset=full,
            checkpoint=checkpoint,
            device=device,
            threads=threads or 2,
            repeats=max(repeats, 5),
            progress=True,
        )
        table = format_interactive_table(result)
    else:
        from lesionsam.benchmarking.predict import bench_predict, format_predict_table
        from lesionsam.workflows.predict import PredictRequest, predict

        def run_predict(image, out, *, predictor, progress, **prompts):  # noqa: ANN001, ANN003, ANN202
            return predict(PredictRequest.of(image, out, **prompts), predictor=predictor, progress=progress)

        result = bench_predict(
            run_predict=run_predict, preset=full, checkpoint=checkpoint, device=device, threads=threads, progress=True
        )
        table = format_predict_table(result)
    print(table)
    if json_path:
        result.write_json(json_path)
    return result


def _bench_clicks(
    data: Path | None, *, checkpoint: str | None, preset: str | None, device: str, threads: int | None
) -> ClicksBench:
    """``bench clicks`` on ``data`` (its lesion label from its dataset.json), or on a small synthetic set."""
    import tempfile

    from lesionsam.benchmarking.clicks import bench_clicks
    from lesionsam.data.labels import resolve_lesion_label
    from lesionsam.data.synthetic import write_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        if data is None:
            data = Path(tmp) / "synthetic"
            write_synthetic_dataset(data, cases=4, size=48, seed=0, progress=False)
            preset = preset or "tiny"
        label, _ = resolve_lesion_label(None, Path(data) / "labelsTr")
        return bench_clicks(
            data, checkpoint=checkpoint, preset=preset, label=label, device=device, threads=threads, progress=True
        )
