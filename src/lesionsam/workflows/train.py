"""``lesionsam train``: one typed function behind the command."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from lesionsam.config import RunConfig, load_run_config
from lesionsam.training.trainer import Trainer, TrainResult


def train(
    config: str | os.PathLike[str] | RunConfig | None,
    *,
    out: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train the configured method.

    Args:
        config: a run config YAML (or a :class:`RunConfig`; None starts from the defaults).
        out: the run folder (default ``runs/<config name>``).
        overrides: ``key=value`` changes (``train.epochs=5``, ``model.method=sgp_sam``).
        resume: continue from ``<out>/last.pt`` exactly (same config required, except ``train.epochs``).
        progress: progress bars with an ETA.
    """
    source: Path | None = None
    if isinstance(config, RunConfig):
        if overrides:
            raise ValueError("overrides apply to a YAML config, not to a RunConfig object")
        cfg = config
    else:
        cfg = load_run_config(config, overrides)
        source = Path(config) if config is not None else None
    run_dir = Path(out) if out is not None else Path("runs") / cfg.name
    _check_own_config(source, run_dir, cfg, overrides)
    return Trainer(cfg, run_dir, progress=progress, config_source=source).fit(resume=resume)


def _check_own_config(source: Path | None, run_dir: Path, cfg: RunConfig, overrides: Sequence[str]) -> None:
    """The run folder's own ``config.yaml`` given as CONFIG is read, never rewritten: overrides that change it are
    refused, since the file would no longer describe the run (copy it and pass the copy instead)."""
    own = run_dir / "config.yaml"
    if source is None or not own.exists() or not os.path.samefile(source, own):
        return
    if cfg != load_run_config(source):
        raise ValueError(
            f"CONFIG {source} is the run folder's own config.yaml and the overrides {' '.join(overrides)} change it; "
            f"it is never rewritten: copy it (cp {source} new.yaml) and train from the copy"
        )
