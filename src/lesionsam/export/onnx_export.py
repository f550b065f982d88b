"""Write a SAM-Med3D model's two graphs as ONNX files (``torch.onnx.export(..., dynamo=True)``), check them against
PyTorch with ONNX Runtime, optionally quantise the encoder to int8, and describe them in a :class:`Manifest`."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lesionsam import __version__
from lesionsam.export.manifest import (
    DECODER_FILE,
    ENCODER_FILE,
    ENCODER_INT8_FILE,
    ExportError,
    GraphFile,
    Manifest,
    file_sha256,
)
from lesionsam.models import SegModel
from lesionsam.models.backbone.deploy import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    DecoderGraph,
    EncoderGraph,
    check_exportable,
    decoder_example,
)

#: The ONNX opset written (ONNX Runtime 1.17+ runs it).
OPSET = 18


def require_onnx() -> None:
    """``ExportError`` naming the extra to install unless onnx, onnxscript and onnxruntime import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ExportError(
            f"{exc.name} is not installed; install the ONNX extra: pip install 'lesionsam[onnx]'"
        ) from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's progress lines, warnings and log records kept off the terminal."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def export_graph(graph: nn.Module, args: tuple[torch.Tensor, ...], path: Path, inputs: tuple, outputs: tuple) -> None:
    """``graph`` traced on ``args`` and written to ``path`` as one ONNX file (static shapes, named inputs/outputs)."""
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            graph,
            args,
            str(path),
            dynamo=True,
            input_names=list(inputs),
            output_names=list(outputs),
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )


def ort_session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session of ``path`` (``threads``: intra-op threads, default torch's setting)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _describe(path: Path, session: Any) -> GraphFile:
    def shape(arg: Any) -> list[int]:
        return [int(d) if isinstance(d, int) else -1 for d in arg.shape]

    return GraphFile(
        file=path.name,
        bytes=path.stat().st_size,
        sha256=file_sha256(path),
        inputs={a.name: shape(a) for a in session.get_inputs()},
        outputs={a.name: shape(a) for a in session.get_outputs()},
    )


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of ``source``'s matrix-product weights (activations quantised at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)


def export_onnx(
    model: SegModel,
    folder: Path,
    *,
    method: str,
    checkpoint: Path,
    preprocess: dict[str, Any],
    logit_offset: float = 0.0,
    max_points: int = 16,
    int8: bool = False,
    target_label: int | None = None,
    seed: int = 0,
) -> Manifest:
    """Write ``encoder.onnx``, ``decoder.onnx`` (and ``encoder.int8.onnx``) and ``manifest.json`` into ``folder``.

    Every graph is run once by ONNX Runtime on a seeded random crop and one click (with and without the mask prompt)
    and compared with PyTorch; the largest differences go into the manifest's ``check``.

    Args:
        model: an exportable model (:func:`~lesionsam.models.backbone.deploy.check_exportable`), float32, on CPU.
        folder: an existing, empty folder.
        method, checkpoint, preprocess, logit_offset, target_label: recorded in the manifest (the checkpoint is
            hashed).
        max_points: P, the decoder's fixed number of clicks.
        int8: also write the encoder quantised to int8.
        seed: seeds the check's random crop.

    Raises:
        ExportError: the model's parts cannot be exported (its method says why) or the onnx packages are missing.
    """
    require_onnx()
    if max_points < 1:
        raise ExportError(f"--max-points must be at least 1, got {max_points}")
    try:
        sam = check_exportable(model)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    sam = sam.float().cpu().eval()
    cfg = sam.config
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(1, cfg.in_chans, cfg.img_size, cfg.img_size, cfg.img_size, generator=gen)
    enc_path, dec_path = folder / ENCODER_FILE, folder / DECODER_FILE
    export_graph(EncoderGraph(sam), (image,), enc_path, ENCODER_INPUTS, ENCODER_OUTPUTS)
    example = decoder_example(sam, max_points)
    export_graph(DecoderGraph(sam), example, dec_path, DECODER_INPUTS, DECODER_OUTPUTS)

    check: dict[str, float] = {}
    enc = ort_session(enc_path)
    with torch.inference_mode():
        embedding = sam.encode(image)
    check["encoder_max_abs_diff"] = _diff(enc.run(None, {"image": image.numpy()})[0], embedding)
    dec = ort_session(dec_path)
    check["decoder_max_abs_diff"] = _decoder_diff(sam, dec, embedding, example)
    int8_graph = None
    if int8:
        int8_path = folder / ENCODER_INT8_FILE
        quantize_int8(enc_path, int8_path)
        q = ort_session(int8_path)
        check["encoder_int8_max_abs_diff"] = _diff(q.run(None, {"image": image.numpy()})[0], embedding)
        int8_graph = _describe(int8_path, q)
    manifest = Manifest(
        method=method,
        checkpoint=checkpoint.name,
        checkpoint_sha256=file_sha256(checkpoint),
        crop_size=cfg.img_size,
        low_res_size=cfg.low_res_size,
        max_points=max_points,
        preprocess=dict(preprocess),
        logit_offset=float(logit_offset),
        encoder=_describe(enc_path, enc),
        decoder=_describe(dec_path, dec),
        encoder_int8=int8_graph,
        lesionsam_version=__version__,
        torch_version=torch.__version__,
        opset=OPSET,
        check=check,
        target_label=target_label,
    )
    manifest.write(folder)
    return manifest


def _diff(got: np.ndarray, want: torch.Tensor) -> float:
    return float(np.abs(got - want.float().numpy()).max())


def _decoder_diff(sam: Any, session: Any, embedding: torch.Tensor, example: tuple[torch.Tensor, ...]) -> float:
    """Largest difference of the ONNX decoder from :meth:`Sam3D.decode` on the example's real clicks, with and without
    a (random) mask prompt, over all three outputs."""
    from lesionsam.models import Prompts

    _, points, labels, mask, _ = example
    real = labels[0] != -1
    worst = 0.0
    mask = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1))
    for has_mask in (False, True):
        feeds = {
            "embedding": embedding.numpy(),
            "points": points.numpy(),
            "labels": labels.numpy(),
            "mask_input": mask.numpy(),
            "has_mask": np.array([has_mask]),
        }
        got = session.run(None, feeds)
        prompts = Prompts(points=points[:, real], labels=labels[:, real], mask=mask if has_mask else None)
        with torch.inference_mode():
            out = sam.decode(embedding, prompts)
        for g, w in zip(got, (out.low_res_logits, out.logits, out.iou), strict=True):
            worst = max(worst, _diff(g, w))
    return worst
