"""Deployment without PyTorch: SAM-Med3D's image encoder and prompt encoder + mask decoder as ONNX files.

``lesionsam export CHECKPOINT --out DIR`` writes ``encoder.onnx`` (one static crop), ``decoder.onnx`` (a fixed
maximum of clicks padded with label -1, the previous low-res logits as input), optionally ``encoder.int8.onnx``
(dynamic int8 quantisation), and ``manifest.json`` (:mod:`lesionsam.export.manifest`). The graphs themselves are
defined in :mod:`lesionsam.models.backbone.deploy`; ONNX Runtime runs them inside the one engine through
:class:`lesionsam.inference.onnx_model.OnnxModel`.

This package imports models (and utils) only; ``onnx``, ``onnxscript`` and ``onnxruntime`` are the optional extra
``lesionsam[onnx]``, imported when used.
"""

from lesionsam.export.manifest import MANIFEST, ExportError, Manifest, read_manifest

__all__ = ["MANIFEST", "ExportError", "Manifest", "read_manifest"]
