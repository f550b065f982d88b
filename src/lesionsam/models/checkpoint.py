"""Loading official SAM-Med3D weights strictly, and writing/reading lesionsam's own checkpoints.

Every file is read with ``torch.load(..., weights_only=True)``: a file that needs arbitrary unpickling
(a pickled model object, a custom class) is refused with an explanation, never executed.
"""

from __future__ import annotations

import logging
import os
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lesionsam.models.backbone.config import BACKBONE_PREFIXES, PRESETS, Sam3DConfig
from lesionsam.models.config import ModelConfig
from lesionsam.utils.dataclass_io import from_dict, make_temp_beside, save_yaml, to_dict
from lesionsam.utils.filetype import not_a_checkpoint

log = logging.getLogger(__name__)

STRIP_PREFIXES = ("module.", "_orig_mod.")
FORMAT = "lesionsam-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message says what to do."""


# ---------------------------------------------------------------------------------------------- reading
def read_weights_file(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with actionable errors.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: an empty file, a file that is no checkpoint at all (text, Git LFS pointer, image: the
            message says which), a truncated/corrupt one, or one that needs arbitrary unpickling.
    """
    check_checkpoint_file(path)
    p = Path(path)
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Weights only load failed" in str(exc):
            raise CheckpointError(
                f"{p} holds Python objects other than tensors and plain containers (e.g. a pickled model or a "
                "custom class). lesionsam loads weights with weights_only=True and will not run arbitrary "
                "unpickling; re-save it where it was made as torch.save({'model_state_dict': "
                "model.state_dict()}, path)"
            ) from None
        raise CheckpointError(f"{p} is not a readable PyTorch checkpoint (corrupt or truncated?): {exc}") from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError) as exc:
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise CheckpointError(
            f"{p} is not a readable PyTorch checkpoint (truncated or corrupt download?): {first}"
        ) from None


def check_checkpoint_file(path: str | os.PathLike[str]) -> None:
    """Cheap checks before loading (first bytes only): the file exists and could be a PyTorch checkpoint.

    Raises:
        FileNotFoundError: no such file (or a folder).
        CheckpointError: an empty file, a text file, a Git LFS pointer, an image...: the message says what it is.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}" + (" (it is a folder)" if p.is_dir() else ""))
    what = not_a_checkpoint(p)
    if what is not None:
        raise CheckpointError(f"checkpoint {p} {what}")


def extract_state_dict(obj: Any, *, source: str = "checkpoint") -> dict[str, Tensor]:
    """The model state dict inside a loaded checkpoint, with ``module.``/``_orig_mod.`` prefixes removed.

    Accepts an official SAM-Med3D file (``{"model_state_dict": ...}``), a lesionsam checkpoint
    (``{"format": ..., "state_dict": ...}``), a ``{"state_dict": ...}`` file, or a bare state dict.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    for key in ("model_state_dict", "state_dict", "model"):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(
            f"{source}: no tensors found; top-level keys are {sorted(map(str, obj))[:8]} "
            "(expected 'model_state_dict' or a bare state dict)"
        )
    out: dict[str, Tensor] = {}
    for key, value in tensors.items():
        changed = True
        while changed:
            changed = False
            for prefix in STRIP_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------------- fit diagnosis
def infer_sam3d_config(state_dict: Mapping[str, Tensor]) -> Sam3DConfig | None:
    """Best-effort sizes of a SAM-Med3D backbone from its state dict (None if it is not one)."""
    try:
        pw = state_dict["image_encoder.patch_embed.proj.weight"]
        pos = state_dict["image_encoder.pos_embed"]
        if pw.ndim != 5 or pos.ndim != 5:
            return None
        embed, in_chans, patch = pw.shape[0], pw.shape[1], pw.shape[2]
        grid = pos.shape[1]
        depth = 1 + max(int(k.split(".")[2]) for k in state_dict if k.startswith("image_encoder.blocks."))
        head_dim = state_dict["image_encoder.blocks.0.attn.rel_pos_d"].shape[1]
        lengths = [state_dict[f"image_encoder.blocks.{i}.attn.rel_pos_d"].shape[0] for i in range(depth)]
        glob = tuple(i for i, n in enumerate(lengths) if n == 2 * grid - 1)
        win = [n for n in lengths if n != 2 * grid - 1]
        window = (win[0] + 1) // 2 if win else PRESETS["sam_med3d_vit_b"].window_size
        ped = state_dict["image_encoder.neck.0.weight"].shape[0]
        mic = state_dict["prompt_encoder.mask_downscaling.3.weight"].shape[0]
        dec_depth = 1 + max(
            int(k.split(".")[3]) for k in state_dict if k.startswith("mask_decoder.transformer.layers.")
        )
        internal = state_dict["mask_decoder.transformer.final_attn_token_to_image.q_proj.weight"].shape[0]
        iou_layers = 1 + max(
            int(k.split(".")[3]) for k in state_dict if k.startswith("mask_decoder.iou_prediction_head.layers.")
        )
        return Sam3DConfig(
            img_size=grid * patch,
            patch_size=patch,
            in_chans=in_chans,
            encoder_embed_dim=embed,
            encoder_depth=depth,
            encoder_num_heads=embed // head_dim,
            encoder_global_attn_indexes=glob,
            window_size=window,
            prompt_embed_dim=ped,
            mask_in_chans=mic,
            decoder_depth=dec_depth,
            decoder_mlp_dim=state_dict["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
            attention_downsample_rate=max(1, ped // internal),
            num_multimask_outputs=state_dict["mask_decoder.mask_tokens.weight"].shape[0] - 1,
            iou_head_depth=iou_layers,
            iou_head_hidden_dim=state_dict["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
        )
    except (KeyError, IndexError, ValueError):
        return None


def describe_fit(state_dict: Mapping[str, Tensor]) -> str:
    """One phrase saying which model a state dict fits: a preset name, other sizes, or nothing known."""
    keys = list(state_dict)
    if not any(k.startswith(BACKBONE_PREFIXES) for k in keys):
        return f"not a SAM-Med3D model (no image_encoder/prompt_encoder/mask_decoder keys; first key {keys[0]!r})"
    pw = state_dict.get("image_encoder.patch_embed.proj.weight")
    if pw is not None and pw.ndim == 4:
        return "a 2D Segment Anything model (4-D patch embedding), not SAM-Med3D"
    cfg = infer_sam3d_config(state_dict)
    if cfg is None:
        return "an incomplete or modified SAM-Med3D layout (its sizes could not be read)"
    for name, preset in PRESETS.items():
        if cfg == preset:
            return f"SAM-Med3D preset {name!r} (model.preset={name})"
    diffs = {k: v for k, v in to_dict(cfg).items() if to_dict(PRESETS["sam_med3d_vit_b"])[k] != v}
    return f"a SAM-Med3D layout with sizes differing from 'sam_med3d_vit_b' by {diffs} (set them in model.backbone)"


# ---------------------------------------------------------------------------------------------- official weights
@dataclass
class LoadReport:
    """What :func:`load_sam_med3d_weights` did."""

    loaded: int
    resized: list[str] = field(default_factory=list)
    new_keys: list[str] = field(default_factory=list)


def _resize_positions(name: str, value: Tensor, target: torch.Size) -> Tensor | None:
    """Interpolate ``pos_embed`` (trilinear) or a global block's ``rel_pos_*`` (linear); None if not resizable."""
    if name == "image_encoder.pos_embed" and value.ndim == 5 and value.shape[-1] == target[-1]:
        grid = tuple(target[1:4])
        x = F.interpolate(value.permute(0, 4, 1, 2, 3).float(), size=grid, mode="trilinear", align_corners=False)
        return x.permute(0, 2, 3, 4, 1).to(value.dtype)
    if ".attn.rel_pos_" in name and value.ndim == 2 and value.shape[1] == target[1]:
        x = F.interpolate(value.t().unsqueeze(0).float(), size=target[0], mode="linear", align_corners=False)
        return x.squeeze(0).t().to(value.dtype)
    return None


def load_sam_med3d_weights(
    model: nn.Module, path: str | os.PathLike[str] | Mapping[str, Tensor], *, allow_resize: bool = True
) -> LoadReport:
    """Load an official SAM-Med3D (or SAM-Med3D-turbo) checkpoint into ``model`` strictly.

    ``model`` holds the backbone as ``image_encoder``, ``prompt_encoder`` and ``mask_decoder`` (plain
    SAM-Med3D, or a method that adds parts under its own prefixes: those keep their initialisation and
    are listed in the report). Every backbone key must be in the file and every key of the file must
    be in the model, with equal shapes — except ``pos_embed`` and the global blocks' relative-position
    tables, which are interpolated to the model's crop size (e.g. 160³) with a warning when
    ``allow_resize``.

    Args:
        model: the model to fill.
        path: a file (``{"model_state_dict": ...}`` or a bare state dict; ``module.``/``_orig_mod.``
            prefixes are stripped) or an already-loaded state dict.
        allow_resize: interpolate position weights to a different crop size instead of failing.

    Returns:
        :class:`LoadReport`.

    Raises:
        FileNotFoundError, CheckpointError: unreadable file, missing/unexpected keys (the message names
        the first ones and which model the file fits), or a shape mismatch.
    """
    source = str(path) if not isinstance(path, Mapping) else "state dict"
    raw = read_weights_file(path) if not isinstance(path, Mapping) else path
    file_sd = extract_state_dict(raw, source=source)
    model_sd = model.state_dict()
    backbone = [k for k in model_sd if k.startswith(BACKBONE_PREFIXES)]
    missing = [k for k in backbone if k not in file_sd]
    unexpected = [k for k in file_sd if k not in model_sd]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (first: {unexpected[0]})")
        raise CheckpointError(
            f"{source} does not fit this model: {' and '.join(parts)}. The file looks like {describe_fit(file_sd)}."
        )
    resized: list[str] = []
    merged = dict(model_sd)
    for key, value in file_sd.items():
        target = model_sd[key].shape
        if value.shape != target:
            new = _resize_positions(key, value, target) if allow_resize else None
            if new is None:
                raise CheckpointError(
                    f"{source}: {key} has shape {tuple(value.shape)} in the file but {tuple(target)} in the model. "
                    f"The file looks like {describe_fit(file_sd)}."
                )
            resized.append(key)
            value = new
        merged[key] = value
    if resized:
        warnings.warn(
            f"{source}: interpolated {len(resized)} position weight(s) ({resized[0]}, ...) to the model's crop "
            "size; outputs will differ from the official model at its native size",
            stacklevel=2,
        )
    model.load_state_dict(merged, strict=True)
    new_keys = [k for k in model_sd if k not in file_sd]
    if new_keys:
        log.info("%s: %d new parameter(s) keep their initialisation (first: %s)", source, len(new_keys), new_keys[0])
    return LoadReport(loaded=len(file_sd), resized=resized, new_keys=new_keys)


# ---------------------------------------------------------------------------------------------- own checkpoints
def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    config: Any,
    method: str,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    epoch: int | None = None,
    metrics: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
    write_config_yaml: bool = True,
) -> Path:
    """Write a self-contained lesionsam checkpoint atomically (temp file + rename).

    The file holds the format and its version, the method name, the run config (plain dict), the model
    state dict and, when given, the optimiser and scheduler states, epoch, metrics and ``extra`` (plain
    values: the trainer's history and counters); all loadable with ``weights_only=True``. The config is also
    written as ``config.yaml`` beside it.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": method,
        "config": to_dict(config),
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": epoch,
        "metrics": {str(k): float(v) for k, v in (metrics or {}).items()},
        "extra": dict(extra or {}),
    }
    tmp = make_temp_beside(p)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if write_config_yaml:
        save_yaml(payload["config"], p.parent / "config.yaml")
    return p


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a lesionsam checkpoint (``weights_only=True``) and check its format and version."""
    return as_checkpoint(read_weights_file(path), path)


def as_checkpoint(obj: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    """``obj``, a file's content already read by :func:`read_weights_file`, checked as a lesionsam checkpoint (format
    tag and version), so that a command reads a checkpoint file once.

    Raises:
        CheckpointError: no format tag (with what the weights look like) or a newer format version.
    """
    if not isinstance(obj, Mapping) or obj.get("format") != FORMAT:
        hint = ""
        if isinstance(obj, Mapping):
            sd = extract_state_dict(obj, source=str(path))
            hint = f" It looks like {describe_fit(sd)}: load it with load_sam_med3d_weights or --preset."
        raise CheckpointError(f"{path} is not a lesionsam checkpoint (no format tag).{hint}")
    version = obj.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}; this lesionsam reads up to {FORMAT_VERSION}: upgrade"
        )
    return dict(obj)


def model_config_of(checkpoint: Mapping[str, Any]) -> ModelConfig:
    """The :class:`ModelConfig` stored in a lesionsam checkpoint."""
    cfg = checkpoint.get("config") or {}
    section = cfg.get("model", cfg) if isinstance(cfg, Mapping) else {}
    return from_dict(ModelConfig, {**section, "checkpoint": None}, where="model")
