"""GPU readiness of lesionsam in one command: device, training step, predictor, data loading, DDP, the ablation.

    python benchmarks/gpu_check.py --out runs/gpu_check                 # on a CUDA machine, the full ViT-B preset
    python benchmarks/gpu_check.py --out runs/gpu_check --device cpu --tiny   # smoke run on a CPU (a minute)

Checks, each one row of the printed table (also ``OUT/gpu_check.json`` and ``.md``):

1. **device**: torch and CUDA versions, the GPU's name, memory and bf16 support (or the CPU threads);
2. **train step**: the trainer itself (``lesionsam train`` preset ``liver_sgp_sam``: SGP-SAM on the ViT-B
   backbone, 128³ crops, 5 click iterations, bf16 autocast on CUDA via ``train.amp``) on a synthetic MSD set for
   two epochs of up to ``--steps // 2 + 1`` steps: median seconds per step (data loading included; the first step
   of each epoch is not timed) and the peak of ``torch.cuda.max_memory_allocated``;
3. **predictor**: one ``lesionsam predict`` call with one click on a synthetic CT (fp32, then under bf16 autocast):
   seconds and peak memory;
4. **data loader**: the trainer's own DataLoader (``Trainer.loader``) over its training crops with 0 and
   ``--workers`` worker processes: batches per second, and whether the batches arrive in pinned memory on CUDA;
5. **DDP**: with two or more GPUs, ``torchrun --nproc_per_node N -m lesionsam.cli.main train`` (NCCL) for one
   epoch (skipped on one GPU or a CPU);
6. **ablation**: ``lesionsam ablate`` with the 4 variants × seed 0 on the synthetic set at the same preset
   (``--ablation-epochs`` epochs each, with its click curves): minutes per run and the table (random weights unless
   ``--checkpoint`` gives SAM-Med3D-turbo: the Dice says nothing then, the timing and the files do).

``--tiny`` shrinks every size (tiny backbone, 32³ crops, small volumes) so that the same code runs in about a minute
on a CPU; the figures are then no GPU figures. The exit code is 1 when a check failed, else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import RandomSampler

from lesionsam.benchmarking.synthetic_ct import synthetic_ct
from lesionsam.config import load_run_config
from lesionsam.configs import resolve_config
from lesionsam.data.io import write_image
from lesionsam.data.synthetic import write_synthetic_dataset
from lesionsam.inference.predictor import Predictor
from lesionsam.training.trainer import Trainer
from lesionsam.utils.dataclass_io import atomic_write_bytes
from lesionsam.workflows.ablate import ABLATION_METHODS, ablate_config
from lesionsam.workflows.predict import PredictRequest, predict


@dataclass
class Check:
    """One row of the table."""

    name: str
    status: str = "ok"  # ok | skipped | FAILED
    summary: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sizes:
    """What the checks run at (the full preset, or ``--tiny``)."""

    preset: str
    overrides: tuple[str, ...]
    cases: int
    size: int
    ct_shape_ijk: tuple[int, int, int]

    @classmethod
    def of(cls, tiny: bool) -> Sizes:
        if tiny:
            small = ("model.backbone.img_size=32", "model.backbone.patch_size=8", "model.backbone.window_size=2")
            return cls("demo", (*small, "train.num_clicks=2", "train.batch_size=2"), 6, 32, (64, 64, 24))
        return cls("liver_sgp_sam", (), 16, 96, (256, 256, 64))


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def _mb(value: float | None) -> str:
    return "n/a on CPU" if value is None else f"{value:,.0f} MB"


def check_device(device: torch.device) -> Check:
    c = Check("device", figures={"torch": torch.__version__, "python": platform.python_version()})
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        c.figures |= {
            "cuda": torch.version.cuda,
            "gpu": props.name,
            "gpus": torch.cuda.device_count(),
            "memory_gb": round(props.total_memory / 2**30, 1),
            "bf16": torch.cuda.is_bf16_supported(),
            "nccl": torch.distributed.is_nccl_available(),
        }
        c.summary = f"{props.name} ×{c.figures['gpus']}, {c.figures['memory_gb']} GB, bf16 {c.figures['bf16']}"
    else:
        c.figures |= {"threads": torch.get_num_threads(), "cuda_available": torch.cuda.is_available()}
        c.summary = f"CPU, {torch.get_num_threads()} threads (no GPU figures)"
    return c


def _config(s: Sizes, root: Path, device: torch.device, *extra: str) -> tuple[Path, list[str]]:
    overrides = [
        f"data.root={root}",
        f"train.device={device.type}",
        "train.warmup_steps=1",
        *s.overrides,
        *extra,
    ]
    return resolve_config(s.preset), overrides


def check_train(s: Sizes, root: Path, out: Path, device: torch.device, steps: int, checkpoint: str | None) -> Check:
    ckpt = [f"model.checkpoint={checkpoint}"] if checkpoint else []
    per_epoch = f"train.max_steps_per_epoch={steps // 2 + 1}"  # two epochs; the first step of each is not timed
    path, overrides = _config(s, root, device, "train.epochs=2", per_epoch, *ckpt)
    cfg = load_run_config(path, overrides)
    times: list[float] = []
    last = [time.perf_counter()]

    def clock(trainer: Trainer, event: str, info: dict[str, Any]) -> None:
        now = time.perf_counter()  # the loss was read back (a device sync) before a step event
        if event == "step" and info["step"] > 0:
            times.append(now - last[0])
        last[0] = now

    _peak_reset(device)
    last[0] = time.perf_counter()
    result = Trainer(cfg, out / "train", progress=False, callbacks=[clock]).fit()
    peak = _peak_mb(device)
    tail = times
    step = statistics.median(tail)
    amp = "bf16 autocast" if device.type == "cuda" and cfg.train.amp else "fp32"
    c = Check("train step", summary=f"{step:.3f} s/step (median of {len(tail)}), peak {_mb(peak)}, {amp}")
    c.figures = {
        "preset": cfg.model.preset,
        "method": cfg.model.method,
        "crop": cfg.model.backbone.img_size,
        "batch": cfg.train.batch_size,
        "num_clicks": cfg.train.num_clicks,
        "autocast": amp,
        "seconds_per_step": step,
        "seconds_all": times,
        "peak_mb": peak,
        "checkpoint": str(result.last_checkpoint),
    }
    return c


def check_predictor(s: Sizes, checkpoint: Path, device: torch.device) -> Check:
    predictor = Predictor.from_checkpoint(checkpoint, device=device)
    i, j, k = s.ct_shape_ijk
    vol, centre = synthetic_ct((k, j, i), (0.8, 0.8, 2.5))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        image = write_image(vol.array, Path(tmp) / "ct.nrrd", reference=vol)
        point = ",".join(str(int(round(x))) for x in centre)
        modes: dict[str, Callable[[], Any]] = {"fp32": nullcontext}
        if device.type == "cuda":
            modes["bf16 autocast"] = lambda: torch.autocast("cuda", dtype=torch.bfloat16)
        for name, ctx in modes.items():
            try:  # bf16 autocast is not a predictor setting: a failure there is reported, not fatal
                predict(
                    PredictRequest.of(image, Path(tmp) / "warm.nrrd", points=[point]),
                    predictor=predictor,
                    progress=False,
                )
                _peak_reset(device)
                t0 = time.perf_counter()
                with ctx():
                    request = PredictRequest.of(image, Path(tmp) / f"{name}.nrrd", points=[point])
                    predict(request, predictor=predictor, progress=False)
                rows[name] = {"seconds": time.perf_counter() - t0, "peak_mb": _peak_mb(device)}
            except Exception as exc:
                rows[name] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:160]}
    text = "; ".join(
        f"{n}: FAILED ({r['error']})" if "error" in r else f"{n}: {r['seconds']:.2f} s, peak {_mb(r['peak_mb'])}"
        for n, r in rows.items()
    )
    status = "FAILED" if "error" in rows["fp32"] else "ok"
    shape = "x".join(map(str, s.ct_shape_ijk))
    return Check("predictor", status, f"{shape} CT, one click: {text}", figures=rows)


def check_loader(s: Sizes, root: Path, out: Path, device: torch.device, workers: int) -> Check:
    rows = {}
    pinned: bool | None = None
    for n in dict.fromkeys((0, workers)):
        path, overrides = _config(s, root, device, f"data.num_workers={n}")
        trainer = Trainer(load_run_config(path, overrides), out / "loader", progress=False)
        train_set, _ = trainer.build_datasets()
        loader = trainer.loader(train_set, RandomSampler(train_set, generator=torch.Generator().manual_seed(0)), 0)
        t0 = time.perf_counter()
        batches = 0
        for batch in loader:
            batch["image"].to(device, non_blocking=True)
            batches += 1
            pinned = bool(batch["image"].is_pinned()) if device.type == "cuda" else None
        seconds = time.perf_counter() - t0
        rows[f"workers={n}"] = {"batches": batches, "batches_per_s": batches / seconds, "pin_memory": loader.pin_memory}
    text = ", ".join(f"{k}: {v['batches_per_s']:.1f} batches/s" for k, v in rows.items())
    ok = device.type != "cuda" or pinned is True
    pin = "n/a on CPU" if pinned is None else str(pinned)
    return Check("data loader", "ok" if ok else "FAILED", f"{text}; batches pinned: {pin}", rows | {"pinned": pinned})


def check_ddp(s: Sizes, root: Path, out: Path, device: torch.device) -> Check:
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if gpus < 2:
        return Check("DDP (NCCL)", "skipped", f"needs two or more GPUs; {gpus} here")
    path, overrides = _config(s, root, device, "train.epochs=1", "train.max_steps_per_epoch=4")
    cmd = ["torchrun", "--standalone", f"--nproc_per_node={gpus}", "-m", "lesionsam.cli.main", "train", str(path)]
    cmd += [*overrides, "--out", str(out / "ddp")]
    t0 = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "4"})
    seconds = time.perf_counter() - t0
    if run.returncode != 0:
        tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
        return Check("DDP (NCCL)", "FAILED", f"torchrun exit {run.returncode}: {tail[0]}", {"command": cmd})
    return Check("DDP (NCCL)", summary=f"{gpus} ranks, one epoch in {seconds:.0f} s", figures={"seconds": seconds})


def check_ablation(s: Sizes, root: Path, out: Path, device: torch.device, epochs: int, checkpoint: str | None) -> Check:
    ckpt = [f"model.checkpoint={checkpoint}"] if checkpoint else []
    path, overrides = _config(s, root, device, f"train.epochs={epochs}", *ckpt)
    t0 = time.perf_counter()
    table = ablate_config(
        path,
        overrides=overrides,
        out=out / "ablation",
        clicks=3 if s.preset == "demo" else 10,
        methods=ABLATION_METHODS,
        seeds=(0,),
        progress=False,
    )
    minutes = (time.perf_counter() - t0) / 60
    assert table is not None
    summary = json.loads(table.with_suffix(".json").read_text())
    dice = {m["method"]: m["dice"]["mean"] for m in summary["methods"]}
    text = (
        f"4 variants × seed 0, {epochs} epoch(s) each: {minutes:.1f} min ({minutes * 15:.0f} s per run); table {table}"
    )
    return Check("ablation", summary=text, figures={"minutes": minutes, "dice": dice, "table": str(table)})


def _run(name: str, fn: Callable[[], Check]) -> Check:
    print(f"  {name} ...", file=sys.stderr, flush=True)
    try:
        return fn()
    except Exception as exc:  # a readiness report: one failed check must not hide the others
        traceback.print_exc()
        return Check(name, "FAILED", f"{type(exc).__name__}: {exc}".splitlines()[0][:200])


def table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  {'status':<7}  result", f"{'-' * width}  {'-' * 7}  {'-' * 40}"]
    lines += [f"{c.name:<{width}}  {c.status:<7}  {c.summary}" for c in checks]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/gpu_check"), help="output folder (default runs/gpu_check)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="device to check (default cuda)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: a CPU smoke run of the same code")
    p.add_argument("--steps", type=int, default=10, help="training steps timed (default 10)")
    p.add_argument("--workers", type=int, default=4, help="DataLoader worker processes to compare with 0 (default 4)")
    p.add_argument("--ablation-epochs", type=int, default=2, help="epochs per ablation run (default 2)")
    p.add_argument("--checkpoint", default=None, help="SAM-Med3D(-turbo) weights for the full preset (optional)")
    p.add_argument("--skip-ablation", action="store_true", help="leave the ablation out")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: error: --device cuda but torch sees no CUDA GPU; use --device cpu --tiny", file=sys.stderr)
        return 2
    if a.steps < 2 or a.workers < 0 or a.ablation_epochs < 1:
        print("gpu_check: error: --steps >= 2, --workers >= 0 and --ablation-epochs >= 1", file=sys.stderr)
        return 2
    if a.checkpoint and a.tiny:
        print("gpu_check: error: --checkpoint is for the full preset, not --tiny", file=sys.stderr)
        return 2
    device = torch.device(a.device, 0) if a.device == "cuda" else torch.device("cpu")
    s = Sizes.of(a.tiny)
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    root = out / "data"
    if not (root / "dataset.json").is_file():
        write_synthetic_dataset(root, cases=s.cases, seed=0, size=s.size)
    checks = [_run("device", lambda: check_device(device))]
    train = _run("train step", lambda: check_train(s, root, out, device, a.steps, a.checkpoint))
    checks.append(train)
    if train.status == "ok":
        checks.append(_run("predictor", lambda: check_predictor(s, Path(train.figures["checkpoint"]), device)))
    checks.append(_run("data loader", lambda: check_loader(s, root, out, device, a.workers)))
    checks.append(_run("DDP (NCCL)", lambda: check_ddp(s, root, out, device)))
    if not a.skip_ablation:
        checks.append(_run("ablation", lambda: check_ablation(s, root, out, device, a.ablation_epochs, a.checkpoint)))
    text = table(checks)
    print(text)
    payload = {"device": a.device, "tiny": a.tiny, "checks": [c.__dict__ for c in checks]}
    atomic_write_bytes(out / "gpu_check.json", (json.dumps(payload, indent=2, default=str) + "\n").encode())
    atomic_write_bytes(out / "gpu_check.md", f"# lesionsam GPU check\n\n```\n{text}\n```\n".encode())
    return 1 if any(c.status == "FAILED" for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
