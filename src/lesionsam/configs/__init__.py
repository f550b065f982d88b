"""Packaged run-config presets (YAML files beside this module)."""

from __future__ import annotations

from pathlib import Path

from lesionsam.utils.options import look_up_option

HERE = Path(__file__).resolve().parent


def preset_names() -> list[str]:
    """Names of the packaged presets (file names without ``.yaml``)."""
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def resolve_config(name_or_path: str) -> Path:
    """A YAML path as given, or the packaged preset of that name (``ValueError`` listing them otherwise)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.suffix in (".yaml", ".yml"):
        raise FileNotFoundError(f"config file not found: {path} (packaged presets: {', '.join(preset_names())})")
    return HERE / f"{look_up_option(name_or_path, preset_names(), what='config preset')}.yaml"


def packaged_sweep(stage: str) -> Path | None:
    """The ``sweep.json`` of ``lesionsam sweep --stage STAGE`` that chose the packaged defaults (copied into
    ``configs/sweeps/<stage>.json``), or None when the package has none."""
    path = HERE / "sweeps" / f"{stage}.json"
    return path if path.is_file() else None
