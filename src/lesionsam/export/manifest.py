"""The manifest of an export folder (``manifest.json``): what the graphs are, how images must be prepared for them,
and the hashes that tie the folder's files to each other and to the checkpoint they came from.

Read with :func:`read_manifest`, which refuses a malformed or inconsistent manifest, or a graph file that is not
the one the manifest names (size and sha256), with one line saying what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: The manifest's name inside an export folder, and its format tag.
MANIFEST = "manifest.json"
FORMAT = "lesionsam-onnx/1"
#: The graph files' names; the int8 ones exist only for ``lesionsam export --int8``.
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
ENCODER_INT8_FILE = "encoder.int8.onnx"
#: Precisions a runtime may choose.
PRECISIONS = ("float32", "int8")


class ExportError(ValueError):
    """An export folder, manifest or graph file that cannot be used (one line, saying what to do)."""


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class GraphFile:
    """One graph file of the folder: its name, size in bytes and sha256; its inputs' and outputs' names and shapes."""

    file: str
    bytes: int
    sha256: str
    inputs: dict[str, list[int]]
    outputs: dict[str, list[int]]


@dataclass(frozen=True)
class Manifest:
    """What ``lesionsam export`` wrote (see :mod:`lesionsam.export`).

    Attributes:
        method: the registry name of the exported model; checkpoint: its file name; checkpoint_sha256: its hash.
        crop_size: S, the encoder's static crop side; low_res_size: L, the low-res logits' side; max_points: P, the
            decoder's fixed number of clicks (unused ones have label -1).
        preprocess: the :class:`~lesionsam.data.transforms.PreprocessConfig` fields (spacing in mm, orientation,
            modality and CT window: the intensity normalisation) the model expects its crops prepared with.
        logit_offset: subtracted from the decoder's logits before the sigmoid (the training's logit adjustment).
        encoder, decoder: the float32 graphs; encoder_int8: the dynamically quantised encoder, when written.
        lesionsam_version, torch_version, opset: what wrote the graphs.
        check: the largest |ONNX Runtime - PyTorch| differences measured when exporting (float32; int8 if written).
        target_label: the lesion label the checkpoint was trained on, when it trained on one (else None).
    """

    method: str
    checkpoint: str
    checkpoint_sha256: str
    crop_size: int
    low_res_size: int
    max_points: int
    preprocess: dict[str, Any]
    logit_offset: float
    encoder: GraphFile
    decoder: GraphFile
    lesionsam_version: str
    torch_version: str
    opset: int
    encoder_int8: GraphFile | None = None
    check: dict[str, float] = field(default_factory=dict)
    target_label: int | None = None
    format: str = FORMAT

    def graph(self, part: str, precision: str = "float32") -> GraphFile:
        """The graph of ``part`` (``"encoder"`` or ``"decoder"``) at ``precision`` (the decoder is float32 only)."""
        if precision not in PRECISIONS:
            raise ExportError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        if part == "encoder" and precision == "int8":
            if self.encoder_int8 is None:
                raise ExportError("this export has no int8 encoder; export again with --int8")
            return self.encoder_int8
        return self.encoder if part == "encoder" else self.decoder

    def write(self, folder: Path) -> Path:
        """Write ``folder/manifest.json``."""
        path = folder / MANIFEST
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path


def _graph(raw: Any, where: str) -> GraphFile:
    if not isinstance(raw, dict):
        raise ExportError(f"{where}: expected an object with file, bytes, sha256, inputs, outputs")
    try:
        g = GraphFile(
            file=str(raw["file"]),
            bytes=int(raw["bytes"]),
            sha256=str(raw["sha256"]),
            inputs={str(k): [int(d) for d in v] for k, v in dict(raw["inputs"]).items()},
            outputs={str(k): [int(d) for d in v] for k, v in dict(raw["outputs"]).items()},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"{where}: malformed entry ({type(exc).__name__}: {exc})") from None
    if Path(g.file).name != g.file:
        raise ExportError(f"{where}: file {g.file!r} must be a plain name inside the export folder")
    return g


def read_manifest(folder: str | os.PathLike[str], *, verify_files: bool = True) -> Manifest:
    """The manifest of an export folder, checked; with ``verify_files`` each graph file's size and sha256 too.

    Raises:
        ExportError: no folder or manifest, a manifest that is not this format or is inconsistent, a graph file
            missing or not the one the manifest names.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ExportError(
            f"{folder} is not an export folder; write one with: lesionsam export CHECKPOINT --out {folder}"
        )
    if not path.is_file():
        raise ExportError(f"{folder} has no {MANIFEST}; it is not a folder written by lesionsam export")
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path} is not valid JSON ({exc}); export again") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise ExportError(f"{path}: format {got!r} is not {FORMAT!r}; export again with this lesionsam")
    try:
        m = Manifest(
            method=str(raw["method"]),
            checkpoint=str(raw["checkpoint"]),
            checkpoint_sha256=str(raw["checkpoint_sha256"]),
            crop_size=int(raw["crop_size"]),
            low_res_size=int(raw["low_res_size"]),
            max_points=int(raw["max_points"]),
            preprocess=dict(raw["preprocess"]),
            logit_offset=float(raw["logit_offset"]),
            encoder=_graph(raw["encoder"], f"{path}: encoder"),
            decoder=_graph(raw["decoder"], f"{path}: decoder"),
            lesionsam_version=str(raw["lesionsam_version"]),
            torch_version=str(raw["torch_version"]),
            opset=int(raw["opset"]),
            encoder_int8=_graph(raw["encoder_int8"], f"{path}: encoder_int8") if raw.get("encoder_int8") else None,
            check={str(k): float(v) for k, v in dict(raw.get("check") or {}).items()},
            target_label=int(raw["target_label"]) if raw.get("target_label") is not None else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ExportError):
            raise
        raise ExportError(f"{path}: missing or malformed field ({type(exc).__name__}: {exc}); export again") from None
    _check_consistent(m, path)
    if verify_files:
        for graph in (m.encoder, m.decoder, m.encoder_int8):
            if graph is not None:
                verify_graph_file(folder, graph)
    return m


def _check_consistent(m: Manifest, path: Path) -> None:
    """The shapes the manifest states agree with each other (crop, low-res side, clicks)."""
    s, low, p = m.crop_size, m.low_res_size, m.max_points
    if s < 1 or low < 1 or p < 1:
        raise ExportError(f"{path}: crop_size, low_res_size and max_points must be positive, got {s}, {low}, {p}")
    want = {
        "encoder image": (m.encoder.inputs.get("image"), [1, None, s, s, s]),
        "decoder points": (m.decoder.inputs.get("points"), [1, p, 3]),
        "decoder mask_input": (m.decoder.inputs.get("mask_input"), [1, 1, low, low, low]),
        "decoder logits": (m.decoder.outputs.get("logits"), [1, 1, s, s, s]),
        "decoder low_res_logits": (m.decoder.outputs.get("low_res_logits"), [1, 1, low, low, low]),
    }
    for name, (got, shape) in want.items():
        if (
            got is None
            or len(got) != len(shape)
            or any(w is not None and g != w for g, w in zip(got, shape, strict=True))
        ):
            raise ExportError(f"{path}: {name} has shape {got}, expected {shape} (crop {s}, {p} clicks); export again")


def verify_graph_file(folder: Path, graph: GraphFile) -> Path:
    """``folder / graph.file``, checked to be the file the manifest names (size, then sha256)."""
    path = folder / graph.file
    if not path.is_file():
        raise ExportError(f"{path} is missing; the export folder is incomplete, export again")
    size = path.stat().st_size
    if size != graph.bytes or file_sha256(path) != graph.sha256:
        raise ExportError(
            f"{path} is not the graph the manifest names (size {size} vs {graph.bytes} bytes or sha256 differs); "
            "it was changed or replaced, export again"
        )
    return path
