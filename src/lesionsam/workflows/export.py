"""``lesionsam export``: a checkpoint's SAM-Med3D parts as ONNX files plus a manifest, in a new folder.

Everything is checked before the first write (the checkpoint, the output folder, the method's exportability, the
onnx packages); the files are written into a temporary folder beside ``out`` that is renamed to ``out`` at the end,
so a failed export leaves nothing behind and an existing folder is never overwritten.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

from lesionsam.export.manifest import ExportError, Manifest
from lesionsam.utils.paths import PathLike, check_can_create, refuse_inputs_as_outputs


def export(
    checkpoint: PathLike,
    out: PathLike,
    *,
    preset: str | None = None,
    max_points: int = 16,
    int8: bool = False,
    modality: str | None = None,
    spacing: tuple[float, float, float] | None = None,
) -> Manifest:
    """Export ``checkpoint`` (a lesionsam checkpoint, or an official SAM-Med3D file with ``preset``) into ``out``.

    Args:
        checkpoint: the weights; out: the folder to create (it must not exist).
        preset: the backbone preset of an official file (default ``sam_med3d_vit_b``).
        max_points: the decoder's fixed number of clicks per window (unused ones are padding).
        int8: also write the encoder with dynamically quantised int8 weights.
        modality, spacing: recorded preprocessing (default: the checkpoint's training settings, else CT, 1.5 mm).

    Returns:
        The :class:`~lesionsam.export.manifest.Manifest` written to ``out/manifest.json``.

    Raises:
        ExportError / ValueError / FileNotFoundError: one line saying what is wrong; nothing was written.
    """
    from lesionsam.export.onnx_export import export_onnx, require_onnx
    from lesionsam.inference.predictor import Predictor
    from lesionsam.models.backbone.deploy import check_exportable
    from lesionsam.models.checkpoint import check_checkpoint_file

    checkpoint, out = Path(checkpoint), Path(out)
    check_checkpoint_file(checkpoint)
    if out.exists():
        raise ExportError(f"--out {out} already exists; give a new folder (an export never overwrites one)")
    check_can_create(out, what="--out", folder=True)
    refuse_inputs_as_outputs([("--out", out)], [("CHECKPOINT", checkpoint)])
    if isinstance(max_points, bool) or not isinstance(max_points, int) or not 1 <= max_points <= 256:
        raise ExportError(f"--max-points must be an integer from 1 to 256, got {max_points!r}")
    require_onnx()
    predictor = Predictor.from_checkpoint(checkpoint, preset=preset, modality=modality, spacing=spacing)
    try:
        check_exportable(predictor.model)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # a folder as ``mkdir`` makes it (mkdtemp's is private)
        manifest = export_onnx(
            predictor.model,
            tmp,
            method=predictor.model.method_name or "sam_med3d",
            checkpoint=checkpoint,
            preprocess=dataclasses.asdict(predictor.preprocessor.config),
            logit_offset=predictor.logit_offset,
            max_points=max_points,
            int8=int8,
            target_label=predictor.trained_target_label,
        )
        os.rename(tmp, out)  # fails, rather than merging, if ``out`` appeared meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
