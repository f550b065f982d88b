"""Routes of the automatic / text proposals (``lesionsam serve --proposals CKPT``; see
:mod:`lesionsam.serve.proposals`). Without that checkpoint they answer 404 saying how to enable them."""

from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

from lesionsam.inference.predictor import Predictor
from lesionsam.serve import schemas
from lesionsam.serve.nifti import nifti_bytes
from lesionsam.serve.proposals import Proposal, box_of, components, proposal_kinds
from lesionsam.serve.routes import check_lesion, update_response
from lesionsam.serve.sessions import OpenCase, ServeContext

_DISABLED = (
    "no proposals on this server: start it with --proposals CKPT (a prompt-free H-SAM or a text-referred "
    "RefSAM3D checkpoint)"
)


def _proposals(case: OpenCase) -> tuple[np.ndarray, list[Proposal]]:
    if case.proposals is None:
        raise HTTPException(404, "no proposals yet: POST /api/sessions/{id}/proposals first")
    return case.proposals


def proposals_router(ctx: ServeContext) -> APIRouter:
    """The proposal routes over ``ctx`` (a :class:`~lesionsam.serve.app.ServeContext`)."""
    from lesionsam.inference.session import Box
    from lesionsam.inference.whole_volume import WholeVolume

    router = APIRouter(prefix="/api")
    store = ctx.store

    def proposer() -> Predictor:
        if ctx.proposer is None:
            raise HTTPException(404, _DISABLED)
        return ctx.proposer

    @router.post(
        "/sessions/{sid}/proposals",
        response_model=schemas.ProposalList,
        summary="find lesion proposals in the whole image (automatic, or from a text)",
    )
    def find(sid: str, req: schemas.ProposalRequest | None = None) -> schemas.ProposalList:
        predictor = proposer()
        req = req or schemas.ProposalRequest()
        kinds = proposal_kinds(predictor)
        if req.text is not None and "text" not in kinds:
            raise HTTPException(400, "the proposals checkpoint is prompt-free: leave 'text' out (automatic)")
        if req.text is None and "auto" not in kinds:
            raise HTTPException(400, "the proposals checkpoint is text-referred: give a 'text', e.g. 'liver tumour'")
        case = store.get(sid)
        with case.lock:
            t0 = time.perf_counter()
            with store.compute_lock:
                predictor.set_image(case.volume)
                if req.text is None:
                    prediction = WholeVolume(predictor).predict_auto()
                else:
                    prediction = WholeVolume(predictor).predict_text(req.text)
            case.proposals = components(prediction.labels, case.volume, min_volume_ml=req.min_volume_ml)
            seconds = time.perf_counter() - t0
            found = case.proposals[1]
        return schemas.ProposalList(
            proposals=[
                schemas.ProposalOut(id=p.id, class_value=p.class_value, volume_ml=p.volume_ml, lo=p.lo, hi=p.hi)
                for p in found
            ],
            seconds=seconds,
        )

    @router.get(
        "/sessions/{sid}/proposals/labels",
        summary="the last proposals as a uint16 NIfTI-1 label map (value = proposal id) on the input grid",
        response_class=Response,
        responses={200: {"content": {"application/octet-stream": {}}}},
    )
    def labels(sid: str) -> Response:
        case = store.get(sid)
        with case.lock:
            ids, _ = _proposals(case)
        return Response(nifti_bytes(case.volume, ids, label=True), media_type="application/octet-stream")

    @router.post(
        "/sessions/{sid}/proposals/{pid}/accept",
        response_model=schemas.UpdateResponse,
        summary="segment a proposal with the interactive model (its 3D bounding box as a box prompt)",
    )
    def accept(sid: str, pid: int, lesion: int | None = None) -> schemas.UpdateResponse:
        case = store.get(sid)
        with case.lock:
            _, found = _proposals(case)
            match = [p for p in found if p.id == pid]
            if not match:
                raise HTTPException(404, f"proposal {pid} does not exist (proposals: 1..{len(found)})")
            check_lesion(case, lesion)
            lo, hi = box_of(match[0], case.volume.size_ijk)
            with store.compute_lock:
                update = case.session.box(Box(lo=lo, hi=hi), lesion=lesion)
            return update_response(case, update)

    return router
