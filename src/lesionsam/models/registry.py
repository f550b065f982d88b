"""One registry of methods: ``build_model(config)`` builds any of them from a :class:`ModelConfig`.

The registry imports no method: each method module registers itself with :func:`register_method` when it is
imported, and the package ``lesionsam.models`` imports the built-in ones (``lesionsam.models.methods``), so whatever
reaches this module through the package (``from lesionsam.models.registry import build_model``, the run config) finds
every built-in method registered.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from lesionsam.models.checkpoint import (
    CheckpointError,
    as_checkpoint,
    load_checkpoint,
    load_sam_med3d_weights,
    model_config_of,
)
from lesionsam.models.config import ModelConfig
from lesionsam.models.interface import SegModel, TrainOptions
from lesionsam.utils.dataclass_io import from_dict
from lesionsam.utils.options import look_up_option

Builder = Callable[[ModelConfig, Any], SegModel]


#: How a method trains (the trainer's step for it): ``"interactive"`` SAM-Med3D's click iterations, ``"text"`` the
#: same with a text prompt for each crop's class first (text-referred), ``"automatic"`` one prompt-free forward pass
#: on multi-class crops.
TRAINING_STEPS = ("interactive", "text", "automatic")


@dataclass(frozen=True)
class MethodSpec:
    """A registered method, as the trainer and predictor see it.

    Attributes:
        name: the registry name (``model.method``).
        builder: ``builder(config, options) -> SegModel``.
        options: the dataclass of its model options (``model.options``), or None.
        description: one line for ``lesionsam methods`` and the docs.
        loss: its default training loss, a name known to ``lesionsam.losses.build_loss``.
        loss_options: the options of that loss it uses by default (``train.loss_options`` override them).
        training: its training step, one of :data:`TRAINING_STEPS`.
        train_options: the dataclass of its own training options (a :class:`~lesionsam.models.interface.TrainOptions`
            subclass, the run config's ``train.options``), or None.
        full_res: the builder gives the model the full-resolution decoder path when ``model.full_res_channels`` is
            set (:class:`~lesionsam.models.backbone.full_res.FullResPath`); False: ``build_model`` refuses the option.
        full_res_note: why a method without the path has none, in one line (for that refusal).
        preset_of: set for a *preset*: another method's model (same builder, options, training step and training
            options) with another default loss, a name for a loss choice (``sgp_dice`` = ``sgp_sam`` with
            ``train.loss=dice``).
    """

    name: str
    builder: Builder
    options: type | None
    description: str
    loss: str = "dice_ce"
    loss_options: Mapping[str, Any] = field(default_factory=dict)
    training: str = "interactive"
    train_options: type[TrainOptions] | None = None
    full_res: bool = False
    full_res_note: str = ""
    preset_of: str | None = None


_METHODS: dict[str, MethodSpec] = {}


def register_method(
    name: str,
    *,
    options: type | None = None,
    description: str = "",
    loss: str = "dice_ce",
    loss_options: Mapping[str, Any] | None = None,
    training: str = "interactive",
    train_options: type[TrainOptions] | None = None,
    full_res: bool = False,
    full_res_note: str = "",
) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(config, options) -> SegModel`` under ``name``, with what it declares (see
    :class:`MethodSpec`: its model options, default loss, training step and training options, and whether it carries
    the full-resolution decoder path, or why not).

    Example:
        >>> @register_method("my_method", description="SAM-Med3D with a twist")
        ... def build(config, options):
        ...     ...
    """

    def deco(builder: Builder) -> Builder:
        if name in _METHODS and _METHODS[name].builder is not builder:
            raise ValueError(f"method {name!r} is registered twice")
        look_up_option(training, TRAINING_STEPS, what="training step")
        if train_options is not None and not issubclass(train_options, TrainOptions):
            raise TypeError(f"method {name!r}: train_options must subclass TrainOptions, got {train_options!r}")
        _METHODS[name] = MethodSpec(
            name,
            builder,
            options,
            description,
            loss,
            dict(loss_options or {}),
            training,
            train_options,
            full_res=full_res,
            full_res_note=full_res_note,
        )
        return builder

    return deco


def register_preset(
    name: str, *, of: str, loss: str, loss_options: Mapping[str, Any] | None = None, description: str = ""
) -> None:
    """Register ``name`` as method ``of`` (same model, options and builder) trained with another default loss: a
    loss choice kept under a name (the ablations' ``finetune_zoom``, ``sgp_dice``). ``model.method=of
    train.loss=LOSS`` trains the same model with the same loss."""
    base = _METHODS.get(of)
    if base is None:
        raise ValueError(f"preset {name!r}: method {of!r} is not registered (register it first)")
    if name in _METHODS and _METHODS[name].preset_of != of:
        raise ValueError(f"method {name!r} is registered twice")
    _METHODS[name] = MethodSpec(
        name,
        base.builder,
        base.options,
        description,
        loss,
        dict(loss_options or {}),
        base.training,
        base.train_options,
        full_res=base.full_res,
        full_res_note=base.full_res_note,
        preset_of=of,
    )


def known_methods() -> dict[str, str]:
    """Registered method names and their one-line descriptions."""
    return {name: spec.description for name, spec in sorted(_METHODS.items())}


def method_spec(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of ``name`` (``ValueError`` listing the known methods otherwise)."""
    return _METHODS[look_up_option(name, sorted(_METHODS), what="method")]


def methods_training_with(step: str) -> list[str]:
    """The registered methods (presets aside) that declare training step ``step`` (for messages that point a user
    to the methods that fit)."""
    return [name for name, spec in sorted(_METHODS.items()) if spec.training == step and spec.preset_of is None]


def train_option_owners() -> dict[str, list[str]]:
    """Every registered training option name and the methods that declare it (for messages about a key that belongs
    to another method)."""
    owners: dict[str, list[str]] = {}
    for name, spec in sorted(_METHODS.items()):
        for f in fields(spec.train_options) if spec.train_options is not None else ():
            owners.setdefault(f.name, []).append(name)
    return owners


def build_model(config: ModelConfig) -> SegModel:
    """Build the configured method; load ``config.checkpoint`` (official SAM-Med3D weights) if given.

    Raises:
        ValueError: unknown method (the message lists the known ones), or bad options.
    """
    spec = method_spec(config.method)
    if spec.options is None:
        if config.options:
            raise ValueError(f"method {config.method!r} takes no options, got {sorted(config.options)}")
        options = None
    else:
        options = from_dict(spec.options, config.options, where="model.options")
    if config.full_res_channels is not None and not spec.full_res:
        why = spec.full_res_note or "it does not declare one"
        raise ValueError(
            f"method {config.method!r} has no full-resolution decoder path ({why}); remove model.full_res_channels"
        )
    model = spec.builder(config, options)
    model.method_name = spec.name
    if config.checkpoint:
        load_sam_med3d_weights(model, config.checkpoint)
    return model


def load_model(path: str | os.PathLike[str], *, content: Any = None) -> tuple[SegModel, dict[str, Any]]:
    """Rebuild the model stored in a lesionsam checkpoint and load its weights strictly.

    Args:
        path: the checkpoint file (named in errors).
        content: the file's content when the caller has read it already (:func:`read_weights_file`), so that the
            file is read once; None reads it.

    Returns:
        (model in eval mode, the checkpoint dict).
    """
    ckpt = load_checkpoint(path) if content is None else as_checkpoint(content, path)
    model = build_model(model_config_of(ckpt))
    result = model.load_state_dict(ckpt["state_dict"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: weights do not fit the stored config: missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )
    return model.eval(), ckpt
