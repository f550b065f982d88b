"""What a run's numbers depend on: ``provenance.json`` in every run folder, beside ``config.yaml``.

The trainer writes it (atomically, before the first epoch): the versions (lesionsam, torch, CUDA and cuDNN when used,
Python, NumPy), the device, ``torch.get_num_threads()`` and ``OMP_NUM_THREADS``, the number of processes, whether
deterministic algorithms were on, the seeds, the SHA-256 of the initial weights (the ``model.checkpoint`` file, or
for a random initialisation the bytes of the initial state dict) and a data hash (:func:`data_digest`). A resumed run
compares the file with the present settings, logs one line naming what differs and appends that to ``resumed``.

Bit for bit, a run's weights are a function of all of these: the same config at another thread count sums in another
order, and 40 epochs amplify the last bit into another model. :data:`SETTINGS` names the compared entries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lesionsam import __version__
from lesionsam.config import RunConfig
from lesionsam.data.layouts import Case
from lesionsam.models.checkpoint import load_checkpoint
from lesionsam.utils.dataclass_io import atomic_write_bytes

log = logging.getLogger("lesionsam.training.trainer")

#: The file's name in a run folder.
FILENAME = "provenance.json"
#: Format tag and version of ``provenance.json``.
FORMAT = ("lesionsam-provenance", 1)
#: Over this many bytes of data, each file is hashed by path, size and its first and last :data:`EDGE_BYTES`.
FULL_HASH_LIMIT = 2 * 1024**3
EDGE_BYTES = 1024**2
#: The recorded settings a run's numbers depend on (key in ``provenance.json`` → how it is named in messages).
SETTINGS: dict[str, str] = {
    "lesionsam": "lesionsam version",
    "torch": "torch version",
    "cuda": "CUDA version",
    "cudnn": "cuDNN version",
    "python": "Python version",
    "numpy": "NumPy version",
    "device": "device",
    "threads": "threads",
    "omp_num_threads": "OMP_NUM_THREADS",
    "world_size": "processes",
    "deterministic": "deterministic algorithms",
    "seed": "seed",
    "split_seed": "split seed",
    "initial_weights": "initial-weights hash",
    "data": "data hash",
}
_CHUNK = 4 * 1024**2


# ------------------------------------------------------------------------------------------------- hashes
def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def state_dict_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """The SHA-256 (hex) of a state dict: every entry's name, dtype, shape and raw bytes, in the dict's order."""
    h = hashlib.sha256()
    for name, value in state.items():
        t = value.detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def initial_weights(checkpoint: str | None, model: torch.nn.Module, seed: int) -> dict[str, str]:
    """``{"source", "sha256"[, "file_sha256"]}`` of the weights a run starts from: ``sha256`` is the hash of ``model``'s
    state dict as built (:func:`state_dict_sha256`; with ``model.checkpoint`` its weights are loaded by then), so two
    checkpoint files holding the same weights (a pretraining re-made at the same thread count, whose file differs in
    its timings) give the same value; ``file_sha256`` is the ``model.checkpoint`` file's own hash, when there is one."""
    weights = state_dict_sha256(model.state_dict())
    if checkpoint:
        return {"source": str(checkpoint), "sha256": weights, "file_sha256": file_sha256(checkpoint)}
    return {"source": f"random initialisation (train.seed {seed})", "sha256": weights}


def case_files(cases: Sequence[Case], root: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """(path relative to ``root`` in POSIX form, path) of every image and label file of ``cases``, sorted, plus
    ``root/dataset.json`` when there is one (it names the labels)."""
    base = Path(root)
    files = {p for c in cases for p in (*c.images, *((c.label,) if c.label is not None else ()))}
    meta = base / "dataset.json"
    if meta.is_file():
        files.add(meta)
    return sorted((Path(os.path.relpath(p, base)).as_posix(), Path(p)) for p in files)


def data_digest(
    files: Sequence[tuple[str, Path]], splits: Mapping[str, Sequence[str]] | None, *, limit: int = FULL_HASH_LIMIT
) -> dict[str, Any]:
    """The data hash of a run: SHA-256 over each file's relative path, size and contents (in the order given:
    :func:`case_files` sorts them), then the split as canonical JSON.

    Over ``limit`` bytes in all, each file contributes its path, size and first and last :data:`EDGE_BYTES` only
    (``"contents"`` says which).

    Returns:
        ``{"sha256", "files", "bytes", "contents"}``.
    """
    sizes = [p.stat().st_size for _, p in files]
    total = int(sum(sizes))
    full = total <= limit
    h = hashlib.sha256()
    for (rel, path), size in zip(files, sizes, strict=True):
        h.update(f"{rel}\0{size}\0".encode())
        with open(path, "rb") as fh:
            if full or size <= 2 * EDGE_BYTES:
                while block := fh.read(_CHUNK):
                    h.update(block)
            else:
                h.update(fh.read(EDGE_BYTES))
                fh.seek(size - EDGE_BYTES)
                h.update(fh.read(EDGE_BYTES))
    h.update(json.dumps({k: list(v) for k, v in (splits or {}).items()}, sort_keys=True).encode())
    contents = (
        "every file in full"
        if full
        else f"path, size, first and last {EDGE_BYTES // 1024**2} MiB of each file (data over {limit / 1024**3:g} GB)"
    )
    return {"sha256": h.hexdigest(), "files": len(files), "bytes": total, "contents": contents}


# ------------------------------------------------------------------------------------------------- the record
def environment(device: torch.device, world_size: int = 1) -> dict[str, Any]:
    """The versions, device and threading of this process (the entries of ``provenance.json`` that need no run)."""
    cuda = device.type == "cuda"
    return {
        "lesionsam": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": device.type,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "world_size": world_size,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }


def provenance(
    *,
    device: torch.device,
    world_size: int,
    seed: int,
    split_seed: int,
    weights: Mapping[str, str],
    data: Mapping[str, Any],
    splits: str,
    seconds: float,
) -> dict[str, Any]:
    """The content of ``provenance.json`` (see the module docstring); ``splits`` says where the split came from and
    ``seconds`` is the time the hashes took."""
    return {
        "format": FORMAT[0],
        "version": FORMAT[1],
        **environment(device, world_size),
        "seed": seed,
        "split_seed": split_seed,
        "initial_weights": dict(weights),
        "data": {**data, "splits": splits},
        "hashing_seconds": round(seconds, 3),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run_provenance(
    cfg: RunConfig,
    cases: Sequence[Case],
    splits: Mapping[str, Sequence[str]] | None,
    device: torch.device,
    world_size: int,
    weights: Mapping[str, str],
    weights_seconds: float = 0.0,
) -> dict[str, Any]:
    """:func:`provenance` of a run of ``cfg`` on ``cases`` (all of ``data.root``: the trainer checks every one) with
    the split it uses and its :func:`initial_weights` (which took ``weights_seconds``); ``hashing_seconds`` is that
    plus the data hash's time."""
    t0 = time.perf_counter()
    data = data_digest(case_files(cases, cfg.data.root), splits)
    given = cfg.data.splits
    return provenance(
        device=device,
        world_size=world_size,
        seed=cfg.train.seed,
        split_seed=cfg.data.split_seed,
        weights=weights,
        data=data,
        splits=str(given) if given else f"made from data.split_seed {cfg.data.split_seed}",
        seconds=time.perf_counter() - t0 + weights_seconds,
    )


def write_provenance(run_dir: str | os.PathLike[str], record: Mapping[str, Any]) -> Path:
    """Write ``run_dir/provenance.json`` atomically."""
    payload = json.dumps(record, indent=2, allow_nan=False) + "\n"
    return atomic_write_bytes(Path(run_dir) / FILENAME, payload.encode())


def read_provenance(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``run_dir/provenance.json``, or None when the run has none (made before lesionsam recorded it).

    Raises:
        ValueError: the file is not a ``provenance.json`` this version reads.
    """
    path = Path(run_dir) / FILENAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); delete it to record the settings anew") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT[0] or not isinstance(data.get("version"), int):
        raise ValueError(f"{path} is not a lesionsam provenance file (no format tag {FORMAT[0]!r})")
    if data["version"] > FORMAT[1]:
        raise ValueError(f"{path} has format version {data['version']}; this lesionsam reads up to {FORMAT[1]}")
    return data


def setting(record: Mapping[str, Any], key: str) -> Any:
    """The compared value of one of :data:`SETTINGS` (the ``sha256`` of the hashes)."""
    value = record.get(key)
    return value.get("sha256") if isinstance(value, Mapping) else value


def differences(
    recorded: Mapping[str, Any], now: Mapping[str, Any], keys: Sequence[str] = tuple(SETTINGS)
) -> dict[str, tuple[Any, Any]]:
    """``{key: (recorded value, present value)}`` for the :data:`SETTINGS` ``keys`` whose values differ."""
    return {k: (setting(recorded, k), setting(now, k)) for k in keys if setting(recorded, k) != setting(now, k)}


def short(value: Any) -> str:
    """A recorded value for a message: hashes cut to 12 characters, None as "none"."""
    if value is None:
        return "none"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]
    return str(value)


def describe(diffs: Mapping[str, tuple[Any, Any]]) -> str:
    """``"threads 1 → 2, torch version 2.3.0 → 2.4.0"``: :func:`differences` in words."""
    return ", ".join(f"{SETTINGS.get(k, k)} {short(a)} → {short(b)}" for k, (a, b) in diffs.items())


def record_resume(run_dir: str | os.PathLike[str], now: Mapping[str, Any], epoch: int) -> dict[str, tuple[Any, Any]]:
    """On resuming at ``epoch``: compare ``run_dir/provenance.json`` with ``now`` (the present record), log one line
    naming what differs and append ``{"epoch", "differs"}`` to the file's ``resumed`` list; a run without the file
    gets ``now`` (with ``recorded_at_epoch``). Returns the differences."""
    recorded = read_provenance(run_dir)
    if recorded is None:
        write_provenance(run_dir, {**now, "recorded_at_epoch": epoch})
        log.info("resumed run %s had no %s: recorded the present settings at epoch %d", run_dir, FILENAME, epoch)
        return {}
    diffs = differences(recorded, now)
    if diffs:
        log.warning(
            "resumed run %s at epoch %d with other settings than it started with (%s): its weights will not match an "
            "uninterrupted run bit for bit",
            run_dir,
            epoch,
            describe(diffs),
        )
    entry = {"epoch": epoch, "differs": {k: [a, b] for k, (a, b) in diffs.items()}}
    write_provenance(run_dir, {**recorded, "resumed": [*recorded.get("resumed", []), entry]})
    return diffs


# ------------------------------------------------------------------------------------------------- weights
def differing_weights(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> list[str]:
    """The state-dict entries of checkpoints ``a`` and ``b`` that are not ``torch.equal`` (or in one only); empty when
    every weight is equal bit for bit."""
    sa, sb = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    return [k for k in dict.fromkeys([*sa, *sb]) if k not in sa or k not in sb or not torch.equal(sa[k], sb[k])]
