"""JSON bodies of the HTTP API (pydantic models; FastAPI documents them at ``/docs``).

Coordinates are 0-based voxel indices in ITK order ``(i, j, k)`` of the opened image: ``i`` along the image's first
axis (the fastest on disk), equal to NIfTI's ``i, j, k`` and to 3D Slicer's IJK. Unknown fields are refused (422).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Ijk = tuple[int, int, int]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpenRequest(_Strict):
    """Open an image under the served folder."""

    path: str = Field(description="image path relative to the served folder, '/' between folders")
    channel: int | None = Field(default=None, ge=0, description="channel of a multi-channel image (4D NIfTI)")


class ClickRequest(_Strict):
    """A click: positive (add) or negative (remove)."""

    point: Ijk = Field(description="voxel index (i, j, k), ITK order, 0-based")
    positive: bool = Field(default=True, description="true: include this voxel; false: exclude it")
    lesion: int | None = Field(
        default=None, ge=1, description="lesion to refine; null starts a new lesion (a positive click is required)"
    )


class BoxRequest(_Strict):
    """A box: 3D, or 2D on one slice (lo == hi along one axis). Bounds are inclusive voxel indices."""

    lo: Ijk = Field(description="smallest (i, j, k) corner, inclusive")
    hi: Ijk = Field(description="largest (i, j, k) corner, inclusive")
    lesion: int | None = Field(default=None, ge=1, description="lesion to refine; null starts a new lesion")


class SaveRequest(_Strict):
    """Where to save the label map (and the prompts JSON beside it), inside the served folder."""

    path: str | None = Field(
        default=None,
        description="mask path relative to the served folder; null: '<input name>_lesions<ending>' beside the input "
        "(uploads: at the top of the served folder). The prompts go to the same name ending in '.prompts.json'",
    )
    format: Literal["input", "nifti"] = Field(
        default="input", description="'input': the input's own file format (a DICOM folder gives NIfTI); 'nifti'"
    )
    overwrite: bool = Field(default=False, description="replace existing files (never the input image)")


class Lesion(BaseModel):
    """One lesion of a session."""

    id: int
    colour: str = Field(description="display colour, '#rrggbb' (the same as in the label colour table)")
    volume_ml: float
    n_prompts: int


class Region(BaseModel):
    """A box of the input grid in ITK order: voxels ``start[a] .. start[a] + size[a] - 1`` on each axis ``a``."""

    start: Ijk
    size: Ijk


class UpdateResponse(BaseModel):
    """What one interaction changed: the viewer writes ``labels`` into ``region`` of its label map."""

    lesion: int
    volume_ml: float
    region: Region
    labels: str = Field(
        description="base64 of the zlib-compressed (RFC 1950) region's labels as little-endian uint16, i fastest "
        "then j then k (NIfTI order; size[0]*size[1]*size[2] values; empty when the region is empty)"
    )
    lesions: list[Lesion] = Field(description="every lesion after the update")


class SessionResponse(BaseModel):
    """An open session."""

    session: str = Field(description="the session id (unguessable): put it in the URLs of the other calls")
    name: str = Field(description="the image's path relative to the served folder, or the uploaded file's name")
    size: Ijk = Field(description="image size (ni, nj, nk)")
    spacing: tuple[float, float, float] = Field(description="voxel size in mm, ITK order")
    ijk_to_ras: list[list[float]] = Field(description="4×4 affine: voxel (i, j, k, 1) → RAS mm (NIfTI's world)")
    lesions: list[Lesion]


class ImageEntry(BaseModel):
    path: str
    size_bytes: int


class ImageList(BaseModel):
    images: list[ImageEntry]
    truncated: bool = Field(description="true when only the first images were listed")


class SavedFiles(BaseModel):
    mask: str = Field(description="the mask's path relative to the served folder")
    prompts: str = Field(description="the prompts JSON's path relative to the served folder")


class ProposalRequest(_Strict):
    """Find lesion proposals in the whole image with the ``--proposals`` checkpoint."""

    text: str | None = Field(
        default=None, description="for a text-referred checkpoint (RefSAM3D), e.g. 'liver tumour'; null: automatic"
    )
    min_volume_ml: float = Field(default=0.0, ge=0, description="drop proposals smaller than this (mL)")


class ProposalOut(BaseModel):
    """One proposal: a connected component of the proposals' label map (``id`` = its value there)."""

    id: int
    class_value: int = Field(description="the label value the checkpoint gave it (automatic) or 1 (text)")
    volume_ml: float
    lo: Ijk = Field(description="bounding box, smallest (i, j, k), inclusive")
    hi: Ijk = Field(description="bounding box, largest (i, j, k), inclusive")


class ProposalList(BaseModel):
    proposals: list[ProposalOut]
    seconds: float


class ServerInfo(BaseModel):
    """What the server offers."""

    version: str
    model: str = Field(description="the checkpoint's file name (or 'random weights')")
    prompts: list[str] = Field(description="prompt kinds the sessions accept ('click', 'box')")
    proposals: list[str] = Field(description="'auto' and/or 'text' when a --proposals checkpoint is loaded")
    max_upload_mb: float
    max_sessions: int
