"""Typed dataclass configs ↔ plain dicts ↔ YAML, with strict checking and ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import difflib
import os
import tempfile
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

T = TypeVar("T")


def to_dict(obj: Any) -> Any:
    """A dataclass (recursively) as plain dicts, lists and scalars, ready for YAML or a checkpoint. A field with
    ``metadata={"omit_none": True}`` is left out while it is None (reading it back gives its default, None)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is not None or not f.metadata.get("omit_none"):
                out[f.name] = to_dict(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking names and types.

    Unknown keys raise ``ValueError`` with a "did you mean"; wrong types raise ``TypeError`` naming the
    dotted key. Missing keys take the dataclass defaults. A class may define ``from_dict`` hooks by
    having a classmethod ``_from_dict_hook(data) -> data`` that rewrites the mapping first.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise TypeError(f"{where or cls.__name__}: expected a mapping of fields, got {type(data).__name__}")
    hook = getattr(cls, "_from_dict_hook", None)
    if hook is not None:
        data = hook(dict(data))
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ValueError(unknown_key(str(key), names, where))
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def unknown_key(key: str, names: Sequence[str], where: str) -> str:
    """``unknown config key 'train.epoch'; did you mean 'train.epochs'?`` (or the list of known keys)."""
    dotted = lambda k: f"{where}.{k}" if where else k  # noqa: E731
    hint = difflib.get_close_matches(key, list(names), n=1)
    if hint:
        return f"unknown config key {dotted(key)!r}; did you mean {dotted(hint[0])!r}?"
    section = f" of {where!r}" if where else ""
    return f"unknown config key {dotted(key)!r}; the keys{section} are {', '.join(names)}"


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, path)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise TypeError(f"{path}: {value!r} fits none of {tp}: {'; '.join(errors)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where=path)
    if origin in (tuple, list, Sequence) or tp in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise TypeError(f"{path}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise TypeError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML) to a nested dict, in place.

    Example:
        >>> apply_overrides({"model": {"preset": "tiny"}}, ["model.preset=sam_med3d_vit_b", "seed=3"])
        {'model': {'preset': 'sam_med3d_vit_b'}, 'seed': 3}
    """
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value (e.g. model.preset=tiny)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ValueError(f"override {item!r}: {part!r} is a value, not a section")
            node = nxt
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise ValueError(f"override {item!r}: the value is not valid YAML ({problem})") from None
    return data


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping (``FileNotFoundError``/``ValueError`` with the path otherwise)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{p}{_yaml_error(exc)}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{p} is not a text (YAML) file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{p} must hold a mapping of config sections, got {type(data).__name__}")
    return data


def _yaml_error(exc: yaml.YAMLError) -> str:
    """``:3:7: is not valid YAML: mapping values are not allowed here`` (line and column 1-based)."""
    mark = getattr(exc, "problem_mark", None)
    where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{where}: is not valid YAML: {problem}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_temp_beside(path: Path, suffix: str = ".tmp") -> str:
    """A new temp file in ``path``'s folder with ordinary permissions (mkstemp alone gives 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    return tmp


def atomic_write_bytes(path: str | os.PathLike[str], payload: bytes) -> Path:
    """Write ``payload`` to a temp file beside ``path`` and rename it into place."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_beside(p)
    try:
        with open(tmp, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def save_yaml(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write a dataclass or mapping as YAML, atomically."""
    text = yaml.safe_dump(to_dict(obj), sort_keys=False)
    return atomic_write_bytes(path, text.encode())
