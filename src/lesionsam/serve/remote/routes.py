"""nnInteractive's remote-inference protocol as routes of ``lesionsam serve`` (same process, engine and limits as the
page): what ``nninteractive-client`` 2.6.0 — and through it 3D Slicer's, napari's and ITK-SNAP's remote modes —
sends and reads.

``GET /healthz`` answers without a key. With ``--api-key`` every other route of the protocol needs
``Authorization: Bearer KEY`` (401 otherwise). After ``POST /claim`` each request carries ``X-Lease-Token``; an
unknown, released or reaped lease answers 410 and a full server 503 with ``Retry-After``
(:mod:`~lesionsam.serve.remote.leases`). Arrays travel as NNIA bytes (:mod:`~lesionsam.serve.remote.nnia`) with the
JSON metadata in the ``X-Meta`` header; the semantics of each interaction are :mod:`~lesionsam.serve.remote.state`'s.
Errors are the app's JSON ``{"detail": ...}`` answers.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from lesionsam import __version__
from lesionsam.serve.remote.leases import RETRY_AFTER_SECONDS, AtCapacity, Lease, LeaseGone, LeaseStore
from lesionsam.serve.remote.nnia import pack, unpack
from lesionsam.serve.remote.state import Answer, image_volume
from lesionsam.serve.sessions import ServeContext

META, LEASE = "X-Meta", "X-Lease-Token"
#: An image may be this many times larger uncompressed than the upload limit.
UNCOMPRESSED_FACTOR = 4
#: What ``/capabilities`` says of the licence when none is given (``lesionsam serve --model-license``).
DEFAULT_LICENSE = (
    "lesionsam code: Apache-2.0; model weights: the checkpoint owner's terms (official SAM-Med3D weights: Apache-2.0)"
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class PointBody(_Body):
    coordinates: list[float]
    include_interaction: bool
    run_prediction: bool = True
    override_capability_checks: bool = False


class BoxBody(_Body):
    bbox_coords: list[list[float]]
    include_interaction: bool
    run_prediction: bool = True
    override_capability_checks: bool = False


class BufferBody(_Body):
    shape: list[int]
    dtype: str


class AutozoomBody(_Body):
    do_autozoom: bool


def capabilities(model_name: str, license_text: str, autozoom: bool = True) -> dict[str, Any]:
    """What the server can do, under the keys the client reads (only what works is advertised)."""
    return {
        "supported_interactions": {"points": True, "bbox2d": True, "bbox3d": True, "scribble": False, "lasso": False},
        "channel_mapping": {},
        "num_interaction_channels": 0,
        "supports_initial_label": False,
        "supports_zero_shot_label_refinement": False,
        "preferred_scribble_thickness": None,
        "interaction_decay": None,
        "inference_session_version": f"lesionsam {__version__}",
        "license": license_text,
        "supports_undo": True,
        "do_autozoom": autozoom,
        "server": "lesionsam",
        "model": model_name,
        "notes": "include boxes only (no exclude box); an object starts from a positive point or a box",
    }


def _answer(answer: Answer) -> Response:
    meta = {"ran_prediction": answer.ran, "bbox": answer.bbox}
    body = pack(answer.patch) if answer.patch is not None else b""
    return Response(body, media_type="application/octet-stream", headers={META: json.dumps(meta)})


def remote_router(
    ctx: ServeContext, leases: LeaseStore, *, api_key: str | None = None, license_text: str | None = None
) -> APIRouter:
    """The protocol's routes over ``ctx``'s engine, with ``leases`` and an optional bearer ``api_key``."""
    licence = license_text or DEFAULT_LICENSE

    def authorised(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise HTTPException(
                401,
                "missing or wrong API key: give the server's key (Authorization: Bearer KEY; the client reads "
                "NN_INTERACTIVE_API_KEY)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    router = APIRouter(dependencies=[Depends(authorised)], tags=["nnInteractive remote protocol"])

    def lease_of(request: Request, *, interaction: bool = True) -> Lease:
        try:
            return leases.get(request.headers.get(LEASE), interaction=interaction)
        except LeaseGone:
            raise HTTPException(
                410,
                "this session has expired or is unknown (idle too long, released or the server restarted): "
                "connect again",
            ) from None

    def run(lease: Lease, work: Any) -> Any:
        with lease.lock, ctx.store.compute_lock:
            return work(lease.object)

    @router.post("/claim", summary="claim a session (lease)")
    def claim() -> dict[str, Any]:
        try:
            lease = leases.claim()
        except AtCapacity as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
        return {
            "lease_token": lease.token,
            "idle_timeout_seconds": leases.idle_seconds,
            "liveness_timeout_seconds": leases.liveness_seconds,
            "max_sessions": leases.max_leases,
        }

    @router.get("/capabilities", summary="what this server's model can do")
    def caps(request: Request) -> dict[str, Any]:
        token = request.headers.get(LEASE)
        autozoom = True
        if token:
            autozoom = lease_of(request, interaction=False).object.autozoom
        return capabilities(ctx.model_name, licence, autozoom)

    @router.post("/heartbeat", summary="the client is alive (does not postpone the idle timeout)")
    def heartbeat(request: Request) -> dict[str, float]:
        return leases.remaining(lease_of(request, interaction=False))

    @router.get("/lease_status", summary="seconds until the idle timeout")
    def lease_status(request: Request) -> dict[str, float]:
        return leases.remaining(lease_of(request, interaction=False))

    @router.post("/release", summary="give the session back")
    def release(request: Request) -> dict[str, bool]:
        try:
            leases.release(request.headers.get(LEASE))
        except LeaseGone:
            raise HTTPException(410, "this session has expired or is unknown: nothing to release") from None
        return {"released": True}

    @router.post("/set_image", summary="the image: NNIA bytes (1, X, Y, Z), X-Meta {image_properties: {spacing}}")
    async def set_image(request: Request) -> dict[str, Any]:
        lease = lease_of(request)
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/octet-stream":
            raise HTTPException(415, "send the image as NNIA bytes with Content-Type application/octet-stream")
        try:
            meta = json.loads(request.headers.get(META) or "{}")
        except ValueError:
            raise HTTPException(422, f"the {META} header is not valid JSON: send one JSON object") from None
        props = meta.get("image_properties") if isinstance(meta, dict) else None
        if props is not None and not isinstance(props, dict):
            raise HTTPException(422, "image_properties must be a JSON object")
        limit = ctx.max_upload_bytes
        too_big = f"image larger than the server's limit of {limit / 1048576:g} MB (lesionsam serve --max-upload-mb)"
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise HTTPException(413, too_big)
        chunks, received = [], 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise HTTPException(413, too_big)
            chunks.append(chunk)

        def load() -> list[int]:
            array = unpack(b"".join(chunks), max_bytes=limit * UNCOMPRESSED_FACTOR)
            volume = image_volume(array, (props or {}).get("spacing"))
            run(lease, lambda obj: obj.set_image(volume, ctx.make_session))
            return list(array.shape)

        return {"original_image_shape": await run_in_threadpool(load)}

    @router.post("/set_target_buffer", summary="the client's buffer: its shape (the image's) and dtype")
    def set_target_buffer(body: BufferBody, request: Request) -> dict[str, bool]:
        run(lease_of(request), lambda obj: obj.set_target_buffer(body.shape, body.dtype))
        return {"ok": True}

    @router.post("/set_do_autozoom", summary="kept and reported; the engine picks its own zoom per lesion")
    def set_do_autozoom(body: AutozoomBody, request: Request) -> dict[str, bool]:
        lease_of(request).object.autozoom = body.do_autozoom
        return {"ok": True}

    @router.post("/reset_interactions", summary="empty the object")
    def reset(request: Request) -> dict[str, bool]:
        run(lease_of(request), lambda obj: obj.reset())
        return {"ok": True}

    @router.post("/add_point_interaction", summary="a point (array order) including or excluding its voxel")
    def point(body: PointBody, request: Request) -> Response:
        lease = lease_of(request)
        return _answer(
            run(lease, lambda o: o.point(body.coordinates, include=body.include_interaction, run=body.run_prediction))
        )

    @router.post("/add_bbox_interaction", summary="an include box [[lo, hi] x 3] (array order, half-open)")
    def bbox(body: BoxBody, request: Request) -> Response:
        lease = lease_of(request)
        return _answer(
            run(lease, lambda o: o.bbox(body.bbox_coords, include=body.include_interaction, run=body.run_prediction))
        )

    @router.post("/undo", summary="back one prompt of the object")
    def undo(request: Request) -> Response:
        return _answer(run(lease_of(request), lambda obj: obj.undo()))

    @router.post("/predict", summary="send what prompts given with run_prediction=false changed")
    def predict(request: Request) -> Response:
        return _answer(run(lease_of(request), lambda obj: obj.predict()))

    for path, what in (
        ("/add_scribble_interaction", "scribbles"),
        ("/add_lasso_interaction", "lassos"),
        ("/add_initial_seg_interaction", "initial segmentations"),
    ):

        def unsupported(request: Request, what: str = what) -> None:
            lease_of(request)
            raise HTTPException(400, f"{what} are not supported by lesionsam (see /capabilities): use points or boxes")

        router.add_api_route(path, unsupported, methods=["POST"], summary=f"not supported ({what})")

    return router
