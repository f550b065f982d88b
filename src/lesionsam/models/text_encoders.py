"""Text encoders loaded from a local directory (a Hugging Face CLIP text model, an open_clip checkpoint) and
:func:`build_text_encoder`, which picks one from a spec (``"builtin"`` or a directory). Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

# ---------------------------------------------------------------------------------------------------------------
# Hugging Face CLIP
# ---------------------------------------------------------------------------------------------------------------
from lesionsam.models.text import BuiltinTextEncoder, TextEncoder

_LOCAL_MODEL_HINT = (
    "save a CLIP text model with model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR) on a machine with "
    "internet, then point model.options.text_encoder at DIR (or use 'builtin' for the small built-in encoder)"
)
_TRANSFORMERS_MISSING = "transformers is not installed: pip install 'lesionsam[text]'"


def _check_model_dir(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"text encoder directory {str(path)!r} does not exist. To provide one: {_LOCAL_MODEL_HINT}"
        )
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"text encoder directory {str(path)!r} has no config.json, so it is not a saved Hugging Face model. "
            f"To provide one: {_LOCAL_MODEL_HINT}"
        )
    return path


class HFClipTextEncoder(TextEncoder):
    """A Hugging Face CLIP text model (``CLIPTextModel`` + its tokenizer) loaded from a local directory.

    The directory is what ``model.save_pretrained(DIR)`` and ``tokenizer.save_pretrained(DIR)`` write (a full
    ``CLIPModel`` directory also works: its text tower is loaded). Loading uses ``local_files_only=True``; nothing
    is downloaded. Frozen by default (``requires_grad_(False)``, eval mode).

    ``tokens`` = ``last_hidden_state`` (B, T, D) with D = ``config.hidden_size``; ``mask`` from the tokenizer's
    ``attention_mask`` (BOS/EOS count as real tokens); ``pooled`` = masked mean of the tokens (``pooling="mean"``,
    default) or the model's ``pooler_output``, the EOS token's state (``pooling="pooler"``).

    Args:
        path: local directory with ``config.json``, the weights and the tokenizer files.
        pooling: ``"mean"`` or ``"pooler"``.
        freeze: freeze the weights (default True).
        max_length: most tokens per text (capped at the model's ``max_position_embeddings``).
        cache: see :class:`TextEncoder`.

    Raises:
        ImportError: ``transformers`` is not installed.
        FileNotFoundError: the directory is missing or holds no ``config.json``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        pooling: str = "mean",
        freeze: bool = True,
        max_length: int = 77,
        cache: bool = True,
    ) -> None:
        if pooling not in ("mean", "pooler"):
            raise ValueError(f"pooling must be 'mean' or 'pooler', got {pooling!r}")
        path = _check_model_dir(path)
        try:
            from transformers import AutoTokenizer, CLIPTextModel
        except ImportError as err:
            raise ImportError(_TRANSFORMERS_MISSING) from err
        model = CLIPTextModel.from_pretrained(str(path), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        super().__init__(dim=int(model.config.hidden_size), cache=cache)
        self.path = str(path)
        self.pooling = pooling
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = min(int(max_length), int(model.config.max_position_embeddings))
        if freeze:
            self.requires_grad_(False)
            self.eval()

    def _encode(self, texts: list[str]) -> tuple[Tensor, Tensor, Tensor | None]:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        device = next(self.model.parameters()).device
        input_ids = batch["input_ids"].to(device)
        attention_mask = batch["attention_mask"].to(device)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        pooled = out.pooler_output if self.pooling == "pooler" else None
        return out.last_hidden_state, attention_mask.bool(), pooled


# ---------------------------------------------------------------------------------------------------------------
# open_clip
# ---------------------------------------------------------------------------------------------------------------

_OPEN_CLIP_FILES = ("open_clip_config.json", "open_clip_pytorch_model.bin", "open_clip_model.safetensors")


def _open_clip_available() -> bool:
    try:
        import open_clip  # noqa: F401
    except ImportError:
        return False
    return True


class OpenClipTextEncoder(TextEncoder):
    """open_clip text tower: **not available in this installation**.

    ``open_clip`` is not a dependency of lesionsam (it pulls torchvision and, on most machines, a CUDA build of
    torch). Constructing this class raises ``ImportError`` when ``open_clip`` is missing, and
    ``NotImplementedError`` when it is present: per-token features from open_clip's text tower are not wired up.
    Convert the checkpoint to a Hugging Face ``CLIPTextModel`` directory and use :class:`HFClipTextEncoder`.
    """

    def __init__(self, path: str | Path, **kwargs: object) -> None:
        if not _open_clip_available():
            raise ImportError(
                f"{str(path)!r} looks like an open_clip checkpoint, but open_clip is not installed, and lesionsam "
                "does not depend on it (it pulls torchvision/CUDA). Convert the checkpoint to a Hugging Face CLIP "
                f"text model directory instead: {_LOCAL_MODEL_HINT}"
            )
        raise NotImplementedError(
            "open_clip text encoders are not supported in this version of lesionsam; convert the checkpoint to a "
            f"Hugging Face CLIP text model directory: {_LOCAL_MODEL_HINT}"
        )


# ---------------------------------------------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------------------------------------------


def build_text_encoder(spec: str, **kwargs: object) -> TextEncoder:
    """Build a text encoder from a spec.

    Args:
        spec: ``"builtin"`` -> :class:`BuiltinTextEncoder`; a local directory -> :class:`HFClipTextEncoder`
            (or :class:`OpenClipTextEncoder` when the directory holds ``open_clip_config.json`` /
            ``open_clip_pytorch_model.bin`` / ``open_clip_model.safetensors`` and no ``config.json``).
        **kwargs: passed to the encoder's constructor.

    Raises:
        TypeError: ``spec`` is not a string or path.
        FileNotFoundError: ``spec`` is neither ``"builtin"`` nor an existing directory, or the directory holds no
            model.
        ImportError: the optional dependency for that kind of directory is missing.
    """
    if not isinstance(spec, (str, Path)):
        raise TypeError(f"text encoder spec must be 'builtin' or a directory path, got {type(spec).__name__}")
    if isinstance(spec, str) and spec.strip().lower() == "builtin":
        return BuiltinTextEncoder(**kwargs)  # type: ignore[arg-type]
    path = Path(spec).expanduser()
    if path.is_file():
        raise FileNotFoundError(
            f"text encoder spec {str(path)!r} is a file; expected 'builtin' or a directory. To provide one: "
            f"{_LOCAL_MODEL_HINT}"
        )
    if not path.is_dir():
        raise FileNotFoundError(
            f"text encoder spec {str(spec)!r} is neither 'builtin' nor an existing directory. To provide one: "
            f"{_LOCAL_MODEL_HINT}"
        )
    if not (path / "config.json").is_file() and any((path / name).is_file() for name in _OPEN_CLIP_FILES):
        return OpenClipTextEncoder(path, **kwargs)
    return HFClipTextEncoder(path, **kwargs)  # type: ignore[arg-type]
