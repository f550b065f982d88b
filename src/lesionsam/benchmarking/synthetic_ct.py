"""A synthetic full-size CT for the end-to-end benchmarks (``predict``, ``auto``, ``interactive``)."""

from __future__ import annotations


def synthetic_ct(shape_dhw: tuple[int, int, int], spacing_ijk: tuple[float, float, float], seed: int = 0):
    """A full-size CT-like int16 volume (air, body, an organ, one 15 mm lesion) and the lesion's (i, j, k) centre."""
    import numpy as np

    from lesionsam.data.io import Volume

    rng = np.random.default_rng(seed)
    d, h, w = shape_dhw
    zz, yy, xx = np.ogrid[:d, :h, :w]
    arr = np.full(shape_dhw, -1000, dtype=np.int16)
    body = ((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 < 1
    arr[:, body[0]] = 40
    organ = ((yy - 0.45 * h) / (0.15 * h)) ** 2 + ((xx - 0.4 * w) / (0.18 * w)) ** 2 + ((zz - d / 2) / (0.4 * d)) ** 2
    arr[organ < 1] = 60
    center = np.array([0.4 * w, 0.45 * h, d / 2])  # (i, j, k)
    r = ((xx - center[0]) * spacing_ijk[0]) ** 2 + ((yy - center[1]) * spacing_ijk[1]) ** 2
    lesion = r + ((zz - center[2]) * spacing_ijk[2]) ** 2 < 15.0**2
    arr[lesion] = 25
    arr += rng.normal(0, 12, shape_dhw).astype(np.int16)
    vol = Volume(arr, spacing_ijk, (-180.0, -180.0, -300.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    return vol, center
