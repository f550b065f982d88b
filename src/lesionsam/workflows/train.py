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
    if isinstance(config, RunConfig):
        if overrides:
            raise ValueError("overrides apply to a YAML config, not to a RunConfig object")
        cfg = config
    else:
        cfg = load_run_config(config, overrides)
    run_dir = Path(out) if out is not None else Path("runs") / cfg.name
    return Trainer(cfg, run_dir, progress=progress).fit(resume=resume)
