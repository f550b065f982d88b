"""The HTTP API of ``lesionsam serve`` (FastAPI's TestClient): every answer is checked against the library
(:class:`InteractiveSession` with the same prompts) or against SimpleITK / nibabel reading the bytes served."""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient

from lesionsam.data.io import read_image
from lesionsam.inference.boxes import Box
from lesionsam.inference.session import InteractiveSession
from lesionsam.serve.app import create_app

BASE = "http://127.0.0.1"


def _client(root: Path, make_session, **kwargs) -> TestClient:
    return TestClient(create_app(root, make_session=make_session, **kwargs), base_url=BASE)


def _open(client: TestClient, path: str = "case.nii.gz") -> dict:
    r = client.post("/api/sessions", json={"path": path})
    assert r.status_code == 200, r.text
    return r.json()


def _apply(labels: np.ndarray, update: dict) -> None:
    """Write an update's patch (ITK-order region, uint16 i-fastest bytes) into a (D, H, W) label array."""
    (i0, j0, k0), (ni, nj, nk) = update["region"]["start"], update["region"]["size"]
    patch = np.frombuffer(zlib.decompress(base64.b64decode(update["labels"])), dtype="<u2")
    assert patch.size == ni * nj * nk
    labels[k0 : k0 + nk, j0 : j0 + nj, i0 : i0 + ni] = patch.reshape(nk, nj, ni)


def _nifti(payload: bytes, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(payload)
    return path


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


# ------------------------------------------------------------------------------------------ listing, image bytes
def test_lists_the_images_inside_the_root_only(served_case, bright_sessions, tmp_path: Path) -> None:
    root = served_case.root
    (root / "sub").mkdir()
    (root / "sub" / "b.nrrd").write_bytes(b"x")
    (root / ".hidden.nii.gz").write_bytes(b"x")
    (root / "notes.txt").write_text("x")
    outside = tmp_path / "outside.nii.gz"
    outside.write_bytes(b"x")
    (root / "link_out.nii.gz").symlink_to(outside)
    (root / "link_in.nii.gz").symlink_to(root / "case.nii.gz")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "c.nii.gz").write_bytes(b"x")
    (root / "dir_out").symlink_to(tmp_path / "elsewhere")
    (root / "series").mkdir()
    for n in range(3):
        (root / "series" / f"slice{n}.dcm").write_bytes(b"x" * 10)
    client = _client(root, bright_sessions)
    listed = client.get("/api/images").json()
    assert [im["path"] for im in listed["images"]] == ["case.nii.gz", "link_in.nii.gz", "series", "sub/b.nrrd"]
    assert listed["images"][2]["size_bytes"] == 30  # a DICOM folder is one entry
    assert listed["images"][0]["size_bytes"] == served_case.image.stat().st_size


def test_image_and_labels_are_nifti_on_the_input_grid(served_case, bright_sessions, tmp_path: Path, kit) -> None:
    client = _client(served_case.root, bright_sessions)
    info = _open(client)
    assert info["size"] == list(served_case.volume.size_ijk)
    sid = info["session"]
    image_file = _nifti(client.get(f"/api/sessions/{sid}/image").content, tmp_path, "image.nii")
    # SimpleITK reads the served bytes with the input's exact geometry and voxels (an independent reader).
    served = read_image(image_file)
    assert served.same_geometry(served_case.volume, atol=1e-4)
    np.testing.assert_array_equal(served.array, served_case.volume.array)
    # The affine the page gets equals what nibabel reads from the served file (RAS) and SimpleITK's geometry.
    affine = np.asarray(info["ijk_to_ras"])
    np.testing.assert_allclose(nib.load(image_file).affine, affine, atol=1e-4)
    lps = np.diag([-1.0, -1.0, 1.0]) @ (affine[:3, :3] @ [3, 5, 7] + affine[:3, 3])
    sitk_image = sitk.ReadImage(str(served_case.image))
    np.testing.assert_allclose(lps, sitk_image.TransformIndexToPhysicalPoint((3, 5, 7)), atol=1e-4)

    client.post(f"/api/sessions/{sid}/click", json={"point": kit.blob_centre_ijk(1)})
    labels_file = _nifti(client.get(f"/api/sessions/{sid}/labels").content, tmp_path, "labels.nii")
    lab = read_image(labels_file)
    assert lab.same_geometry(served_case.volume, atol=1e-4) and lab.array.dtype == np.uint16
    assert _dice(lab.array == 1, served_case.labels == 1) > 0.85


# ------------------------------------------------------------------------------------------ interactions
def test_click_negative_box_undo_save_match_the_library(served_case, bright_sessions, tmp_path: Path, kit) -> None:
    volume = read_image(served_case.image)  # what the server reads (float32 spacing in the file)
    client = _client(served_case.root, bright_sessions)
    info = _open(client)
    sid = info["session"]
    reference = InteractiveSession(kit.bright_predictor(), volume)
    patched = np.zeros(volume.spatial_shape, np.uint16)

    c1 = kit.blob_centre_ijk(1)
    up = client.post(f"/api/sessions/{sid}/click", json={"point": c1}).json()
    ref = reference.click(c1)
    assert up["lesion"] == ref.lesion == 1 and up["volume_ml"] == pytest.approx(ref.volume_ml)
    _apply(patched, up)
    np.testing.assert_array_equal(patched, reference.label_map())
    assert _dice(patched == 1, served_case.labels == 1) > 0.85  # the click landed on blob 1 (ITK order)

    neg = (c1[0], c1[1], c1[2])
    up = client.post(f"/api/sessions/{sid}/click", json={"point": neg, "positive": False, "lesion": 1}).json()
    reference.click(neg, positive=False, lesion=1)
    _apply(patched, up)
    np.testing.assert_array_equal(patched, reference.label_map())
    assert patched[c1[2], c1[1], c1[0]] == 0  # the negative click removed its neighbourhood

    i, j, k = kit.blob_centre_ijk(2)
    box = {"lo": [i - 6, j - 6, k], "hi": [i + 6, j + 6, k]}  # a 2D box on slice k
    up = client.post(f"/api/sessions/{sid}/box", json=box).json()
    ref = reference.box(Box(lo=tuple(box["lo"]), hi=tuple(box["hi"])))
    assert up["lesion"] == ref.lesion == 2
    _apply(patched, up)
    np.testing.assert_array_equal(patched, reference.label_map())
    assert _dice(patched == 2, served_case.labels == 2) > 0.8

    up = client.post(f"/api/sessions/{sid}/lesions/1/undo").json()
    reference.undo(1)
    _apply(patched, up)
    np.testing.assert_array_equal(patched, reference.label_map())
    lesions = client.get(f"/api/sessions/{sid}/lesions").json()
    assert [(les["id"], les["n_prompts"]) for les in lesions] == [(1, 1), (2, 1)]
    assert lesions[0]["volume_ml"] == pytest.approx((patched == 1).sum() * np.prod(volume.spacing) / 1000)

    saved = client.post(f"/api/sessions/{sid}/save", json={}).json()
    assert saved == {"mask": "case_lesions.nii.gz", "prompts": "case_lesions.prompts.json"}
    mask = read_image(served_case.root / saved["mask"])
    assert mask.same_geometry(read_image(served_case.image), atol=1e-6)
    np.testing.assert_array_equal(mask.array, reference.label_map())
    record = json.loads((served_case.root / saved["prompts"]).read_text())
    assert record == json.loads(json.dumps(reference.prompts_record()))

    download = client.get(f"/api/sessions/{sid}/download", params={"what": "mask"})
    assert download.headers["content-disposition"] == 'attachment; filename="case_lesions.nii.gz"'
    got = read_image(_nifti(gzip.decompress(download.content), tmp_path, "down.nii"))
    np.testing.assert_array_equal(got.array, reference.label_map())
    assert json.loads(client.get(f"/api/sessions/{sid}/download", params={"what": "prompts"}).content) == record


def test_redo_and_delete(served_case, bright_sessions, kit) -> None:
    client = _client(served_case.root, bright_sessions)
    sid = _open(client)["session"]
    patched = np.zeros(served_case.volume.spatial_shape, np.uint16)
    _apply(patched, client.post(f"/api/sessions/{sid}/click", json={"point": kit.blob_centre_ijk(1)}).json())
    full = patched.copy()
    _apply(patched, client.post(f"/api/sessions/{sid}/lesions/1/undo").json())
    assert not patched.any()
    _apply(patched, client.post(f"/api/sessions/{sid}/lesions/1/redo").json())
    np.testing.assert_array_equal(patched, full)
    r = client.post(f"/api/sessions/{sid}/lesions/1/redo")
    assert r.status_code == 400 and r.json() == {"detail": "lesion 1: nothing to redo"}
    up = client.delete(f"/api/sessions/{sid}/lesions/1").json()
    _apply(patched, up)
    assert not patched.any() and up["lesions"] == []
    assert client.post(f"/api/sessions/{sid}/lesions/1/undo").status_code == 404


def test_upload_opens_a_session_and_saves_at_the_top_of_the_root(served_case, bright_sessions, kit) -> None:
    client = _client(served_case.root, bright_sessions)
    payload = served_case.image.read_bytes()
    r = client.post(
        "/api/sessions/upload",
        params={"filename": "../../scan.nii.gz"},  # only the file name counts
        content=payload,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["name"] == "scan.nii.gz" and info["size"] == list(served_case.volume.size_ijk)
    client.post(f"/api/sessions/{info['session']}/click", json={"point": kit.blob_centre_ijk(2)})
    saved = client.post(f"/api/sessions/{info['session']}/save").json()
    assert saved["mask"] == "scan_lesions.nii.gz"
    mask = read_image(served_case.root / "scan_lesions.nii.gz")
    assert mask.same_geometry(served_case.volume, atol=1e-4)
    assert _dice(mask.array == 1, served_case.labels == 2) > 0.8
    assert client.delete(f"/api/sessions/{info['session']}").status_code == 204


def test_two_concurrent_sessions_are_isolated(served_case, bright_sessions, kit) -> None:
    client = _client(served_case.root, bright_sessions)
    a, b = _open(client)["session"], _open(client)["session"]
    assert a != b and len(a) >= 32
    jobs = [(a, kit.blob_centre_ijk(1)), (b, kit.blob_centre_ijk(2))]
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda job: client.post(f"/api/sessions/{job[0]}/click", json={"point": job[1]}), jobs))
    assert all(r.status_code == 200 for r in answers)
    for (sid, point), r in zip(jobs, answers, strict=True):
        reference = InteractiveSession(kit.bright_predictor(), read_image(served_case.image))
        reference.click(point)
        patched = np.zeros(served_case.volume.spatial_shape, np.uint16)
        _apply(patched, r.json())
        labels = read_image_bytes(client.get(f"/api/sessions/{sid}/labels").content)
        np.testing.assert_array_equal(labels, reference.label_map())  # only its own click
        np.testing.assert_array_equal(patched, labels)
        assert [les["id"] for les in client.get(f"/api/sessions/{sid}/lesions").json()] == [1]
    assert client.delete(f"/api/sessions/{a}").status_code == 204
    assert client.get(f"/api/sessions/{a}/lesions").status_code == 404
    assert client.get(f"/api/sessions/{b}/lesions").status_code == 200


def read_image_bytes(payload: bytes) -> np.ndarray:
    """(D, H, W) array of NIfTI bytes (nibabel, independent of the server's SimpleITK)."""
    image = nib.Nifti1Image.from_bytes(payload)
    return np.asarray(image.dataobj).transpose(2, 1, 0)


def test_the_real_tiny_model_gives_the_library_mask(served_case, kit) -> None:
    predictor = kit.tiny_predictor()
    client = _client(served_case.root, lambda volume: InteractiveSession(predictor, volume))
    sid = _open(client)["session"]
    point = kit.blob_centre_ijk(1)
    up = client.post(f"/api/sessions/{sid}/click", json={"point": point}).json()
    reference = InteractiveSession(kit.tiny_predictor(), read_image(served_case.image))
    reference.click(point)
    expected = reference.label_map()
    assert expected.any(), "the seeded tiny model must segment something for this test to mean anything"
    patched = np.zeros_like(expected)
    _apply(patched, up)
    np.testing.assert_array_equal(patched, expected)
    np.testing.assert_array_equal(read_image_bytes(client.get(f"/api/sessions/{sid}/labels").content), expected)


# ------------------------------------------------------------------------------------------ security, bad requests
@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("../outside.nii.gz", 403, "contains '..'"),
        ("sub/../../outside.nii.gz", 403, "contains '..'"),
        ("/etc/passwd", 403, "is absolute"),
        ("C:/Windows/x.nii", 403, "is absolute"),
        ("link_out.nii.gz", 403, "leads outside the served folder"),
        ("dir_out/c.nii.gz", 403, "leads outside the served folder"),
        ("sub\\case.nii.gz", 403, "backslashes"),
        ("", 403, "is empty"),
        ("missing.nii.gz", 404, "no such file"),
        ("notes.txt", 400, "not a readable image"),
    ],
)
def test_paths_outside_the_root_are_refused(served_case, bright_sessions, tmp_path, path, status, words) -> None:
    outside = tmp_path / "outside.nii.gz"
    outside.write_bytes(served_case.image.read_bytes())
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "c.nii.gz").write_bytes(served_case.image.read_bytes())
    (served_case.root / "link_out.nii.gz").symlink_to(outside)
    (served_case.root / "dir_out").symlink_to(tmp_path / "elsewhere")
    (served_case.root / "notes.txt").write_text("not an image")
    client = _client(served_case.root, bright_sessions)
    r = client.post("/api/sessions", json={"path": path})
    assert r.status_code == status and words in r.json()["detail"], r.text
    assert client.get("/api/images").status_code == 200  # still serving


def test_save_stays_inside_the_root_and_never_overwrites_the_input(served_case, bright_sessions, tmp_path) -> None:
    client = _client(served_case.root, bright_sessions)
    sid = _open(client)["session"]
    (served_case.root / "out_link").symlink_to(tmp_path)
    cases = [
        ({"path": "../escape.nii.gz"}, 403),
        ({"path": str(tmp_path / "abs.nii.gz")}, 403),
        ({"path": "out_link/escape.nii.gz"}, 403),
        ({"path": "case.nii.gz", "overwrite": True}, 400),  # the input itself
        ({"path": "mask.txt"}, 400),
        ({"path": "sub/m.nii.gz", "colour": "red"}, 422),
    ]
    for body, status in cases:
        r = client.post(f"/api/sessions/{sid}/save", json=body)
        assert r.status_code == status, (body, r.text)
    assert not (tmp_path / "escape.nii.gz").exists() and not (tmp_path / "abs.nii.gz").exists()
    assert client.post(f"/api/sessions/{sid}/save", json={"path": "sub/m.nrrd"}).status_code == 200
    r = client.post(f"/api/sessions/{sid}/save", json={"path": "sub/m.nrrd"})
    assert r.status_code == 409 and "overwrite" in r.json()["detail"]
    assert client.post(f"/api/sessions/{sid}/save", json={"path": "sub/m.nrrd", "overwrite": True}).status_code == 200
    assert read_image(served_case.root / "sub" / "m.nrrd").same_geometry(served_case.volume, atol=1e-4)
    assert (served_case.root / "sub" / "m.prompts.json").is_file()
    assert read_image(served_case.image).array.tobytes() == served_case.volume.array.tobytes()


def test_bad_requests_get_one_clear_message_and_the_server_keeps_serving(served_case, bright_sessions, kit) -> None:
    client = _client(served_case.root, bright_sessions, max_upload_mb=0.01)
    sid = _open(client)["session"]
    octet = {"Content-Type": "application/octet-stream"}
    checks = [
        (
            client.post("/api/sessions/upload", params={"filename": "big.nii.gz"}, content=b"0" * 20000, headers=octet),
            413,
            "limit",
        ),
        (
            client.post(
                "/api/sessions/upload",
                params={"filename": "a.nii.gz"},
                content=b"x" * 10,
                headers={"Content-Type": "text/plain"},
            ),
            415,
            "application/octet-stream",
        ),
        (
            client.post("/api/sessions/upload", params={"filename": "a.exe"}, content=b"x", headers=octet),
            400,
            "upload one file",
        ),
        (
            client.post("/api/sessions/upload", params={"filename": "a.nii"}, content=b"garbage", headers=octet),
            400,
            "not a readable image",
        ),
        (client.post("/api/sessions/nosuchsession/click", json={"point": [1, 2, 3]}), 404, "no open session"),
        (client.get("/api/sessions/nosuchsession/image"), 404, "no open session"),
        (
            client.post(
                f"/api/sessions/{sid}/click", content=b"{not json", headers={"Content-Type": "application/json"}
            ),
            422,
            "JSON",
        ),
        (client.post(f"/api/sessions/{sid}/click", json={"point": [1, 2]}), 422, "point"),
        (client.post(f"/api/sessions/{sid}/click", json={"point": [1, 2, 3], "extra": 1}), 422, "extra"),
        (client.post(f"/api/sessions/{sid}/click", json={"point": [1, 2, 300]}), 400, "outside the image"),
        (client.post(f"/api/sessions/{sid}/click", json={"point": [1, 2, 3], "positive": False}), 400, "positive"),
        (client.post(f"/api/sessions/{sid}/click", json={"point": [1, 2, 3], "lesion": 7}), 404, "lesion 7"),
        (client.post(f"/api/sessions/{sid}/box", json={"lo": [5, 5, 5], "hi": [4, 9, 9]}), 400, "lo"),
        (client.post(f"/api/sessions/{sid}/box", json={"lo": [5, 5, 5], "hi": [5, 5, 9]}), 400, "flat"),
        (client.get(f"/api/sessions/{sid}/download", params={"what": "secrets"}), 422, "what"),
        (client.post(f"/api/sessions/{sid}/click", json={"point": [1, 2, 3], "pad": "x" * 100_000}), 413, "kB"),
    ]
    for r, status, words in checks:
        body = r.json()
        assert r.status_code == status and list(body) == ["detail"] and isinstance(body["detail"], str), r.text
        assert words in body["detail"], (status, body)
        assert "\n" not in body["detail"]
    # still serving, and the session still works
    assert client.get("/api/images").status_code == 200
    assert client.post(f"/api/sessions/{sid}/click", json={"point": kit.blob_centre_ijk(1)}).status_code == 200


def test_host_header_and_cors(served_case, bright_sessions) -> None:
    client = _client(served_case.root, bright_sessions)
    r = client.get("/api/images", headers={"Host": "attacker.example:80"})  # DNS rebinding
    assert r.status_code == 400 and "not served" in r.json()["detail"]
    for host in ("127.0.0.1:8765", "localhost", "[::1]:8765"):
        assert client.get("/api/images", headers={"Host": host}).status_code == 200
    r = client.get("/api/images", headers={"Origin": "http://other.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    allowed = _client(served_case.root, bright_sessions, cors_origins=["http://viewer.example"])
    r = allowed.get("/api/images", headers={"Origin": "http://viewer.example"})
    assert r.headers["access-control-allow-origin"] == "http://viewer.example"
    assert (
        "access-control-allow-origin" not in allowed.get("/api/images", headers={"Origin": "http://x.example"}).headers
    )


def test_too_many_sessions_and_idle_eviction(served_case, bright_sessions) -> None:
    app = create_app(served_case.root, make_session=bright_sessions, max_sessions=2)
    client = TestClient(app, base_url=BASE)
    first, _ = _open(client)["session"], _open(client)["session"]
    r = client.post("/api/sessions", json={"path": "case.nii.gz"})
    assert r.status_code == 429 and "close one" in r.json()["detail"]
    app.state.ctx.store.get(first).last_used -= 3600  # the first one idle for an hour
    assert client.post("/api/sessions", json={"path": "case.nii.gz"}).status_code == 200
    assert client.get(f"/api/sessions/{first}").status_code == 404


def test_page_openapi_and_vendored_niivue(served_case, bright_sessions) -> None:
    import hashlib

    from lesionsam.serve.app import STATIC_DIR

    client = _client(served_case.root, bright_sessions)
    page = client.get("/")
    assert page.status_code == 200 and '<script type="module" src="/static/lesionsam.js">' in page.text
    script = client.get("/static/lesionsam.js").text
    assert "from './vendor/niivue/index.js'" in script
    assert "://" not in page.text and "://" not in script  # nothing fetched from elsewhere (no CDN)
    niivue = client.get("/static/vendor/niivue/index.js")
    assert niivue.status_code == 200 and "javascript" in niivue.headers["content-type"]
    version = (STATIC_DIR / "vendor" / "niivue" / "VERSION").read_text()
    assert hashlib.sha256(niivue.content).hexdigest() in version  # the vendored file is the one described
    assert "BSD" in (STATIC_DIR / "vendor" / "niivue" / "LICENSE").read_text()
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/images", "/api/sessions", "/api/sessions/{sid}/click", "/api/sessions/{sid}/box"} <= set(paths)


def test_api_docs_use_the_vendored_swagger_ui(served_case, bright_sessions) -> None:
    import hashlib

    from lesionsam.serve.app import STATIC_DIR

    client = _client(served_case.root, bright_sessions)
    page = client.get("/docs")
    assert page.status_code == 200 and "://" not in page.text  # no CDN: FastAPI's default loads from jsdelivr
    vendor = STATIC_DIR / "vendor" / "swagger-ui"
    version = (vendor / "VERSION").read_text()
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"):
        assert f'"/static/vendor/swagger-ui/{name}"' in page.text
        served = client.get(f"/static/vendor/swagger-ui/{name}")
        assert served.status_code == 200 and hashlib.sha256(served.content).hexdigest() in version, name
    assert "Apache License" in (vendor / "LICENSE").read_text() and "SmartBear" in (vendor / "NOTICE").read_text()
    assert client.get("/redoc").status_code == 404  # ReDoc would load its script from a CDN: not served


def test_root_must_be_a_folder(tmp_path: Path, bright_sessions) -> None:
    with pytest.raises(ValueError, match="not an existing folder"):
        create_app(tmp_path / "missing", make_session=bright_sessions)
