"""Server round trip of ``lesionsam serve``: the same clicks through the HTTP API and on the library, side by side.

:func:`bench_round_trip` starts the real application under uvicorn on a free loopback port (in a thread of this
process), opens the image through ``POST /api/sessions``, and times with an HTTP client (:mod:`urllib.request`, no
extra dependency) a first click on a new lesion and refining clicks on it, and the same clicks on an
:class:`InteractiveSession` of the same image called directly. The difference is what the web layer costs (JSON, the
patch's base64, the lesion list, the loopback socket). One untimed sequence warms each way up, then the two ways
alternate, repeat by repeat, so that the load of a shared machine touches both alike. Timings are medians; nothing
here asserts a speed.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lesionsam.data.io import Volume, read_image, write_image
from lesionsam.inference.session import InteractiveSession

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI


@dataclass(frozen=True)
class RoundTrip:
    """Median seconds of each kind of interaction, through HTTP and on the library; bytes of the answers.

    Attributes:
        first_http, first_direct: a first positive click (new lesion: window, encoder, decoder, region).
        refine_http, refine_direct: a refining click on that lesion (decoder only).
        answer_bytes: median size of a click's JSON answer (the patch is base64 inside it).
        same_masks: after every repeat the server's label map equals the library's (the work compared is the same
            work). Each repeat's lesion is deleted afterwards (untimed), so every repeat starts from the same state.
    """

    first_http: float
    first_direct: float
    refine_http: float
    refine_direct: float
    answer_bytes: int
    same_masks: bool

    def table(self) -> str:
        rows = [
            ("first click", self.first_http, self.first_direct),
            ("refining click", self.refine_http, self.refine_direct),
        ]
        lines = [f"{'':16s} {'HTTP (s)':>10s} {'library (s)':>12s} {'overhead (s)':>13s}"]
        lines += [f"{name:16s} {h:10.4f} {d:12.4f} {h - d:13.4f}" for name, h, d in rows]
        lines.append(f"answer of a click: {self.answer_bytes:,} bytes; same masks: {self.same_masks}")
        return "\n".join(lines)


def _start(app: FastAPI) -> tuple[uvicorn.Server, threading.Thread, str]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the benchmark's server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


def bench_round_trip(
    image: Volume | str | Path,
    make_session: Callable[[Volume], InteractiveSession],
    *,
    first: tuple[int, int, int],
    refine: Sequence[tuple[tuple[int, int, int], bool]],
    repeats: int = 3,
) -> RoundTrip:
    """Time clicks through the HTTP API of a real server and on the library directly.

    Args:
        image: the image (a volume is written to a temporary served folder as NIfTI).
        make_session: ``volume -> InteractiveSession`` (the model already loaded), as ``lesionsam serve`` builds it.
        first: the first (positive) click, voxel (i, j, k).
        refine: refining clicks ``((i, j, k), positive)`` on the lesion the first click started.
        repeats: how many times the sequence runs each way (a new lesion each time; medians are reported).
    """
    from lesionsam.serve.app import create_app

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    root = Path(tempfile.mkdtemp(prefix="lesionsam-bench-"))
    try:
        volume = image if isinstance(image, Volume) else read_image(image)
        write_image(volume.array, root / "image.nii.gz", reference=volume, compress=False)
        volume = read_image(root / "image.nii.gz")
        server, thread, url = _start(create_app(root, make_session=make_session))
        try:
            sid = json.loads(_call(url + "/api/sessions", {"path": "image.nii.gz"}))["session"]
            session = make_session(volume)

            def over_http() -> tuple[float, list[float], int, np.ndarray]:
                t0 = time.perf_counter()
                answer = _call(f"{url}/api/sessions/{sid}/click", {"point": list(first)})
                first_s = time.perf_counter() - t0
                lesion = json.loads(answer)["lesion"]
                refine_s = []
                for point, positive in refine:
                    body = {"point": list(point), "positive": positive, "lesion": lesion}
                    t0 = time.perf_counter()
                    _call(f"{url}/api/sessions/{sid}/click", body)
                    refine_s.append(time.perf_counter() - t0)
                labels = _labels(_call(f"{url}/api/sessions/{sid}/labels"))
                _call(f"{url}/api/sessions/{sid}/lesions/{lesion}", method="DELETE")  # the next repeat starts afresh
                return first_s, refine_s, len(answer), labels

            def direct() -> tuple[float, list[float], int, np.ndarray]:
                t0 = time.perf_counter()
                lesion = session.click(tuple(first)).lesion
                first_s = time.perf_counter() - t0
                refine_s = []
                for point, positive in refine:
                    t0 = time.perf_counter()
                    session.click(tuple(point), positive=positive, lesion=lesion)
                    refine_s.append(time.perf_counter() - t0)
                labels = session.label_map()
                session.delete(lesion)
                return first_s, refine_s, 0, labels

            over_http(), direct()  # warm-up, not timed (first allocations, kernel selection)
            timed: dict[str, tuple[list[float], list[float], list[int]]] = {
                "http": ([], [], []),
                "direct": ([], [], []),
            }
            same = True
            for _ in range(repeats):  # interleaved, so that a change of machine load touches both ways alike
                results = {}
                for name, run in (("http", over_http), ("direct", direct)):
                    first_s, refine_s, size, results[name] = run()
                    timed[name][0].append(first_s)
                    timed[name][1].extend(refine_s)
                    timed[name][2].append(size)
                same = same and bool(np.array_equal(results["http"], results["direct"]))
        finally:
            server.should_exit = True
            thread.join(timeout=30)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = statistics.median
    return RoundTrip(
        first_http=med(timed["http"][0]),
        first_direct=med(timed["direct"][0]),
        refine_http=med(timed["http"][1]) if refine else float("nan"),
        refine_direct=med(timed["direct"][1]) if refine else float("nan"),
        answer_bytes=int(med(timed["http"][2])),
        same_masks=same,
    )


def _call(url: str, body: dict | None = None, *, method: str | None = None) -> bytes:
    """GET (no body), POST JSON, or ``method``; the answer's bytes (an HTTP error raises)."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data else {}
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=600) as answer:
        return answer.read()


def _labels(payload: bytes) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.Nifti1Image.from_bytes(payload).dataobj).transpose(2, 1, 0)
