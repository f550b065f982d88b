"""The FastAPI application of ``lesionsam serve``: the HTTP API (:mod:`~lesionsam.serve.routes`), the page, errors.

Every error is a JSON object ``{"detail": "one clear sentence"}`` with a 4xx status: 400 a request the engine
refuses (a click outside the image, an image that cannot be read), 403 a path outside the served folder, 404 an
unknown session, lesion or file, 409 an existing file without ``overwrite``, 413 an upload over the limit, 415 an
upload that is not ``application/octet-stream``, 422 malformed JSON or a field of the wrong type, 429 too many open
sessions; nnInteractive's remote protocol (:mod:`~lesionsam.serve.remote.routes`) adds 401 a missing or wrong API
key, 410 an unknown or expired lease and 503 (with ``Retry-After``) every lease taken. An unexpected exception
answers 500 with its type (the traceback goes to the server's log) and the server keeps serving. Messages name
files relative to the served folder, never by the server's absolute paths (:mod:`~lesionsam.serve.errors`).
Requests whose ``Host`` is not the bound address are refused (DNS-rebinding), and no CORS header is sent unless
origins are given. ``/docs`` is Swagger UI from the copy vendored in the package
(``static/vendor/swagger-ui``): it works without a network, as the page does.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from lesionsam import __version__
from lesionsam.data.io import Volume
from lesionsam.inference.predictor import Predictor
from lesionsam.inference.session import InteractiveSession
from lesionsam.serve.errors import error_response as _error
from lesionsam.serve.errors import install_error_handlers
from lesionsam.serve.sessions import ServeContext, SessionStore

STATIC_DIR = Path(__file__).resolve().parent / "static"

#: Where ``/docs`` loads Swagger UI from: the copy vendored in the package (no CDN; see its VERSION file).
SWAGGER_UI = "/static/vendor/swagger-ui"

#: Largest body of a request other than an upload (the API's JSON bodies are a few hundred bytes).
MAX_JSON_BYTES = 64 * 1024

#: The routes whose bodies may be large (each checks the upload limit itself): the page's upload, the protocol's image.
UPLOAD_PATHS = ("/api/sessions/upload", "/set_image")

#: Host names a server bound to a loopback address answers to.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")

_DESCRIPTION = """\
Interactive lesion segmentation with SAM-Med3D models (lesionsam). Open an image of the served folder (or upload
one), then click (positive / negative) and draw boxes; every interaction answers with the lesion's new volume and a
patch of the label map (the region that changed), so a viewer updates only that region. Undo, redo and delete work
per lesion. Save writes the label map on the input's exact grid, and the prompts used as JSON, inside the served
folder. Coordinates are 0-based voxel indices (i, j, k) in ITK order = NIfTI's i, j, k (3D Slicer's IJK).
"""


def create_app(
    root: str | os.PathLike[str],
    *,
    make_session: Callable[[Volume], InteractiveSession],
    model_name: str = "random weights",
    max_upload_mb: float = 1024.0,
    max_sessions: int = 4,
    idle_seconds: float = 3600.0,
    cors_origins: Sequence[str] = (),
    allowed_hosts: Sequence[str] | None = LOCAL_HOSTS,
    proposer: Predictor | None = None,
    api_key: str | None = None,
    model_license: str | None = None,
    lease_seconds: tuple[float, float] = (600.0, 60.0),
) -> FastAPI:
    """The web application serving ``root``.

    Args:
        root: the folder whose images are listed, opened and saved next to (nothing outside it is read or written,
            except an upload's private temporary copy).
        make_session: ``volume -> InteractiveSession`` (called once per opened image).
        model_name: shown by ``/api/info``.
        max_upload_mb: uploads larger than this answer 413.
        max_sessions, idle_seconds: see :class:`~lesionsam.serve.sessions.SessionStore`.
        cors_origins: origins allowed to call the API from other pages (none by default: no CORS header at all).
        allowed_hosts: ``Host`` header values answered (DNS-rebinding protection); None answers any host.
        proposer: a :class:`~lesionsam.inference.predictor.Predictor` of a prompt-free (H-SAM) or text-referred
            (RefSAM3D) checkpoint for automatic / text proposals (:mod:`~lesionsam.serve.proposals`), or None.
        api_key: the bearer key nnInteractive's remote protocol requires (:mod:`~lesionsam.serve.remote.routes`;
            ``/healthz`` and the page's own API do not ask for it), or None for none.
        model_license: what the protocol's ``/capabilities`` says of the model's licence (None: a default line).
        lease_seconds: the protocol's (idle, liveness) timeouts of a lease; it holds at most ``max_sessions`` leases
            (apart from the page's sessions).

    Raises:
        ValueError: ``root`` is not an existing folder, or a limit is not positive.
    """
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise ValueError(f"--root {root_path}: not an existing folder; give the folder holding your images")
    if not max_upload_mb > 0:
        raise ValueError(f"--max-upload-mb must be > 0, got {max_upload_mb}")
    if api_key is not None and not api_key.strip():
        raise ValueError("--api-key is empty: give a key, or leave the option out for none")
    from lesionsam.serve.proposal_routes import proposals_router
    from lesionsam.serve.remote.leases import LeaseStore
    from lesionsam.serve.remote.routes import remote_router
    from lesionsam.serve.routes import api_router

    ctx = ServeContext(
        root=root_path.resolve(),
        store=SessionStore(max_sessions=max_sessions, idle_seconds=idle_seconds),
        make_session=make_session,
        model_name=model_name,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        proposer=proposer,
    )

    leases = LeaseStore(max_leases=max_sessions, idle_seconds=lease_seconds[0], liveness_seconds=lease_seconds[1])

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        ctx.store.close_all()  # uploads' temporary copies go with their sessions
        leases.close_all()

    app = FastAPI(
        title="lesionsam serve",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # FastAPI's own /docs and /redoc load their scripts from a CDN: /docs is served below
        redoc_url=None,
    )
    app.state.root = ctx.root
    app.state.ctx = ctx
    install_error_handlers(app, (root_path.absolute(), ctx.root))
    app.include_router(api_router(ctx))
    app.include_router(proposals_router(ctx))
    app.state.leases = leases

    @app.get("/healthz", tags=["nnInteractive remote protocol"], summary="the server is up (no key needed)")
    def _healthz() -> dict[str, bool]:
        return {"ok": True}

    app.include_router(remote_router(ctx, leases, api_key=api_key, license_text=model_license))

    @app.middleware("http")
    async def _body_limit(request: Request, call_next: Callable) -> Response:
        declared = request.headers.get("content-length", "")
        if request.url.path not in UPLOAD_PATHS and declared.isdigit() and int(declared) > MAX_JSON_BYTES:
            return _error(413, f"request body over {MAX_JSON_BYTES // 1024} kB: only uploads may be large")
        return await call_next(request)

    @app.middleware("http")
    async def _headers(request: Request, call_next: Callable) -> Response:
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if request.url.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    if allowed_hosts is not None:
        hosts = {h.lower() for h in allowed_hosts}

        @app.middleware("http")
        async def _trusted_host(request: Request, call_next: Callable) -> Response:
            host = request.headers.get("host", "").lower()
            if host.startswith("["):  # [::1]:8765
                name = host[: host.find("]") + 1]
            else:
                name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
            if name not in hosts:
                return _error(400, f"Host {host!r} is not served: use http://127.0.0.1:PORT/ (DNS-rebinding guard)")
            return await call_next(request)

    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["*"],
        )

    @app.get("/", include_in_schema=False)
    def _page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    def _docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url=f"{SWAGGER_UI}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER_UI}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER_UI}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from validator.swagger.io
        )

    @app.get("/favicon.ico", include_in_schema=False)
    def _favicon() -> Response:
        return Response(status_code=204)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    return app
