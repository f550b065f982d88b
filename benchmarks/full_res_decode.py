"""Extra time of the full-resolution decoder path (``model.full_res_channels``) per decode and per encode.

Times ``decode`` (one click and a previous low-res mask, as a refining click) and ``encode`` of one crop for SAM-Med3D
without the path and with it, on the same backbone weights and input, and prints the medians and their ratio::

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/full_res_decode.py --preset tiny --threads 2
    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/full_res_decode.py --preset sam_med3d_vit_b --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from lesionsam.models import Prompts
from lesionsam.models.backbone import build_sam3d, get_preset


def _times(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds of each call, the calls interleaved (a busy machine slows them alike)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def _ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1e3:.1f} ms (min {min(values) * 1e3:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--channels", type=int, default=8, help="model.full_res_channels")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--encode-repeats", type=int, default=3)
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    cfg = get_preset(a.preset)
    torch.manual_seed(0)
    plain = build_sam3d(cfg).eval()
    path = build_sam3d(cfg, full_res_channels=a.channels).eval()
    path.load_state_dict(plain.state_dict(), strict=False)
    image = torch.randn(1, 1, cfg.img_size, cfg.img_size, cfg.img_size)
    side = cfg.img_size / 2
    prompts = Prompts(
        points=torch.tensor([[[side, side, side]]]),
        labels=torch.ones(1, 1, dtype=torch.int64),
        mask=torch.randn(1, 1, cfg.low_res_size, cfg.low_res_size, cfg.low_res_size),
    )
    with torch.inference_mode():
        enc_plain, enc_path = plain.encode(image), path.encode(image)
        dec = _times(
            {"without": lambda: plain.decode(enc_plain, prompts), "with": lambda: path.decode(enc_path, prompts)},
            a.repeats,
        )
        enc = _times(
            {"encode": lambda: plain.encode(image), "stem": lambda: path.full_res.stem(image)}, a.encode_repeats
        )  # type: ignore[union-attr]
    extra = sum(p.numel() for n, p in path.named_parameters() if n.startswith("full_res."))
    print(
        f"preset={a.preset} crop={cfg.img_size}^3 threads={torch.get_num_threads()} channels={a.channels} "
        f"path parameters={extra}"
    )
    med = {k: statistics.median(v) for k, v in dec.items()}
    print(f"decode without the path: {_ms(dec['without'])}; with it: {_ms(dec['with'])}")
    print(
        f"  extra per decode: {(med['with'] - med['without']) * 1e3:.1f} ms (medians), "
        f"ratio {med['with'] / med['without']:.2f}x (min ratio {min(dec['with']) / min(dec['without']):.2f}x)"
    )
    print(f"encode without the path: {_ms(enc['encode'])}; the stem adds {_ms(enc['stem'])} per crop")


if __name__ == "__main__":
    main()
