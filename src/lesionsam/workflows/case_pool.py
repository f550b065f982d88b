"""Cases of a folder in worker processes: one function of a case, run over every case in order, in this process or
in several (``evaluate-clicks --workers N``).

Each worker gets the predictor once per chunk of cases (pickled between this program's own processes) and
``threads`` torch threads, so that N workers share the cores the one process would have used. A case's result depends
only on the case, the predictor and the thread count (the simulated clicks are seeded per case and lesion), so N
workers give what one process gives at the same number of threads per process; the results come back in the order
of the cases.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lesionsam.inference.predictor import Predictor

#: (case id, image, label map).
Case = tuple[str, Path, Path]
#: What is run per case: ``fn(predictor, case id, image, label map)`` (a module-level function, or a
#: ``functools.partial`` of one, so that it can be sent to a worker).
CaseFunction = Callable[["Predictor", str, Path, Path], Any]


@dataclass(frozen=True)
class _Chunk:
    fn: CaseFunction
    predictor: Predictor
    cases: Sequence[Case]
    threads: int


def _run_chunk(chunk: _Chunk) -> list[tuple[str, Any]]:
    """In a worker: the chunk's cases, one after another, with the chunk's thread count."""
    import torch

    torch.set_num_threads(chunk.threads)
    return [(cid, chunk.fn(chunk.predictor, cid, image, label)) for cid, image, label in chunk.cases]


def check_workers(workers: int) -> None:
    """``ValueError`` unless ``workers`` is a usable number of worker processes (>= 1)."""
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")


def map_cases(
    fn: CaseFunction,
    predictor: Predictor,
    cases: Sequence[Case],
    *,
    workers: int = 1,
    progress: bool = False,
    desc: str = "cases",
) -> list[Any]:
    """``fn`` of every case, in the order of ``cases``: in this process (``workers`` 1), or in ``workers``
    processes with ``torch.get_num_threads() // workers`` threads each (at least 1).

    Raises:
        ValueError: ``workers`` < 1, or several workers for a predictor that is not on the CPU. An error of a case
            is raised here (the other workers' pending cases are cancelled).
    """
    import torch
    from tqdm import tqdm

    check_workers(workers)
    bar = tqdm(total=len(cases), desc=desc, unit="case", disable=not progress)
    if workers == 1 or len(cases) <= 1:
        out = []
        for cid, image, label in cases:
            out.append(fn(predictor, cid, image, label))
            bar.update()
        bar.close()
        return out
    if predictor.device.type != "cpu":
        raise ValueError(f"--workers {workers}: worker processes run on the CPU; give --device cpu or --workers 1")
    threads = max(1, torch.get_num_threads() // workers)
    n_chunks = min(len(cases), 4 * workers)  # a few chunks per worker: balanced, and progress as they finish
    chunks = [_Chunk(fn, predictor, list(cases[i::n_chunks]), threads) for i in range(n_chunks)]
    results: dict[str, Any] = {}
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        for done in as_completed([pool.submit(_run_chunk, chunk) for chunk in chunks]):
            part = done.result()
            results.update(part)
            bar.update(len(part))
    finally:
        pool.shutdown(cancel_futures=True)
        bar.close()
    return [results[cid] for cid, _, _ in cases]


__all__ = ["Case", "CaseFunction", "check_workers", "map_cases"]
