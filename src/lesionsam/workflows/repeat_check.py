"""``lesionsam ablate --repeat-check METHOD:SEED``: retrain one finished run of an ablation and say whether it
reproduces bit for bit.

The run's recorded config (its ``config.yaml``, checked against the config this call plans for it: the demo's recipe,
or CONFIG with its overrides) is trained again into ``<out>/repeat_check/<method>_seed<seed>/`` (replaced on every
check) by the ablation's own per-run function (:func:`lesionsam.workflows.ablate._train_and_test`), which predicts
and scores the test cases as the ablation did (the click curves aside). Then every weight of ``best.pt`` and
``last.pt`` is compared with ``torch.equal``, and the recorded settings (``provenance.json``) and the test metrics
with the run's (:func:`lesionsam.evaluation.provenance.repeat_check_result`). The verdict goes to
``<out>/repeat_check/<method>_seed<seed>_<device>_threads<N>.json``, where the next ablation report finds it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from lesionsam.config import RunConfig, load_run_config
from lesionsam.data.splits import read_splits
from lesionsam.evaluation.provenance import repeat_check_lines, repeat_check_result
from lesionsam.inference.zoom import parse_zoom
from lesionsam.training.data import load_cases
from lesionsam.training.trainer import Callback
from lesionsam.utils.console import say
from lesionsam.utils.dataclass_io import atomic_write_bytes, from_dict, load_yaml, to_dict
from lesionsam.workflows.ablate import (
    REPEAT_FOLDER,
    Run,
    _train_and_test,
    _view_channel,
    link_test_cases,
    run_config,
)
from lesionsam.workflows.demo import DemoSettings, prepare_data, pretrain, transfer_config

__all__ = ["repeat_check"]


def _recorded(run_dir: Path) -> RunConfig:
    """The run's ``config.yaml`` as it was written (paths as the trainer had them: not re-resolved against the run
    folder, as :func:`load_run_config` does for a config a user wrote)."""
    path = run_dir / "config.yaml"
    if not (run_dir / "test_metrics" / "metrics.json").is_file() or not path.is_file():
        raise ValueError(
            f"{run_dir} is not a finished run of this ablation (no config.yaml or test_metrics/metrics.json): "
            "finish the ablation first, or check --out and METHOD:SEED"
        )
    return from_dict(RunConfig, load_yaml(path))


def _check_same(recorded: RunConfig, planned: RunConfig, run_dir: Path, hint: str) -> None:
    if recorded != planned:
        a, b = to_dict(recorded), to_dict(planned)
        keys = [f"{sec}.{k}" for sec in a if isinstance(a[sec], dict) for k in a[sec] if a[sec][k] != b[sec].get(k)]
        raise ValueError(f"{run_dir} was made with another config than this call plans ({', '.join(keys)}): {hint}")


def repeat_check(
    out: str | os.PathLike[str],
    run: Run,
    *,
    config: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    quick: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
) -> Path:
    """Retrain run ``run`` = (method, seed) of the ablation in ``out`` (see the module docstring).

    Args:
        out: the ablation's ``--out``.
        run: (method, seed) of a finished run.
        config, overrides: the config ablation's CONFIG and ``key=value`` overrides; None for the demo's ablation.
        quick: the demo's ablation was made with ``--quick``.
        progress, callbacks: as for the ablation's trainer.

    Returns:
        The verdict's JSON path.

    Raises:
        ValueError: no finished run of that name, a run made with another config than this call plans, or the demo
            run's initial weights gone and made elsewhere now.
    """
    method, seed = run
    root = Path(out)
    name = f"{method}_seed{seed}"
    run_dir = root / name
    recorded = _recorded(run_dir)
    if config is not None:
        base = load_run_config(config, overrides)
        splits_path = Path(base.data.splits) if base.data.splits else (root / "splits.json").resolve()
        planned = run_config(base, method, seed, str(splits_path))
        _check_same(recorded, planned, run_dir, "give the CONFIG and key=value overrides the ablation was made with")
        test_ids = set(read_splits(splits_path)["test"])
        test_cases = [c for c in load_cases(base) if c.case_id in test_ids]
        test_root = link_test_cases(test_cases, root / "test_data", base.data.channel)
        channel, device = _view_channel(test_cases, base.data.channel), None
        zoom = None
    else:
        s = DemoSettings.quick() if quick else DemoSettings.full()
        train_root, test_root = root / "data" / "train", root / "data" / "test"
        planned = transfer_config(method, train_root, recorded.model.checkpoint or "", s, seed=seed)
        _check_same(recorded, planned, run_dir, "give the --out and --quick the ablation was made with")
        if not (train_root / "dataset.json").is_file() or not (test_root / "dataset.json").is_file():
            prepare_data(root, s, seed=0)  # as the ablation wrote them
        weights = Path(recorded.model.checkpoint or "")
        if not weights.is_file():  # the cache was emptied: pretrain again, as the ablation would
            made = pretrain(train_root, s, seed=0, progress=progress)
            if made.resolve() != weights.resolve():
                raise ValueError(
                    f"the run's initial weights {weights} are gone and this machine pretrains them into {made}: "
                    "set LESIONSAM_CACHE to the cache the ablation used"
                )
        channel, device = None, "cpu"  # the demo's ablation scores its runs on the CPU
        zoom = parse_zoom(s.zoom)  # as the ablation predicts its test cases
    repeat_dir = root / REPEAT_FOLDER / name
    if repeat_dir.exists():
        say(f"  replacing the previous repeat check in {repeat_dir}")
        shutil.rmtree(repeat_dir)
    say(f"lesionsam ablate --repeat-check {method}:{seed}: retraining {run_dir} from its recorded config")
    _train_and_test(
        recorded,
        repeat_dir,
        test_root,
        channel,
        progress=progress,
        callbacks=callbacks,
        clicks=0,
        device=device,
        zoom=zoom,
    )
    result = repeat_check_result(method, seed, run_dir, repeat_dir)
    now = result["now"]
    path = root / REPEAT_FOLDER / f"{name}_{now['device']}_threads{now['threads']}.json"
    atomic_write_bytes(path, (json.dumps(result, indent=2, allow_nan=False) + "\n").encode())
    for line in repeat_check_lines(result):
        say(line)
    say(f"repeat check: {path}")
    return path
