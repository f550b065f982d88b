"""Error answers of ``lesionsam serve`` as a client and a security reviewer see them (issue 26): files named relative
to the served folder (or an upload by its own name), never the server's absolute paths, temp folder or a library's
exception text; a save onto a planted symlink refused as the README says; malformed JSON 422 wherever it is sent.

Every test here (and every other serve test) also passes the guard of ``conftest.error_answers``: no error answer
it provokes names the test's folders, the system temp folder or raw exception text.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lesionsam.serve.app import create_app

BASE = "http://127.0.0.1"
OCTET = {"Content-Type": "application/octet-stream"}
UNREADABLE = "not a readable image (corrupt, truncated or unsupported format)"


def _client(root: Path, make_session, **kwargs) -> TestClient:
    app = create_app(root, make_session=make_session, **kwargs)
    return TestClient(app, base_url=BASE, raise_server_exceptions=False)  # a crash answers 500, as it would live


def _open(client: TestClient, path: str = "case.nii.gz") -> str:
    r = client.post("/api/sessions", json={"path": path})
    assert r.status_code == 200, r.text
    return r.json()["session"]


def _detail(r, status: int) -> str:
    body = r.json()
    assert r.status_code == status and list(body) == ["detail"], (r.status_code, r.text)
    return body["detail"]


# ------------------------------------------------------------------------------------------ paths in messages
def test_opening_the_served_folder_itself_does_not_show_its_absolute_path(served_case, bright_sessions) -> None:
    client = _client(served_case.root, bright_sessions)
    detail = _detail(client.post("/api/sessions", json={"path": "."}), 400)
    assert detail == ".: a folder, but no DICOM series found in it"


def test_an_unreadable_upload_is_named_by_its_own_file_name(served_case, bright_sessions, tmp_path) -> None:
    client = _client(served_case.root, bright_sessions)
    for name in ("scan.nii", "scan.nii.gz", "scan.nrrd", "scan.mha"):
        r = client.post("/api/sessions/upload", params={"filename": name}, content=b"not an image", headers=OCTET)
        assert _detail(r, 400) == f"{name}: {UNREADABLE}"  # not the temp copy's path, not SimpleITK's words
    cut = served_case.image.read_bytes()[:2000]  # a .nii.gz cut short: the reader's own check names the file
    r = client.post("/api/sessions/upload", params={"filename": "cut.nii.gz"}, content=cut, headers=OCTET)
    assert _detail(r, 400).startswith("cut.nii.gz: truncated")


def test_an_unreadable_file_of_the_root_gets_its_relative_name_and_no_library_text(served_case, bright_sessions):
    (served_case.root / "sub").mkdir()
    (served_case.root / "sub" / "bad.nrrd").write_bytes(b"garbage")
    (served_case.root / "sub" / "cut.nii.gz").write_bytes(served_case.image.read_bytes()[:2000])
    client = _client(served_case.root, bright_sessions)
    assert _detail(client.post("/api/sessions", json={"path": "sub/bad.nrrd"}), 400) == f"sub/bad.nrrd: {UNREADABLE}"
    assert _detail(client.post("/api/sessions", json={"path": "sub/cut.nii.gz"}), 400).startswith(
        "sub/cut.nii.gz: truncated"
    )


def test_an_absolute_path_is_refused_without_being_repeated(served_case, bright_sessions, tmp_path) -> None:
    client = _client(served_case.root, bright_sessions)
    sid = _open(client)
    expected = "path is absolute: give a path relative to the served folder"
    assert _detail(client.post("/api/sessions", json={"path": str(served_case.image)}), 403) == expected
    r = client.post(f"/api/sessions/{sid}/save", json={"path": str(tmp_path / "m.nii.gz")})
    assert _detail(r, 403) == expected


# ------------------------------------------------------------------------------------------ planted symlinks
@pytest.mark.parametrize("overwrite", [False, True])
def test_saving_onto_a_symlink_planted_out_of_the_root_is_403(served_case, bright_sessions, tmp_path, overwrite):
    outside = tmp_path / "outside.nii.gz"
    outside.write_bytes(b"precious")
    (served_case.root / "case_lesions.nii.gz").symlink_to(outside)  # the default output name of case.nii.gz
    client = _client(served_case.root, bright_sessions)
    sid = _open(client)
    r = client.post(f"/api/sessions/{sid}/save", json={"overwrite": overwrite})
    assert _detail(r, 403) == "path 'case_lesions.nii.gz' leads outside the served folder (a symlink?): refused"
    assert outside.read_bytes() == b"precious" and (served_case.root / "case_lesions.nii.gz").is_symlink()
    assert not (served_case.root / "case_lesions.prompts.json").exists()  # nothing written


def test_a_prompts_file_planted_as_a_symlink_out_of_the_root_is_403(served_case, bright_sessions, tmp_path) -> None:
    (served_case.root / "case_lesions.prompts.json").symlink_to(tmp_path / "elsewhere.json")  # dangling
    client = _client(served_case.root, bright_sessions)
    sid = _open(client)
    r = client.post(f"/api/sessions/{sid}/save", json={})
    assert _detail(r, 403) == (
        "prompts path 'case_lesions.prompts.json' leads outside the served folder (a symlink?): refused"
    )
    assert not (tmp_path / "elsewhere.json").exists() and not (served_case.root / "case_lesions.nii.gz").exists()


def test_saving_onto_a_symlink_to_an_existing_file_of_the_root_is_409(served_case, bright_sessions) -> None:
    root = served_case.root
    (root / "other.nii.gz").write_bytes(b"kept")
    (root / "case_lesions.nii.gz").symlink_to(root / "other.nii.gz")
    client = _client(root, bright_sessions)
    sid = _open(client)
    r = client.post(f"/api/sessions/{sid}/save", json={})
    assert _detail(r, 409) == "other.nii.gz exists: pass overwrite=true to replace it"
    assert (root / "other.nii.gz").read_bytes() == b"kept"


def test_a_symlink_loop_is_refused_not_a_crash(served_case, bright_sessions) -> None:
    (served_case.root / "loop.nii.gz").symlink_to(served_case.root / "loop.nii.gz")
    client = _client(served_case.root, bright_sessions)
    sid = _open(client)
    loop = "path 'loop.nii.gz' is a loop of symlinks: refused"
    assert _detail(client.post("/api/sessions", json={"path": "loop.nii.gz"}), 403) == loop
    assert _detail(client.post(f"/api/sessions/{sid}/save", json={"path": "loop.nii.gz"}), 403) == loop


def test_a_path_that_cannot_be_a_file_is_400_not_a_crash(served_case, bright_sessions) -> None:
    client = _client(served_case.root, bright_sessions)
    sid = _open(client)
    r = client.post(f"/api/sessions/{sid}/save", json={"path": "case.nii.gz/m.nii.gz"})
    assert _detail(r, 400) == "case.nii.gz is a file, not a folder: give another path"
    long_name = "a" * 300 + ".nii.gz"
    detail = _detail(client.post("/api/sessions", json={"path": long_name}), 400)
    assert detail == f"{long_name}: file name too long: give another path"


# ------------------------------------------------------------------------------------------ one code per error
MALFORMED = {
    "not UTF-8": b'{"point": [1, 2, 3], "lesion": "\xff\xfe"}',
    "nested 5,000 deep": b"[" * 5000 + b"]" * 5000,
    "truncated": b'{"point": [1, 2',
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_json_is_422_everywhere(served_case, bright_sessions, body: bytes) -> None:
    client = _client(served_case.root, bright_sessions)
    sid = _open(client)
    for path in (
        "/api/sessions",
        f"/api/sessions/{sid}/click",
        f"/api/sessions/{sid}/box",
        f"/api/sessions/{sid}/save",
        f"/api/sessions/{sid}/proposals",
    ):
        r = client.post(path, content=body, headers={"Content-Type": "application/json"})
        detail = _detail(r, 422)
        assert detail.startswith("the body is not valid JSON") and "\n" not in detail, (path, detail)
    assert client.get(f"/api/sessions/{sid}").status_code == 200  # still serving


def test_the_readme_error_list_is_what_the_server_answers(served_case, bright_sessions) -> None:
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    paragraph = next(p for p in readme.split("\n\n") if "413 / 415" in p and "422" in p)  # the API's error list
    documented = {int(code) for code in re.findall(r"\b(4\d\d)\b", paragraph)}
    client = _client(served_case.root, bright_sessions, max_sessions=1, max_upload_mb=0.01)
    sid = _open(client)
    octet = {"Content-Type": "application/octet-stream"}
    answers = {
        400: client.post(f"/api/sessions/{sid}/click", json={"point": [0, 0, 999]}),
        403: client.post("/api/sessions", json={"path": "../case.nii.gz"}),
        404: client.get("/api/sessions/nosuch"),
        409: [client.post(f"/api/sessions/{sid}/save", json={}) for _ in range(2)][-1],
        413: client.post("/api/sessions/upload", params={"filename": "a.nii"}, content=b"0" * 20000, headers=octet),
        415: client.post("/api/sessions/upload", params={"filename": "a.nii"}, content=b"0", headers={}),
        422: client.post(f"/api/sessions/{sid}/box", content=b"\xff", headers={"Content-Type": "application/json"}),
        429: client.post("/api/sessions", json={"path": "case.nii.gz"}),
    }
    assert {status: r.status_code for status, r in answers.items()} == {status: status for status in answers}
    assert documented == set(answers), f"the README lists {sorted(documented)}"


def test_public_message_cuts_what_only_the_server_knows(tmp_path) -> None:
    import tempfile

    from lesionsam.serve.errors import public_message

    root = tmp_path / "root"
    upload = Path(tempfile.gettempdir()) / "lesionsam-upload-x1" / "my scan.nii"
    assert public_message(f"{root}/sub/a.nii: bad\nsecond line", [root]) == "sub/a.nii: bad; second line"
    assert public_message(f"{root}: a folder", [root]) == "the served folder: a folder"
    assert public_message(f"{upload}: truncated", [root]) == "my scan.nii: truncated"
    assert public_message("m.nii: could not write: Exception thrown in SimpleITK x.cxx:9: y", [root]) == (
        "m.nii: could not write"
    )
    assert public_message("image not found: /data/ct.nii", [Path("/")]) == "image not found: /data/ct.nii"


# ------------------------------------------------------------------------------------------ the guard itself
def test_the_guard_sees_every_error_answer_and_knows_a_leak(served_case, bright_sessions, error_answers, kit):
    client = _client(served_case.root, bright_sessions)
    client.get("/api/sessions/nosuch")
    client.post("/api/sessions", json={"path": "missing.nii.gz"})
    client.post("/api/sessions", content=b"[" * 5000, headers={"Content-Type": "application/json"})
    assert [(path, status) for path, status, _ in error_answers] == [
        ("/api/sessions/nosuch", 404),
        ("/api/sessions", 404),
        ("/api/sessions", 422),
    ]
    assert error_answers[1][2] == '{"detail":"missing.nii.gz: no such file in the served folder"}'
    root = served_case.root
    assert str(root.parent) in kit.leaks(f"{root}/case.nii.gz: bad", root.parent)
    assert kit.leaks("Exception thrown in SimpleITK ImageFileReader_Execute: x.cxx:99", root.parent)
    assert kit.leaks("case.nii.gz: not a readable image", root.parent) == []
