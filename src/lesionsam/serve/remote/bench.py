"""Round trip of nnInteractive's remote protocol: the same points through ``nninteractive-client`` (what 3D Slicer,
napari and ITK-SNAP run) and on the library, side by side.

:func:`bench_remote_round_trip` serves the real application under uvicorn on a free loopback port (a thread of this
process), sends the image once through the client, then times a first positive point and refining points, and the
same clicks on an :class:`~lesionsam.inference.session.InteractiveSession` of the same array and spacing called
directly. The difference is what the protocol costs (JSON, NNIA packing of the changed sub-volume, the loopback
socket, the client's patching of its buffer). An untimed sequence warms each way up; then the ways alternate, repeat
by repeat. Medians; nothing here asserts a speed. Needs ``nninteractive-client`` (the test extra installs it).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lesionsam.data.io import Volume
from lesionsam.inference.session import InteractiveSession
from lesionsam.serve.remote.state import image_volume


@dataclass(frozen=True)
class RemoteTrip:
    """Median seconds through the client and on the library; whether the client's buffer equalled the library's."""

    first_client: float
    first_library: float
    refine_client: float
    refine_library: float
    same_masks: bool

    def table(self) -> str:
        rows = [("first point", self.first_client, self.first_library)]
        rows.append(("refining point", self.refine_client, self.refine_library))
        lines = [f"{'':16s} {'client (s)':>11s} {'library (s)':>12s} {'overhead (s)':>13s}"]
        lines += [f"{name:16s} {c:11.4f} {d:12.4f} {c - d:13.4f}" for name, c, d in rows]
        lines.append(f"client buffer equals the library's label map: {self.same_masks}")
        return "\n".join(lines)


def bench_remote_round_trip(
    volume: Volume,
    make_session: Callable[[Volume], InteractiveSession],
    *,
    first: tuple[int, int, int],
    refine: Sequence[tuple[tuple[int, int, int], bool]],
    repeats: int = 3,
) -> RemoteTrip:
    """Time points through ``nninteractive-client`` against a real server and on the library directly.

    Args:
        volume: the image; its array (D, H, W) and spacing are what the client sends (no origin or direction).
        make_session: ``volume -> InteractiveSession`` (the model already loaded), as ``lesionsam serve`` builds it.
        first: the first (positive) click, voxel (i, j, k) = array (k, j, i); refine: ``((i, j, k), positive)``.
        repeats: timed sequences per way (medians are reported).

    Raises:
        ImportError: ``nninteractive-client`` is not installed.
    """
    from nnInteractive.inference.remote import nnInteractiveRemoteInferenceSession

    from lesionsam.serve.app import create_app
    from lesionsam.serve.bench import _start

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    array = np.ascontiguousarray(volume.array)
    spacing = [float(s) for s in volume.spacing[::-1]]  # the array's axis order
    library = make_session(image_volume(array[None], spacing))
    root = Path(tempfile.mkdtemp(prefix="lesionsam-bench-"))
    timed: dict[str, tuple[list[float], list[float]]] = {"client": ([], []), "library": ([], [])}
    same = True
    try:
        server, thread, url = _start(create_app(root, make_session=make_session))
        client = nnInteractiveRemoteInferenceSession(url)
        try:
            client.set_image(array[None], {"spacing": spacing})
            buffer = np.zeros(array.shape, np.uint8)
            client.set_target_buffer(buffer)

            def through_client() -> tuple[float, list[float], np.ndarray]:
                client.reset_interactions()
                t0 = time.perf_counter()
                client.add_point_interaction(first[::-1], include_interaction=True)
                first_s = time.perf_counter() - t0
                refine_s = []
                for point, positive in refine:
                    t0 = time.perf_counter()
                    client.add_point_interaction(point[::-1], include_interaction=positive)
                    refine_s.append(time.perf_counter() - t0)
                return first_s, refine_s, buffer.astype(bool)

            def direct() -> tuple[float, list[float], np.ndarray]:
                library.reset()
                t0 = time.perf_counter()
                lesion = library.click(first).lesion
                first_s = time.perf_counter() - t0
                refine_s = []
                for point, positive in refine:
                    t0 = time.perf_counter()
                    library.click(point, positive=positive, lesion=lesion)
                    refine_s.append(time.perf_counter() - t0)
                return first_s, refine_s, library.label_map() > 0

            through_client(), direct()  # warm-up, not timed
            for _ in range(repeats):
                masks = {}
                for name, run in (("client", through_client), ("library", direct)):
                    first_s, refine_s, masks[name] = run()
                    timed[name][0].append(first_s)
                    timed[name][1].extend(refine_s)
                same = same and bool(np.array_equal(masks["client"], masks["library"]))
        finally:
            client.close()
            server.should_exit = True
            thread.join(timeout=30)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = statistics.median
    nan = float("nan")
    return RemoteTrip(
        first_client=med(timed["client"][0]),
        first_library=med(timed["library"][0]),
        refine_client=med(timed["client"][1]) if refine else nan,
        refine_library=med(timed["library"][1]) if refine else nan,
        same_masks=same,
    )
