"""``evaluate-clicks --workers N``: cases in worker processes give the same files as one process at the same number
of threads per process, for both protocols; a case's error comes back as the same one-line error."""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from lesionsam.cli.main import main
from lesionsam.data.io import Volume, write_image
from lesionsam.workflows.clicks import evaluate_clicks


def _data(tmp_path: Path) -> tuple[Path, Path]:
    """Four 40³ cases with one or two bright tumours (label 2) each."""
    rng = np.random.default_rng(0)
    ref = Volume(np.zeros((40, 40, 40), np.float32), (1.5, 1.5, 1.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    for n in range(4):
        img = rng.normal(0, 20, (40, 40, 40)).astype(np.float32)
        lab = np.zeros((40, 40, 40), np.uint8)
        for _ in range(1 + n % 2):
            c = rng.integers(8, 32, 3)
            r = int(rng.integers(2, 6))
            sl = tuple(slice(int(a) - r, int(a) + r) for a in c)
            img[sl], lab[sl] = 300.0, 2
        write_image(img, tmp_path / "imagesTr" / f"c{n}_0000.nii.gz", reference=ref)
        write_image(lab, tmp_path / "labelsTr" / f"c{n}.nii.gz", reference=ref)
    return tmp_path / "imagesTr", tmp_path / "labelsTr"


def _timeless(files: dict[str, bytes]) -> dict[str, object]:
    """The files without what measures time (the cvpr25 protocol's seconds per case and step)."""

    def drop(x: object) -> object:
        if isinstance(x, dict):
            return {k: drop(v) for k, v in x.items() if "seconds" not in k}
        return [drop(v) for v in x] if isinstance(x, list) else x

    out: dict[str, object] = {}
    for name, data in files.items():
        if name.endswith(".json"):
            out[name] = drop(json.loads(data))
        else:
            rows = list(csv.reader(io.StringIO(data.decode())))
            keep = [i for i, h in enumerate(rows[0]) if "seconds" not in h]
            out[name] = [[r[i] for i in keep] for r in rows]
    return out


@pytest.fixture()
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # one process at 1 thread; two workers of a 1-thread parent get 1 thread each
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("protocol", ["lesionsam", "cvpr25"])
def test_workers_give_the_files_of_one_process(tmp_path: Path, protocol: str, one_thread: None) -> None:
    images, labels = _data(tmp_path)
    files = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        torch.manual_seed(0)  # the same random tiny weights for both runs (the workers get the parent's model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluate_clicks(
                images,
                labels,
                out=out,
                checkpoint=None,
                preset="tiny",
                label=2,
                n_clicks=3,
                protocol=protocol,
                workers=workers,
            )
        files[workers] = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    assert len(files[1]) == 2 and _timeless(files[1]) == _timeless(files[2])
    name = "clicks.json" if protocol == "lesionsam" else "cvpr25.json"
    found = json.loads(files[2][name])
    cases = [x["case"] for x in found["lesions"]] if protocol == "lesionsam" else [x["case"] for x in found["cases"]]
    assert cases == sorted(cases) and set(cases) == {"c0", "c1", "c2", "c3"}  # every case, in the cases' order


def test_a_workers_error_is_the_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images, labels = _data(tmp_path)
    other = Volume(np.zeros((40, 40, 40), np.uint8), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_image(other.array, labels / "c3.nii.gz", reference=other)  # one label map off its scan's grid
    base = ["evaluate-clicks", str(images), str(labels), "--preset", "tiny", "--label", "2", "--clicks", "2"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*base, "--out", str(tmp_path / "a"), "--workers", "2"]) == 2
        assert main([*base, "--out", str(tmp_path / "b"), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "case 'c3': the label map is not on the image grid" in err[-2]
    assert err[-1].endswith("--workers must be >= 1, got 0")
    assert not (tmp_path / "a" / "clicks.csv").exists() and not (tmp_path / "b").exists()
