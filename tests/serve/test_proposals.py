"""Automatic and text proposals of ``lesionsam serve --proposals``: every blob of the synthetic case is proposed with
its true bounding box, and accepting one segments it with the interactive model (a 3D box prompt)."""

from __future__ import annotations

import base64
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from scipy import ndimage

from lesionsam.data.io import read_image
from lesionsam.data.transforms import PreprocessConfig
from lesionsam.inference.boxes import Box
from lesionsam.inference.predictor import Predictor
from lesionsam.inference.session import InteractiveSession
from lesionsam.models import Prompts, SegModel, SegOutput
from lesionsam.serve.app import create_app
from lesionsam.serve.proposals import Proposal, box_of, components
from stand_ins import StandInModel

BASE = "http://127.0.0.1"


class BrightText(StandInModel):
    """Text-referred stand-in: "bright ..." segments voxels brighter than 1, any other text nothing."""

    required_prompts = frozenset({"text"})
    accepted_prompts = frozenset({"text", "points", "mask"})

    def forward(self, image: torch.Tensor, prompts: Prompts) -> SegOutput:
        wanted = torch.tensor([t.startswith("bright") for t in prompts.text])[:, None, None, None, None]
        logits = torch.where(wanted & (image > 1.0), 10.0, -10.0)
        low = F.interpolate(logits, scale_factor=0.25, mode="trilinear", align_corners=False)
        return SegOutput(low_res_logits=low, logits=logits, iou=torch.ones(image.shape[0], 1))


def _proposer(model: SegModel) -> Predictor:
    return Predictor(model, preprocess=PreprocessConfig(spacing=(1.5, 1.5, 1.5)))


def _true_boxes(labels: np.ndarray) -> dict[int, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Blob n's inclusive (i, j, k) bounds from the (D, H, W) truth."""
    out = {}
    for n, box in enumerate(ndimage.find_objects(labels), start=1):
        k, j, i = box
        out[n] = ((i.start, j.start, k.start), (i.stop - 1, j.stop - 1, k.stop - 1))
    return out


@pytest.mark.parametrize("kind", ["auto", "text"])
def test_proposals_are_the_blobs_and_accepting_one_segments_it(served_case, bright_sessions, kit, kind) -> None:
    model, body = (kit.auto_model(), {}) if kind == "auto" else (BrightText(), {"text": "bright lesion"})
    app = create_app(served_case.root, make_session=bright_sessions, proposer=_proposer(model))
    client = TestClient(app, base_url=BASE)
    assert client.get("/api/info").json()["proposals"] == (["auto"] if body == {} else ["text"])
    sid = client.post("/api/sessions", json={"path": "case.nii.gz"}).json()["session"]
    found = client.post(f"/api/sessions/{sid}/proposals", json=body).json()["proposals"]
    truth = _true_boxes(served_case.labels)
    assert len(found) == 2
    for proposal in found:  # each blob proposed, with (nearly) its true box: the model works at 1.5 mm
        n = served_case.labels[proposal["lo"][2] : proposal["hi"][2] + 1].max()  # which blob it covers
        lo, hi = truth[int(n)]
        assert np.abs(np.subtract(proposal["lo"], lo)).max() <= 2 and np.abs(np.subtract(proposal["hi"], hi)).max() <= 2
    ids = read_image_bytes(client.get(f"/api/sessions/{sid}/proposals/labels").content)
    assert set(np.unique(ids)) == {0, 1, 2}

    second = found[1]  # the smaller blob (proposals come by decreasing volume): blob 2
    up = client.post(f"/api/sessions/{sid}/proposals/{second['id']}/accept").json()
    reference = InteractiveSession(kit.bright_predictor(), read_image(served_case.image))
    p = Proposal(id=second["id"], class_value=1, volume_ml=0.0, lo=tuple(second["lo"]), hi=tuple(second["hi"]))
    lo, hi = box_of(p, served_case.volume.size_ijk)
    reference.box(Box(lo=lo, hi=hi))
    patched = np.zeros(served_case.volume.spatial_shape, np.uint16)
    (i0, j0, k0), (ni, nj, nk) = up["region"]["start"], up["region"]["size"]
    patched[k0 : k0 + nk, j0 : j0 + nj, i0 : i0 + ni] = np.frombuffer(
        zlib.decompress(base64.b64decode(up["labels"])), "<u2"
    ).reshape(nk, nj, ni)
    np.testing.assert_array_equal(patched, reference.label_map())
    blob = int(np.bincount(served_case.labels[patched == 1]).argmax())  # the blob the accepted lesion lies on
    mine, true = patched == 1, served_case.labels == blob
    assert blob == 2 and 2 * (mine & true).sum() / (mine.sum() + true.sum()) > 0.75


def read_image_bytes(payload: bytes) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.Nifti1Image.from_bytes(payload).dataobj).transpose(2, 1, 0)


def test_proposal_errors(served_case, bright_sessions, kit) -> None:
    plain = TestClient(create_app(served_case.root, make_session=bright_sessions), base_url=BASE)
    assert plain.get("/api/info").json()["proposals"] == []
    sid = plain.post("/api/sessions", json={"path": "case.nii.gz"}).json()["session"]
    r = plain.post(f"/api/sessions/{sid}/proposals", json={})
    assert r.status_code == 404 and "--proposals" in r.json()["detail"]

    auto = TestClient(
        create_app(served_case.root, make_session=bright_sessions, proposer=_proposer(kit.auto_model())), base_url=BASE
    )
    sid = auto.post("/api/sessions", json={"path": "case.nii.gz"}).json()["session"]
    assert auto.get(f"/api/sessions/{sid}/proposals/labels").status_code == 404  # none computed yet
    r = auto.post(f"/api/sessions/{sid}/proposals", json={"text": "liver tumour"})
    assert r.status_code == 400 and "prompt-free" in r.json()["detail"]
    assert auto.post(f"/api/sessions/{sid}/proposals", json={"min_volume_ml": 100.0}).json()["proposals"] == []
    assert auto.post(f"/api/sessions/{sid}/proposals/1/accept").status_code == 404
    text = TestClient(
        create_app(served_case.root, make_session=bright_sessions, proposer=_proposer(BrightText())), base_url=BASE
    )
    sid = text.post("/api/sessions", json={"path": "case.nii.gz"}).json()["session"]
    r = text.post(f"/api/sessions/{sid}/proposals", json={})
    assert r.status_code == 400 and "give a 'text'" in r.json()["detail"]


def test_components_and_boxes(kit) -> None:
    volume, labels = kit.oblique_case()
    pred = labels.astype(np.uint16)
    pred[0, 0, 0] = 4  # a one-voxel component of another class, in a corner
    ids, found = components(pred, volume)
    voxel_ml = float(np.prod(volume.spacing)) / 1000
    assert [p.volume_ml for p in found] == pytest.approx(
        sorted([(labels == 1).sum() * voxel_ml, (labels == 2).sum() * voxel_ml, voxel_ml], reverse=True)
    )
    assert found[-1].class_value == 4 and found[-1].lo == found[-1].hi == (0, 0, 0)
    assert box_of(found[-1], volume.size_ijk) == ((0, 0, 0), (1, 1, 1))  # a flat box is widened into 3D
    for p in found[:2]:
        k, j, i = np.nonzero(ids == p.id)
        assert (i.min(), j.min(), k.min()) == p.lo and (i.max(), j.max(), k.max()) == p.hi
    assert components(pred, volume, min_volume_ml=2 * voxel_ml)[1] == found[:2]
