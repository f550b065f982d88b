"""The ONNX Runtime backend of the one engine: an export folder's graphs behind the model interface the engine uses.

The engine (:class:`~lesionsam.inference.windows.WindowRunner`, the session, the predictor) calls a model's
``encode`` once per window and ``decode`` once per click; :class:`OnnxModel` is a :class:`~lesionsam.models.SegModel`
whose two calls run ``encoder.onnx`` and ``decoder.onnx`` (written by ``lesionsam export``) in ONNX Runtime, and
that declares what the exported SAM-Med3D takes (clicks and a low-res mask prompt). Nothing else of the engine
changes: windows, click chains, caches, growing, post-processing and writing are the same code as with PyTorch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lesionsam.data.transforms import PreprocessConfig
from lesionsam.export.manifest import ExportError, GraphFile, Manifest, read_manifest
from lesionsam.inference.predictor import Predictor
from lesionsam.models import Prompts, SegModel, SegOutput

#: ``--runtime`` choices: PyTorch, ONNX Runtime with the float32 graphs, or with the int8 encoder.
RUNTIMES = ("torch", "onnxruntime", "onnxruntime-int8")


def runtime_precision(runtime: str) -> str:
    """``"float32"`` or ``"int8"`` for an ONNX Runtime ``--runtime`` value (``ValueError`` for others)."""
    if runtime not in RUNTIMES[1:]:
        raise ValueError(f"unknown ONNX runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    return "int8" if runtime.endswith("int8") else "float32"


def _session(path: Path, threads: int | None) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError(
            "onnxruntime is not installed; install the ONNX extra: pip install 'lesionsam[onnx]'"
        ) from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for an unreadable graph
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise ExportError(f"{path} is not a graph ONNX Runtime can load ({first[:200]}); export again") from None


def _check_io(path: Path, session: Any, graph: GraphFile) -> None:
    """The session's inputs and outputs are the manifest's (names and shapes)."""
    for kind, args, want in (
        ("inputs", session.get_inputs(), graph.inputs),
        ("outputs", session.get_outputs(), graph.outputs),
    ):
        got = {a.name: [int(d) if isinstance(d, int) else -1 for d in a.shape] for a in args}
        if got != want:
            raise ExportError(f"{path}: its {kind} {got} are not the manifest's {want}; export again")


class OnnxModel(SegModel):
    """An export folder's encoder and decoder, run by ONNX Runtime on CPU (batch rows one by one).

    Args:
        folder: a folder written by ``lesionsam export`` (its manifest and graph hashes are checked).
        precision: ``"float32"``, or ``"int8"`` for the quantised encoder (``export --int8``).
        threads: ONNX Runtime's intra-op threads (default: torch's current setting, so ``--threads`` and
            ``OMP_NUM_THREADS`` apply alike).

    Raises:
        ExportError: a missing, malformed or inconsistent manifest, or a graph file that is not the manifest's.
    """

    required_prompts = frozenset()
    accepted_prompts = frozenset({"points", "mask"})
    export_blocker = "it is already exported"

    def __init__(
        self, folder: str | os.PathLike[str], *, precision: str = "float32", threads: int | None = None
    ) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.manifest: Manifest = read_manifest(self.folder)
        self.precision = precision
        self.method_name = self.manifest.method
        self._sessions = {}
        for part in ("encoder", "decoder"):
            graph = self.manifest.graph(part, precision if part == "encoder" else "float32")
            path = self.folder / graph.file
            self._sessions[part] = _session(path, threads)
            _check_io(path, self._sessions[part], graph)

    @property
    def display_name(self) -> str:
        return f"method {self.method_name!r} (ONNX Runtime, {self.precision})"

    @property
    def img_size(self) -> int:
        return self.manifest.crop_size

    @property
    def low_res_size(self) -> int:
        return self.manifest.low_res_size

    def encode(self, image: Tensor) -> np.ndarray:
        """(B, C, S, S, S) normalised crops → (B, E, G, G, G) float32 embeddings (numpy: the engine only caches it)."""
        s = self.img_size
        if image.ndim != 5 or tuple(image.shape[2:]) != (s, s, s):
            raise ValueError(f"the exported encoder takes (B, C, {s}, {s}, {s}) crops, got {tuple(image.shape)}")
        crops = image.detach().float().cpu().numpy()
        run = self._sessions["encoder"].run
        return np.concatenate([run(None, {"image": crops[i : i + 1]})[0] for i in range(len(crops))])

    def decode(self, encoded: Any, prompts: Prompts, *, multimask_output: bool = False) -> SegOutput:
        """Decode clicks (and the previous low-res logits) on embeddings from :meth:`encode`; single-mask output."""
        self.check_prompts(prompts)
        if multimask_output:
            raise ValueError("the exported decoder returns the single mask only (multimask_output=False)")
        embedding = np.asarray(encoded, dtype=np.float32)
        rows = [self._decode_row(embedding[i : i + 1], prompts, i) for i in range(len(embedding))]
        low, logits, iou = (torch.from_numpy(np.concatenate(parts)) for parts in zip(*rows, strict=True))
        return SegOutput(low_res_logits=low, logits=logits, iou=iou)

    def _decode_row(self, embedding: np.ndarray, prompts: Prompts, row: int) -> list[np.ndarray]:
        p, low = self.manifest.max_points, self.low_res_size
        points = np.zeros((1, p, 3), np.float32)
        labels = np.full((1, p), -1, np.int64)
        if prompts.points is not None and prompts.labels is not None:
            n = prompts.points.shape[1]
            if n > p:
                raise ValueError(
                    f"{n} clicks in one window; this export takes at most {p} (export again with --max-points {n})"
                )
            points[0, :n] = prompts.points[row].detach().float().cpu().numpy()
            labels[0, :n] = prompts.labels[row].detach().cpu().numpy()
        has_mask = prompts.mask is not None
        mask = (
            prompts.mask[row : row + 1].detach().float().cpu().numpy()
            if has_mask
            else np.zeros((1, 1, low, low, low), np.float32)
        )
        feeds = {
            "embedding": embedding,
            "points": points,
            "labels": labels,
            "mask_input": np.ascontiguousarray(mask),
            "has_mask": np.array([has_mask]),
        }
        return self._sessions["decoder"].run(None, feeds)


def onnx_predictor(
    folder: str | os.PathLike[str],
    *,
    runtime: str = "onnxruntime",
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    modality: str | None = None,
    spacing: tuple[float, float, float] | None = None,
    threads: int | None = None,
    **kwargs: Any,
) -> Predictor:
    """A :class:`Predictor` (the same engine) whose model calls run an export folder in ONNX Runtime.

    Args:
        folder: a folder written by ``lesionsam export``.
        runtime: ``"onnxruntime"`` (float32) or ``"onnxruntime-int8"`` (the int8 encoder).
        device, dtype: must be ``"cpu"`` and ``"float32"`` (ONNX Runtime's CPU provider runs the graphs' precision).
        modality, spacing: override the manifest's preprocessing (default: what the checkpoint was trained with).
        kwargs: passed to :class:`Predictor` (``threshold``, ``max_windows``, ``clicked_only``; ``logit_offset``
            None or absent takes the manifest's).
    """
    if torch.device(device).type != "cpu":
        raise ValueError(f"--runtime {runtime} runs on the CPU; use --device cpu (got {device})")
    if dtype != "float32":
        raise ValueError(f"--runtime {runtime} runs the exported precision; use --dtype float32 (got {dtype})")
    model = OnnxModel(folder, precision=runtime_precision(runtime), threads=threads)
    m = model.manifest
    pre = dict(m.preprocess)
    if modality:
        pre["modality"] = modality
    if spacing:
        pre["spacing"] = tuple(spacing)
    pre["spacing"] = tuple(pre["spacing"]) if pre.get("spacing") is not None else None
    pre["ct_clip"] = tuple(pre.get("ct_clip", (-1000.0, 1000.0)))
    try:
        config = PreprocessConfig(**pre)
    except TypeError as exc:
        raise ExportError(f"{Path(folder) / 'manifest.json'}: preprocess has an unknown field ({exc})") from None
    if kwargs.get("logit_offset") is None:
        kwargs["logit_offset"] = m.logit_offset
    predictor = Predictor(model, preprocess=config, device="cpu", **kwargs)
    if m.target_label is not None:
        predictor.training_data = {"target_label": m.target_label}
    return predictor
