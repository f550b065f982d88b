"""The HTTP API routes (under ``/api``); see :mod:`lesionsam.serve.app` for the error statuses.

Interactions answer an :class:`~lesionsam.serve.schemas.UpdateResponse`: the lesion's new volume and the label map
inside the region that changed, so that a viewer patches its overlay instead of reloading the whole label map.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from lesionsam import __version__
from lesionsam.data.io import IMAGE_SUFFIXES, case_id, image_suffix
from lesionsam.inference.session_state import Update
from lesionsam.serve import schemas
from lesionsam.serve.errors import read_client_image
from lesionsam.serve.nifti import nifti_bytes, ras_affine
from lesionsam.serve.paths import MAX_LISTED, list_images, relative_to_root, resolve_inside
from lesionsam.serve.proposals import proposal_kinds
from lesionsam.serve.sessions import OpenCase, ServeContext, lesion_colour

#: Output endings by input ending where the input's own format cannot be written as one atomic file.
_WRITE_SUFFIX = {
    ".mhd": ".mha",
    ".nhdr": ".nrrd",
    ".dcm": ".nii.gz",
    ".tif": ".nii.gz",
    ".tiff": ".nii.gz",
    "": ".nii.gz",
}
_NIFTI = "application/octet-stream"


def _attachment_name(case: OpenCase, ending: str) -> str:
    """A safe file name for a Content-Disposition header: the case id's letters, digits, '.', '_' and '-'."""
    stem = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "._-") else "_" for ch in case_id(case.name))
    return f"{stem or 'image'}_lesions{ending}"


def _lesions(case: OpenCase) -> list[schemas.Lesion]:
    return [
        schemas.Lesion(
            id=info.id, colour=lesion_colour(info.id), volume_ml=float(info.volume_ml), n_prompts=info.n_prompts
        )
        for info in case.session.lesions()
    ]


def _session_response(case: OpenCase) -> schemas.SessionResponse:
    vol = case.volume
    return schemas.SessionResponse(
        session=case.sid,
        name=case.name,
        size=vol.size_ijk,
        spacing=tuple(float(s) for s in vol.spacing),  # type: ignore[arg-type]
        ijk_to_ras=ras_affine(vol).tolist(),
        lesions=_lesions(case),
    )


def update_response(case: OpenCase, update: Update) -> schemas.UpdateResponse:
    """An engine ``Update`` (region as (D, H, W) slices, labels (D, H, W)) as the API's ITK-order patch."""
    shape = case.volume.spatial_shape
    ranges = [sl.indices(n)[:2] for sl, n in zip(update.region, shape, strict=True)]  # (start, stop) for k, j, i
    size = [max(0, stop - start) for start, stop in ranges]
    labels = np.asarray(update.labels)
    if int(np.prod(size)) == 0:
        payload = b""
    else:
        if tuple(labels.shape) != tuple(size):
            raise RuntimeError(f"the engine's patch has shape {labels.shape}, its region {tuple(size)}")
        # C order over (k, j, i): i fastest; zlib level 1 shrinks a mostly-constant patch ~100× in ~1.5 ms/MB
        payload = zlib.compress(np.ascontiguousarray(labels, dtype="<u2").tobytes(), 1)
    (k0, _), (j0, _), (i0, _) = ranges
    return schemas.UpdateResponse(
        lesion=int(update.lesion),
        volume_ml=float(update.volume_ml),
        region=schemas.Region(start=(i0, j0, k0), size=(size[2], size[1], size[0])),
        labels=base64.b64encode(payload).decode("ascii"),
        lesions=_lesions(case),
    )


def check_lesion(case: OpenCase, lesion: int | None) -> None:
    """404 unless ``lesion`` (None: a new one) is a lesion of the session (nothing is composed to know)."""
    if lesion is None or case.session.has_lesion(lesion):
        return
    known = ", ".join(str(info) for info in case.session.lesion_ids()) or "none yet"
    raise HTTPException(404, f"lesion {lesion} does not exist in this session (lesions: {known})")


def _output_paths(ctx: ServeContext, case: OpenCase, req: schemas.SaveRequest) -> tuple[Path, Path]:
    """The mask and prompts paths of a save request, checked: inside the root, writable, not the input."""
    source_suffix = image_suffix(case.source if case.source is not None else case.name).lower()
    if case.source is not None and case.source.is_dir():
        source_suffix = ""
    if req.path is not None:
        mask = resolve_inside(ctx.root, req.path, what="path")
        suffix = image_suffix(mask).lower()
        if suffix not in IMAGE_SUFFIXES or suffix in (".dcm", ".mhd", ".nhdr", ".tif", ".tiff"):
            raise HTTPException(400, f"path {req.path!r}: end the mask's name in .nii.gz, .nii, .nrrd or .mha")
    else:
        if req.format == "nifti":
            suffix = ".nii.gz"
        else:
            suffix = _WRITE_SUFFIX.get(source_suffix, source_suffix if source_suffix in IMAGE_SUFFIXES else ".nii.gz")
        folder = case.source.parent if case.source is not None else ctx.root
        mask = folder / f"{case_id(case.name)}_lesions{suffix}"
    prompts = mask.with_name(mask.name[: -len(suffix)] + ".prompts.json") if suffix else mask.with_suffix(".json")
    # a planted symlink under either name: followed if it stays inside the root (then an existing target is 409),
    # refused (403) if it leads out of it or loops
    mask = resolve_inside(ctx.root, mask.relative_to(ctx.root).as_posix(), what="path")
    prompts = resolve_inside(ctx.root, prompts.relative_to(ctx.root).as_posix(), what="prompts path")
    for folder in mask.parents:  # a file where a folder of the path should be
        if folder == ctx.root:
            break
        if folder.exists() and not folder.is_dir():
            raise HTTPException(400, f"{relative_to_root(ctx.root, folder)} is a file, not a folder: give another path")
    for out in (mask, prompts):
        if out.is_dir():
            raise HTTPException(400, f"{relative_to_root(ctx.root, out)} is a folder: give a file name")
        if case.source is not None and out.exists() and os.path.samefile(out, case.source):
            raise HTTPException(400, f"{relative_to_root(ctx.root, out)} is the input image: it is never overwritten")
        if out.exists() and not req.overwrite:
            raise HTTPException(409, f"{relative_to_root(ctx.root, out)} exists: pass overwrite=true to replace it")
    return mask, prompts


def api_router(ctx: ServeContext) -> APIRouter:
    """The ``/api`` routes over ``ctx`` (a :class:`~lesionsam.serve.app.ServeContext`)."""
    from lesionsam.inference.session import Box

    router = APIRouter(prefix="/api")
    store = ctx.store

    def interact(sid: str, work: Callable[[OpenCase], Update], *, lesion: int | None = None) -> schemas.UpdateResponse:
        case = store.get(sid)
        with case.lock:
            check_lesion(case, lesion)
            with store.compute_lock:
                update = work(case)
            return update_response(case, update)

    def open_volume(name: str, source: Path | None, volume_path: Path, channel: int | None, upload_dir: Path | None):
        store.reserve()
        volume = read_client_image(name, volume_path, channel)
        if volume.array.ndim != 3:
            raise HTTPException(
                400, f"{name} has {volume.array.shape[0]} channels: open it again with 'channel' set (0-based)"
            )
        with store.compute_lock:
            session = ctx.make_session(volume)
        return store.add(name=name, source=source, volume=volume, session=session, upload_dir=upload_dir)

    @router.get("/info", response_model=schemas.ServerInfo, summary="what this server offers")
    def info() -> schemas.ServerInfo:
        return schemas.ServerInfo(
            version=__version__,
            model=ctx.model_name,
            prompts=["click", "box"],
            proposals=proposal_kinds(ctx.proposer) if ctx.proposer is not None else [],
            max_upload_mb=ctx.max_upload_bytes / (1024 * 1024),
            max_sessions=store.max_sessions,
        )

    @router.get("/images", response_model=schemas.ImageList, summary="images under the served folder")
    def images() -> schemas.ImageList:
        found = list_images(ctx.root)
        return schemas.ImageList(
            images=[schemas.ImageEntry(path=f.path, size_bytes=f.size_bytes) for f in found],
            truncated=len(found) >= MAX_LISTED,
        )

    @router.post("/sessions", response_model=schemas.SessionResponse, summary="open an image of the served folder")
    def open_session(req: schemas.OpenRequest) -> schemas.SessionResponse:
        path = resolve_inside(ctx.root, req.path)
        if not path.exists():
            raise HTTPException(404, f"{req.path}: no such file in the served folder")
        case = open_volume(req.path, path, path, req.channel, None)
        return _session_response(case)

    @router.post(
        "/sessions/upload",
        response_model=schemas.SessionResponse,
        summary="upload an image (the request body is the file's bytes, Content-Type application/octet-stream)",
    )
    async def upload_session(
        request: Request,
        filename: str = Query(description="the file's name, for its format: e.g. ct.nii.gz, scan.nrrd, scan.mha"),
        channel: int | None = Query(default=None, ge=0),
    ) -> schemas.SessionResponse:
        name = Path(filename.replace("\\", "/")).name
        suffix = image_suffix(name).lower()
        if suffix not in IMAGE_SUFFIXES or suffix in (".dcm", ".mhd", ".nhdr") or name.startswith("."):
            raise HTTPException(400, f"filename {name!r}: upload one file ending in .nii.gz, .nii, .nrrd or .mha")
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/octet-stream":
            raise HTTPException(415, "send the file's bytes as the body with Content-Type application/octet-stream")
        limit = ctx.max_upload_bytes
        too_big = f"upload larger than the server's limit of {limit / 1048576:g} MB (lesionsam serve --max-upload-mb)"
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPException(413, too_big)
        upload_dir = Path(tempfile.mkdtemp(prefix="lesionsam-upload-"))
        target = upload_dir / name
        try:
            received = 0
            with open(target, "wb") as fh:
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > limit:
                        raise HTTPException(413, too_big)
                    fh.write(chunk)
            if received == 0:
                raise HTTPException(400, "the upload is empty: send the image file's bytes as the request body")
            case = await run_in_threadpool(open_volume, name, None, target, channel, upload_dir)
        except BaseException:
            import shutil

            shutil.rmtree(upload_dir, ignore_errors=True)
            raise
        return _session_response(case)

    @router.get("/sessions/{sid}", response_model=schemas.SessionResponse, summary="a session's image and lesions")
    def get_session(sid: str) -> schemas.SessionResponse:
        case = store.get(sid)
        with case.lock:
            return _session_response(case)

    @router.delete("/sessions/{sid}", status_code=204, summary="close a session (an upload is deleted)")
    def close_session(sid: str) -> Response:
        store.close(sid)
        return Response(status_code=204)

    @router.get(
        "/sessions/{sid}/image",
        summary="the image as NIfTI-1 bytes (i fastest; RAS affine of the input's geometry)",
        response_class=Response,
        responses={200: {"content": {_NIFTI: {}}}},
    )
    def get_image(sid: str) -> Response:
        case = store.get(sid)
        data = nifti_bytes(case.volume)
        return Response(data, media_type=_NIFTI, headers={"Content-Disposition": 'inline; filename="image.nii"'})

    @router.get(
        "/sessions/{sid}/labels",
        summary="the current label map (uint16, 0 = background, else lesion id) as NIfTI-1 bytes on the input grid",
        response_class=Response,
        responses={200: {"content": {_NIFTI: {}}}},
    )
    def get_labels(sid: str) -> Response:
        case = store.get(sid)
        with case.lock:
            labels = case.session.label_map()
        data = nifti_bytes(case.volume, labels, label=True)
        return Response(data, media_type=_NIFTI, headers={"Content-Disposition": 'inline; filename="labels.nii"'})

    @router.get("/sessions/{sid}/lesions", response_model=list[schemas.Lesion], summary="the session's lesions")
    def get_lesions(sid: str) -> list[schemas.Lesion]:
        case = store.get(sid)
        with case.lock:
            return _lesions(case)

    @router.post("/sessions/{sid}/click", response_model=schemas.UpdateResponse, summary="a positive or negative click")
    def click(sid: str, req: schemas.ClickRequest) -> schemas.UpdateResponse:
        def work(case: OpenCase) -> Update:  # the engine checks the point (one rule: InteractiveSession.check_points)
            return case.session.click(tuple(req.point), positive=req.positive, lesion=req.lesion)

        return interact(sid, work, lesion=req.lesion)

    @router.post("/sessions/{sid}/box", response_model=schemas.UpdateResponse, summary="a 2D (one slice) or 3D box")
    def box(sid: str, req: schemas.BoxRequest) -> schemas.UpdateResponse:
        def work(case: OpenCase) -> Update:  # Box and the engine check the corners (inside the image, lo <= hi)
            return case.session.box(Box(lo=tuple(req.lo), hi=tuple(req.hi)), lesion=req.lesion)

        return interact(sid, work, lesion=req.lesion)

    @router.post("/sessions/{sid}/lesions/{lesion}/undo", response_model=schemas.UpdateResponse, summary="undo")
    def undo(sid: str, lesion: int) -> schemas.UpdateResponse:
        return interact(sid, lambda case: case.session.undo(lesion), lesion=lesion)

    @router.post("/sessions/{sid}/lesions/{lesion}/redo", response_model=schemas.UpdateResponse, summary="redo")
    def redo(sid: str, lesion: int) -> schemas.UpdateResponse:
        return interact(sid, lambda case: case.session.redo(lesion), lesion=lesion)

    @router.delete("/sessions/{sid}/lesions/{lesion}", response_model=schemas.UpdateResponse, summary="delete")
    def delete(sid: str, lesion: int) -> schemas.UpdateResponse:
        return interact(sid, lambda case: case.session.delete(lesion), lesion=lesion)

    @router.post(
        "/sessions/{sid}/save",
        response_model=schemas.SavedFiles,
        summary="write the label map on the input's grid and the prompts JSON inside the served folder",
    )
    def save(sid: str, req: schemas.SaveRequest | None = None) -> schemas.SavedFiles:
        case = store.get(sid)
        req = req or schemas.SaveRequest()
        with case.lock:
            mask, prompts = _output_paths(ctx, case, req)
            mask.parent.mkdir(parents=True, exist_ok=True)
            case.session.save(mask, prompts)
        return schemas.SavedFiles(mask=relative_to_root(ctx.root, mask), prompts=relative_to_root(ctx.root, prompts))

    @router.get(
        "/sessions/{sid}/download",
        summary="download the label map (gzipped NIfTI on the input's grid) or the prompts JSON",
        response_class=Response,
    )
    def download(sid: str, what: str = Query(default="mask", pattern="^(mask|prompts)$")) -> Response:
        case = store.get(sid)
        with case.lock:
            if what == "prompts":
                body = json.dumps(case.session.prompts_record(), indent=2).encode()
                media, filename = "application/json", _attachment_name(case, ".prompts.json")
            else:
                body = gzip.compress(nifti_bytes(case.volume, case.session.label_map(), label=True), compresslevel=6)
                media, filename = "application/gzip", _attachment_name(case, ".nii.gz")
        return Response(body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    return router
