"""``provenance.json``: what a run's numbers depend on, written before the first epoch and checked on resume."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from lesionsam.config import RunConfig, load_run_config
from lesionsam.data.synthetic import write_synthetic_dataset
from lesionsam.models import build_model
from lesionsam.training.distributed import seed_everything
from lesionsam.training.provenance import (
    EDGE_BYTES,
    FILENAME,
    case_files,
    data_digest,
    describe,
    differences,
    file_sha256,
    read_provenance,
    state_dict_sha256,
)
from lesionsam.training.trainer import Trainer


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "ds", cases=4, size=32, seed=3)


def _config(root: Path, *extra: str) -> RunConfig:
    base = [
        f"data.root={root}",
        "model.preset=tiny",
        "model.method=finetune",
        "model.backbone.img_size=32",
        "model.backbone.patch_size=8",
        "model.backbone.window_size=2",
        "train.epochs=2",
        "train.batch_size=2",
        "train.num_clicks=2",
        "train.device=cpu",
    ]
    return load_run_config(None, [*base, *extra])


def _files(tmp_path: Path, contents: dict[str, bytes]) -> list[tuple[str, Path]]:
    for name, data in contents.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    return sorted((name, tmp_path / name) for name in contents)


def test_the_data_hash_follows_contents_names_and_split(tmp_path: Path) -> None:
    files = _files(tmp_path, {"imagesTr/a.nii.gz": b"image a", "labelsTr/a.nii.gz": b"label a"})
    split = {"train": ["a"], "val": []}
    first = data_digest(files, split)
    assert first["files"] == 2 and first["bytes"] == 14 and first["contents"] == "every file in full"
    assert data_digest(files, split) == first
    assert data_digest(files, {"train": [], "val": ["a"]})["sha256"] != first["sha256"]  # another split
    (tmp_path / "labelsTr" / "a.nii.gz").write_bytes(b"label b")  # same size, other bytes
    assert data_digest(files, split)["sha256"] != first["sha256"]
    renamed = [("imagesTr/b.nii.gz", files[0][1]), files[1]]
    assert data_digest(renamed, split)["sha256"] != data_digest(files, split)["sha256"]


def test_over_the_limit_each_file_is_hashed_by_size_and_its_ends(tmp_path: Path) -> None:
    size = 3 * EDGE_BYTES
    files = _files(tmp_path, {"big.bin": bytes(size)})
    full = data_digest(files, None)
    part = data_digest(files, None, limit=size - 1)
    assert part["contents"].startswith("path, size, first and last 1 MiB") and full["contents"] == "every file in full"
    assert part["sha256"] != full["sha256"]
    middle = bytearray(size)
    middle[size // 2] = 1
    (tmp_path / "big.bin").write_bytes(bytes(middle))
    assert data_digest(files, None, limit=size - 1)["sha256"] == part["sha256"]  # the middle is not read: as said
    middle[-1] = 1
    (tmp_path / "big.bin").write_bytes(bytes(middle))
    assert data_digest(files, None, limit=size - 1)["sha256"] != part["sha256"]  # the last MiB is


def test_the_state_dict_hash_sees_one_bit() -> None:
    state = {"w": torch.zeros(3, dtype=torch.float32), "b": torch.ones(2, dtype=torch.bfloat16)}
    before = state_dict_sha256(state)
    state["w"][1] = 1e-45  # the smallest subnormal: one bit
    assert state_dict_sha256(state) != before
    assert state_dict_sha256({"w": torch.zeros(3)}) != state_dict_sha256({"v": torch.zeros(3)})


def test_a_run_records_its_settings_before_the_first_epoch(dataset: Path, tmp_path: Path) -> None:
    cfg = _config(dataset, "train.seed=4")
    seen: list[dict[str, Any]] = []

    def first_step(trainer: Trainer, event: str, info: dict[str, Any]) -> None:
        if event == "step" and not seen:
            seen.append(json.loads((tmp_path / "run" / FILENAME).read_text()))

    Trainer(cfg, tmp_path / "run", progress=False, callbacks=[first_step]).fit()
    record = read_provenance(tmp_path / "run")
    assert seen and seen[0] == record  # written before training, not touched after
    assert record is not None
    assert record["torch"] == torch.__version__ and record["device"] == "cpu" and record["cuda"] is None
    assert record["threads"] == torch.get_num_threads() and record["seed"] == 4 and record["world_size"] == 1
    # Random initialisation: the hash of the state dict the seed builds.
    seed_everything(4, epoch=-1)
    assert record["initial_weights"]["sha256"] == state_dict_sha256(build_model(cfg.model).state_dict())
    # The data: every image and label of data.root (and dataset.json), then the split the run wrote.
    from lesionsam.training.data import load_cases

    split = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert record["data"]["sha256"] == data_digest(case_files(load_cases(cfg), dataset), split)["sha256"]
    assert record["data"]["files"] == 2 * 4 + 1 and record["data"]["splits"] == "made from data.split_seed 0"
    # A checkpoint given as model.checkpoint: the hash of the weights it holds (as loaded), and of the file.
    from lesionsam.models.checkpoint import load_checkpoint

    start = tmp_path / "run" / "last.pt"
    Trainer(_config(dataset, f"model.checkpoint={start}", "train.epochs=1"), tmp_path / "ft", progress=False).fit()
    weights = state_dict_sha256(load_checkpoint(start)["state_dict"])
    expected = {"source": str(start), "sha256": weights, "file_sha256": file_sha256(start)}
    assert read_provenance(tmp_path / "ft")["initial_weights"] == expected


def test_a_resume_at_another_thread_count_says_so_in_one_line(
    dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _config(dataset, "train.epochs=2")

    class Stop(Exception):
        pass

    def stop(trainer: Trainer, event: str, info: dict[str, Any]) -> None:
        if event == "epoch":
            raise Stop

    with pytest.raises(Stop):
        Trainer(cfg, tmp_path / "run", progress=False, callbacks=[stop]).fit()
    before = read_provenance(tmp_path / "run")
    assert before is not None
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        with caplog.at_level(logging.INFO, logger="lesionsam.training"):
            Trainer(cfg, tmp_path / "run", progress=False).fit(resume=True)
    finally:
        torch.set_num_threads(threads)
    lines = [r.getMessage() for r in caplog.records if "other settings than it started with" in r.getMessage()]
    assert len(lines) == 1 and f"threads {threads} → {threads + 1}" in lines[0]
    after = read_provenance(tmp_path / "run")
    assert after is not None and after["threads"] == threads  # what it started with
    assert after["resumed"] == [{"epoch": 1, "differs": {"threads": [threads, threads + 1]}}]


def test_differences_name_the_settings_in_words() -> None:
    a = {"threads": 1, "torch": "2.3.0", "initial_weights": {"source": "x", "sha256": "a" * 64}}
    b = {"threads": 2, "torch": "2.3.0", "initial_weights": {"source": "y", "sha256": "b" * 64}}
    diffs = differences(a, b)
    assert diffs == {"threads": (1, 2), "initial_weights": ("a" * 64, "b" * 64)}
    assert describe(diffs) == f"threads 1 → 2, initial-weights hash {'a' * 12} → {'b' * 12}"
