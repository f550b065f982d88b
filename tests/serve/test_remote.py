"""nnInteractive's remote protocol in ``lesionsam serve``, driven by the real ``nninteractive-client`` (2.6.0) on a
free loopback port: the client's target buffer equals the engine's label map for the same prompts (library calls on
the same array and spacing), undo restores exactly, boxes, leases, keys and bad requests."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import nnInteractive.inference.remote as remote  # noqa: E402  (nninteractive-client, of the test extra)
import numpy as np
import pytest
from nnInteractive.inference.remote.serialization import pack_array, unpack_array  # noqa: E402

from lesionsam.data.io import Volume
from lesionsam.inference.boxes import Box
from lesionsam.inference.session import InteractiveSession
from lesionsam.serve.app import create_app
from lesionsam.serve.remote.nnia import pack, unpack

Client = remote.nnInteractiveRemoteInferenceSession


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` on a free port of 127.0.0.1 (uvicorn in a thread); yields its base URL."""
    import uvicorn

    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def case(kit: Any) -> tuple[np.ndarray, list[float], np.ndarray]:
    """The client's (D, H, W) image, its spacing in that order (anisotropic: 2.0, 0.9, 0.8 mm) and the blobs."""
    volume, labels = kit.oblique_case()
    sx, sy, sz = volume.spacing
    return np.ascontiguousarray(volume.array), [sz, sy, sx], labels


@pytest.fixture
def server(served_case: Any, bright_sessions: Callable) -> Iterator[str]:
    app = create_app(served_case.root, make_session=bright_sessions, max_sessions=2, max_upload_mb=64)
    with serving(app) as url:
        yield url


def library(kit: Any, image: np.ndarray, spacing: list[float]) -> InteractiveSession:
    """The engine on the same array and spacing, as a library user opens it (axes (a0, a1, a2) = (D, H, W))."""
    volume = Volume(image, tuple(spacing[::-1]), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))  # type: ignore[arg-type]
    return InteractiveSession(kit.bright_predictor(), volume)


def connect(url: str, image: np.ndarray, spacing: list[float], **kw: Any) -> tuple[Any, np.ndarray]:
    client = Client(url, **kw)
    client.set_image(image[None], {"spacing": spacing})
    buffer = np.zeros(image.shape, np.uint8)
    client.set_target_buffer(buffer)
    return client, buffer


def test_points_and_undo_through_the_client_equal_the_library(server: str, case: Any, kit: Any) -> None:
    image, spacing, blobs = case
    client, buffer = connect(server, image, spacing)
    try:
        assert client.original_image_shape == (1, *image.shape)
        caps = client.supported_interactions
        assert caps == {"points": True, "bbox2d": True, "bbox3d": True, "scribble": False, "lasso": False}
        assert client.supports_undo and "Apache-2.0" in client.license
        lib = library(kit, image, spacing)
        d, h, w, _ = kit.blobs[0]
        bbox = client.add_point_interaction((d, h, w), include_interaction=True)
        lib.click((w, h, d))
        expected = lib.label_map() > 0
        assert buffer.sum() > 0 and np.array_equal(buffer, expected)
        assert (buffer.astype(bool) & (blobs == 1)).sum() > 0.8 * (blobs == 1).sum()  # the clicked blob, right axes
        assert not (buffer.astype(bool) & (blobs == 2)).any()
        assert np.prod([hi - lo for lo, hi in bbox]) < buffer.size / 10  # only the changed sub-volume came back
        after_positive = buffer.copy()
        client.add_point_interaction((d, h, w + 3), include_interaction=False)
        lib.click((w + 3, h, d), positive=False, lesion=1)
        assert np.array_equal(buffer, lib.label_map() > 0)
        assert not np.array_equal(buffer, after_positive)  # the negative point removed a ball
        assert client.undo() is True
        assert np.array_equal(buffer, after_positive)  # exactly as before the negative point
        assert client.undo() is True and buffer.sum() == 0  # before the first point: empty
        assert client.undo() is False  # nothing left to undo
        client.add_point_interaction((d, h, w), include_interaction=True, run_prediction=False)
        assert buffer.sum() == 0
        assert client._predict() is not None and np.array_equal(buffer, after_positive)
        assert client._predict() is None  # nothing queued
    finally:
        client.close()


def test_2d_and_3d_boxes_equal_the_library(server: str, case: Any, kit: Any) -> None:
    image, spacing, blobs = case
    client, buffer = connect(server, image, spacing)
    try:
        d, h, w, _ = kit.blobs[0]
        for box_coords in (
            [[d, d + 1], [h - 8, h + 9], [w - 4, w + 5]],
            [[d - 4, d + 5], [h - 8, h + 9], [w - 4, w + 5]],
        ):
            client.reset_interactions()
            assert buffer.sum() == 0
            client.add_bbox_interaction(box_coords, include_interaction=True)
            (lo0, hi0), (lo1, hi1), (lo2, hi2) = box_coords
            lib = library(kit, image, spacing)
            lib.box(Box(lo=(lo2, lo1, lo0), hi=(hi2 - 1, hi1 - 1, hi0 - 1)))
            assert buffer.sum() > 0 and np.array_equal(buffer, lib.label_map() > 0)
            assert (buffer.astype(bool) & (blobs == 1)).any() and not (buffer.astype(bool) & (blobs == 2)).any()
        with pytest.raises(httpx.HTTPStatusError) as info:
            client.add_bbox_interaction([[d, d + 1], [0, 5], [0, 5]], include_interaction=False)
        assert info.value.response.status_code == 400 and "exclude boxes" in info.value.response.json()["detail"]
        assert buffer.sum() > 0 and client.undo() is True  # still serving: undo goes back to the 2D box's mask
    finally:
        client.close()


def test_two_clients_hold_two_leases_and_a_third_waits(server: str, case: Any, kit: Any) -> None:
    image, spacing, blobs = case
    flipped = np.ascontiguousarray(image[:, :, ::-1])
    first, buf1 = connect(server, image, spacing)
    second, buf2 = connect(server, flipped, spacing)
    try:
        (d1, h1, w1, _), (d2, h2, w2, _) = kit.blobs
        first.add_point_interaction((d1, h1, w1), include_interaction=True)
        second.add_point_interaction((d2, h2, image.shape[2] - 1 - w2), include_interaction=True)
        lib1, lib2 = library(kit, image, spacing), library(kit, flipped, spacing)
        lib1.click((w1, h1, d1))
        lib2.click((image.shape[2] - 1 - w2, h2, d2))
        assert np.array_equal(buf1, lib1.label_map() > 0) and np.array_equal(buf2, lib2.label_map() > 0)
        assert (buf2[:, :, ::-1].astype(bool) & (blobs == 2)).any() and not (buf2[:, :, ::-1] & (blobs == 1)).any()
        before = buf2.copy()
        assert first.undo() is True and buf1.sum() == 0
        second.add_point_interaction((d2, h2, image.shape[2] - 1 - w2), include_interaction=True)
        assert np.array_equal(buf2, before)  # the first client's undo left the second's object alone
        with pytest.raises(remote.ServerAtCapacityError):
            Client(server)
        retry = httpx.post(f"{server}/claim")
        assert retry.status_code == 503 and int(retry.headers["Retry-After"]) > 0
        second.close()
        third = Client(server)  # a released lease frees its slot
        third.close()
    finally:
        first.close()
        second.close()


def test_a_wrong_or_expired_lease_is_refused_as_the_client_expects(
    served_case: Any, bright_sessions: Callable, case: Any
) -> None:
    image, spacing, _ = case
    app = create_app(served_case.root, make_session=bright_sessions, lease_seconds=(600.0, 0.5))
    with serving(app) as url:
        client, buffer = connect(url, image, spacing)
        try:
            assert client.liveness_timeout_seconds == 0.5 and client.idle_timeout_seconds == 600.0
            assert 0 < client.lease_status()["remaining_seconds"] <= 600.0
            time.sleep(0.8)  # no request for longer than the liveness timeout (the client beats every 5 s at least)
            with pytest.raises(remote.SessionExpiredError):
                client.add_point_interaction((10, 20, 42), include_interaction=True)
            assert buffer.sum() == 0
        finally:
            client.close()
        fresh, _ = connect(url, image, spacing)  # the server goes on serving new clients
        try:
            fresh._http.headers["X-Lease-Token"] = "not-a-lease"
            with pytest.raises(remote.SessionExpiredError):
                fresh.add_point_interaction((10, 20, 42), include_interaction=True)
            answer = httpx.post(f"{url}/heartbeat", headers={"X-Lease-Token": "not-a-lease"})
            assert answer.status_code == 410 and "expired or is unknown" in answer.json()["detail"]
        finally:
            fresh.close()


def test_the_server_keeps_serving_after_each_bad_request(server: str, case: Any, kit: Any) -> None:
    image, spacing, _ = case
    token = httpx.post(f"{server}/claim").json()["lease_token"]
    lease = {"X-Lease-Token": token}

    def post(path: str, **kw: Any) -> httpx.Response:
        return httpx.post(f"{server}{path}", headers={**lease, **kw.pop("headers", {})}, **kw)

    point = {"coordinates": [10, 20, 42], "include_interaction": True}
    binary = {"Content-Type": "application/octet-stream"}
    bad = [
        (post("/add_point_interaction", json=point), 400, "no image yet"),
        (post("/set_image", content=b"not an array at all", headers=binary), 400, "not an NNIA array"),
        (post("/set_image", content=pack(image[None])[:-10], headers=binary), 400, "NNIA"),
        (post("/set_image", content=pack(image), headers=binary), 400, "must be 4-D"),
        (post("/set_image", content=pack(np.stack([image, image])), headers=binary), 400, "send one channel"),
        (post("/set_image", content=pack(image[None]), headers={**binary, "X-Meta": "{"}), 422, "not valid JSON"),
        (post("/set_image", content=pack(image[None]), headers={"Content-Type": "text/plain"}), 415, "NNIA"),
        (post("/set_image", content=b"x" * (65 << 20), headers=binary), 413, "limit of 64 MB"),
    ]
    meta = {**binary, "X-Meta": json.dumps({"image_properties": {"spacing": spacing}})}
    assert post("/set_image", content=pack_array(image[None]), headers=meta).json() == {
        "original_image_shape": [1, *image.shape]
    }
    bad += [
        (
            post(
                "/set_image",
                content=pack(image[None]),
                headers={**binary, "X-Meta": '{"image_properties": {"spacing": [1, 0, 1]}}'},
            ),
            400,
            "three positive numbers",
        ),
        (post("/add_point_interaction", json={**point, "coordinates": [10, 20, 60]}), 400, "outside the image"),
        (post("/add_point_interaction", json={**point, "include_interaction": False}), 400, "positive point"),
        (post("/add_point_interaction", json={"coordinates": "x"}), 422, "coordinates"),
        (post("/add_point_interaction", content=b"{", headers={"Content-Type": "application/json"}), 422, "JSON"),
        (
            post("/add_bbox_interaction", json={"bbox_coords": [[5, 5], [0, 9], [0, 9]], "include_interaction": True}),
            400,
            "empty",
        ),
        (post("/set_target_buffer", json={"shape": [1, 2, 3], "dtype": "uint8"}), 400, "differs from the image"),
        (post("/add_scribble_interaction", content=b""), 400, "not supported"),
        (post("/undo", headers={"X-Lease-Token": "nope"}), 410, "expired or is unknown"),
    ]
    for answer, status, words in bad:
        assert answer.status_code == status and words in answer.json()["detail"], (answer.status_code, answer.text)
    # after all of them the same lease still works, and its image was the last good one
    good = post("/add_point_interaction", json=point)
    assert good.status_code == 200 and json.loads(good.headers["X-Meta"])["ran_prediction"] is True
    patch = unpack_array(good.content)
    lib = library(kit, image, spacing)
    lib.click((42, 20, 10))
    (lo0, hi0), (lo1, hi1), (lo2, hi2) = json.loads(good.headers["X-Meta"])["bbox"]
    assert np.array_equal(patch, (lib.label_map() > 0)[lo0:hi0, lo1:hi1, lo2:hi2].astype(np.uint8))
    assert httpx.post(f"{server}/release", headers=lease).json() == {"released": True}
    assert httpx.post(f"{server}/release", headers=lease).status_code == 410


def test_an_api_key_guards_the_protocol_but_not_healthz(served_case: Any, bright_sessions: Callable) -> None:
    app = create_app(served_case.root, make_session=bright_sessions, api_key="s3cret", model_license="CC0 (test)")
    with serving(app) as url:
        assert httpx.get(f"{url}/healthz").json() == {"ok": True}
        with pytest.raises(httpx.HTTPStatusError) as info:
            Client(url, api_key="wrong")
        assert info.value.response.status_code == 401 and info.value.response.headers["WWW-Authenticate"] == "Bearer"
        client = Client(url, api_key="s3cret")
        try:
            assert client.ping() and client.license == "CC0 (test)"
        finally:
            client.close()
        assert httpx.get(f"{url}/api/info").status_code == 200  # the page's own API is unchanged


def test_nnia_arrays_read_and_written_here_agree_with_the_client() -> None:
    rng = np.random.default_rng(0)
    for array in (rng.normal(size=(1, 7, 9, 11)).astype(np.float32), rng.integers(0, 2, (5, 6, 7)).astype(np.uint8)):
        assert np.array_equal(unpack(pack_array(array), max_bytes=1 << 20), array)
        assert np.array_equal(unpack_array(pack(array)), array)
    with pytest.raises(ValueError, match="over the server's limit"):
        unpack(pack_array(np.zeros((100, 100), np.float64)), max_bytes=1000)
    with pytest.raises(ValueError, match="dtype 'complex64' is not supported"):
        unpack(pack_array(np.zeros(3, np.complex64)), max_bytes=1000)
