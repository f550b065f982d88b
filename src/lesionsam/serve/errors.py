"""Error answers of ``lesionsam serve``: every error is ``{"detail": "one clear sentence"}`` with the status of the
README's table (see :mod:`lesionsam.serve.app`), and no answer shows what only the server should know.

A message names files as the client named them: relative to ``--root``, or an upload by its own file name. The
absolute path of the root, the system temp folder (where uploads are kept) and the text of a library's exception
(SimpleITK's C++ source location, Python's ``repr`` of paths) never reach the client; the server's log has them.
Malformed JSON (truncated, not UTF-8, nested too deeply) is 422 wherever it is sent.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lesionsam.data.io import ImageIOError, Volume, read_image
from lesionsam.serve.paths import PathRefused
from lesionsam.serve.sessions import SessionNotFound, TooManySessions

log = logging.getLogger(__name__)

#: What FastAPI answers (400) when a JSON body cannot be decoded for another reason than a syntax error.
_FASTAPI_BODY_ERROR = "There was an error parsing the body"

#: OS errors that a path named by the client causes (too long, a file used as a folder, a folder as a file).
_CLIENT_PATH_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.ELOOP})

#: Where SimpleITK's own exception text starts inside a message (its C++ file and line follow).
_SITK_TEXT = re.compile(r":?\s*Exception thrown in SimpleITK.*$")


def error_response(status: int, message: str) -> JSONResponse:
    """The JSON answer ``{"detail": message}`` with ``status``."""
    return JSONResponse({"detail": message}, status_code=status)


def _temp_folders() -> list[str]:
    temp = Path(tempfile.gettempdir())
    return sorted({str(temp), str(temp.resolve())}, key=len, reverse=True)


def public_message(message: str, roots: Iterable[Path]) -> str:
    """``message`` as one line a client may read: paths under ``roots`` made relative to the root (the root itself
    is "the served folder"), a path in the temp folder reduced to its file name, SimpleITK's exception text cut."""
    text = "; ".join(line.strip() for line in message.splitlines() if line.strip())
    text = _SITK_TEXT.sub("", text)
    for root in sorted({str(r) for r in roots}, key=len, reverse=True):
        if root == Path(root).anchor:  # --root / : every absolute path is "relative to the root" already
            continue
        text = text.replace(root + os.sep, "").replace(root, "the served folder")
    for temp in _temp_folders():
        in_temp = re.escape(temp) + r"(?=[/\s'\":,;()]|$)[^\s'\":,;()]*"
        text = re.sub(in_temp, lambda m: Path(m.group(0)).name or "a temporary file", text)
    return text


def read_client_image(name: str, path: Path, channel: int | None) -> Volume:
    """:func:`~lesionsam.data.io.read_image` of ``path``, its errors naming the file ``name`` (the client's path,
    or the upload's file name) without the reader's own exception text.

    Raises:
        ImageIOError: unreadable, corrupt, 2D, a folder without a DICOM series, or a channel that does not exist.
    """
    try:
        return read_image(path, channel=channel)
    except ImageIOError as exc:
        reason = str(exc)
        reason = reason[len(f"{path}: ") :] if reason.startswith(f"{path}: ") else reason
        if reason.startswith("not a readable image"):
            log.info("%s: %s", path, reason)  # SimpleITK's words, for the server's log only
            reason = "not a readable image (corrupt, truncated or unsupported format)"
        raise ImageIOError(f"{name}: {reason}") from None


def _first_error(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid request"
    err = errors[0]
    if err.get("type") == "json_invalid":
        where = err.get("loc", ("body", "?"))[-1]
        reason = err.get("ctx", {}).get("error", "JSON decode error")
        return f"the body is not valid JSON ({reason} at character {where}): send one JSON object"
    where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{where}: {err.get('msg', 'invalid value')}{more}"


def _undecodable_json(exc: StarletteHTTPException) -> str | None:
    """Why FastAPI could not decode a JSON body (its 400 for a body that is not UTF-8 or nested too deeply), or None
    for any other HTTP error."""
    if exc.status_code != 400 or exc.detail != _FASTAPI_BODY_ERROR:
        return None
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return "the body is not valid JSON (not UTF-8 text): send one JSON object"
    if isinstance(cause, RecursionError):
        return "the body is not valid JSON (nested too deeply): send one JSON object"
    if isinstance(cause, ValueError):
        return "the body is not valid JSON: send one JSON object"
    return None


def install_error_handlers(app: FastAPI, roots: Iterable[Path]) -> None:
    """Answer every error of ``app`` as ``{"detail": ...}`` with its README status, in words fit for a client
    (:func:`public_message`; ``roots``: the served folder as given and resolved)."""
    roots = tuple(roots)

    def answer(status: int, message: str) -> JSONResponse:
        return error_response(status, public_message(message, roots))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return answer(422, _first_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        bad_json = _undecodable_json(exc)
        if bad_json is not None:
            return answer(422, bad_json)
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        response = answer(exc.status_code, detail)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(PathRefused)
    async def _refused(_: Request, exc: PathRefused) -> JSONResponse:
        return answer(403, str(exc))

    @app.exception_handler(SessionNotFound)
    async def _no_session(_: Request, exc: SessionNotFound) -> JSONResponse:
        return answer(404, "no open session with this id (closed, timed out or never opened): open the image again")

    @app.exception_handler(TooManySessions)
    async def _full(_: Request, exc: TooManySessions) -> JSONResponse:
        return answer(429, str(exc))

    @app.exception_handler(FileNotFoundError)
    async def _missing(_: Request, exc: FileNotFoundError) -> JSONResponse:
        if exc.filename is not None:  # raised by the OS: "[Errno 2] ..." is Python's wording, not ours
            return answer(404, f"{exc.filename}: no such file in the served folder")
        return answer(404, str(exc) or "file not found")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("error in %s %s", request.method, request.url.path)
        return answer(500, f"internal error ({type(exc).__name__}); the server log has the details")

    @app.exception_handler(OSError)
    async def _os(request: Request, exc: OSError) -> JSONResponse:
        if exc.errno in _CLIENT_PATH_ERRNOS and exc.filename is not None:  # a path the client named cannot be one
            return answer(400, f"{exc.filename}: {(exc.strerror or 'invalid path').lower()}: give another path")
        return await _unexpected(request, exc)

    @app.exception_handler(ValueError)
    async def _bad(_: Request, exc: ValueError) -> JSONResponse:
        return answer(400, str(exc) or type(exc).__name__)
