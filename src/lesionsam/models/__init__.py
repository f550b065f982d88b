"""Models: the SAM-Med3D backbone, the methods built on it, one interface and one registry.

``models`` imports nothing from training, inference, data or cli. Importing it (or any module under it) registers
the built-in methods: the package imports ``lesionsam.models.methods``, whose modules register themselves; the
registry imports no method.
"""

from lesionsam.models import methods  # noqa: F401  (registers the built-in methods)
from lesionsam.models.config import ModelConfig
from lesionsam.models.interface import Prompts, SegModel, SegOutput, competing_logits
from lesionsam.models.registry import build_model, known_methods, register_method

__all__ = [
    "ModelConfig",
    "Prompts",
    "SegModel",
    "SegOutput",
    "build_model",
    "competing_logits",
    "known_methods",
    "register_method",
]
