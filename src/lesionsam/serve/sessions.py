"""Open sessions of the server: one :class:`~lesionsam.inference.session.InteractiveSession` per opened image.

Ids are :func:`secrets.token_urlsafe` (192 bits): a client can reach only the sessions whose id it was given. Each
session has its own lock (its requests run one at a time, in order); one more lock across sessions runs one model
computation at a time, so that two people clicking share the CPU instead of thrashing it. Sessions idle for longer
than ``idle_seconds`` are closed when another one is opened; at most ``max_sessions`` are open at once, and when
they all are, opening one more closes the least recently used session if it has been idle for ``evict_seconds``
(a page reloaded without closing its session does not lock the server for an hour), else answers 429.
"""

from __future__ import annotations

import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lesionsam.data.io import Volume
from lesionsam.inference.predictor import Predictor
from lesionsam.inference.session import InteractiveSession
from lesionsam.serve.proposals import Proposal

#: Display colours of lesions 1, 2, ... (cycled): saturated hues that stand out on a grey-scale CT or MRI.
LESION_COLOURS = (
    "#ff3b30",
    "#34c759",
    "#0a84ff",
    "#ffd60a",
    "#bf5af2",
    "#ff9f0a",
    "#64d2ff",
    "#ff375f",
    "#30d158",
    "#5e5ce6",
)


def lesion_colour(lesion: int) -> str:
    """The ``#rrggbb`` colour of lesion id ``lesion`` (>= 1)."""
    return LESION_COLOURS[(lesion - 1) % len(LESION_COLOURS)]


class SessionNotFound(KeyError):
    """No open session has this id (never opened, closed, or closed for being idle)."""


class TooManySessions(RuntimeError):
    """The server holds ``max_sessions`` open sessions already."""


@dataclass
class OpenCase:
    """One open session.

    Attributes:
        sid: the session id.
        name: the image's client path (relative to the root) or the uploaded file's name.
        source: the resolved input file inside the root (None for an upload).
        volume: the input volume (its grid is the grid of every label map and patch).
        session: the interactive engine.
        upload_dir: a private temporary folder holding an upload (removed on close).
        proposals: the last proposals' (D, H, W) id map and list (:mod:`~lesionsam.serve.proposals`), or None.
    """

    sid: str
    name: str
    source: Path | None
    volume: Volume
    session: InteractiveSession
    upload_dir: Path | None = None
    proposals: tuple[np.ndarray, list[Proposal]] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_used: float = field(default_factory=time.monotonic)


class SessionStore:
    """The open sessions, keyed by unguessable ids.

    Args:
        max_sessions: most sessions open at once (each holds a volume and cached image embeddings).
        idle_seconds: a session unused this long is closed when another one is opened.
        evict_seconds: when every slot is taken, the least recently used session is closed for a new one if it has
            been unused this long.
        clock: monotonic clock in seconds (tests pass a fake one).
    """

    def __init__(
        self,
        *,
        max_sessions: int = 4,
        idle_seconds: float = 3600.0,
        evict_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        self.max_sessions = max_sessions
        self.idle_seconds = idle_seconds
        self.evict_seconds = evict_seconds
        self._clock = clock
        self._cases: dict[str, OpenCase] = {}
        self._lock = threading.Lock()
        #: Held around every model computation (one at a time across sessions).
        self.compute_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._cases)

    def reserve(self) -> None:
        """Close idle sessions; raise :class:`TooManySessions` if no slot is free for a new one."""
        now = self._clock()
        with self._lock:
            idle = [sid for sid, c in self._cases.items() if now - c.last_used > self.idle_seconds]
            closed = [self._cases.pop(sid) for sid in idle]
            if len(self._cases) >= self.max_sessions:
                oldest = min(self._cases.values(), key=lambda c: c.last_used)
                if now - oldest.last_used >= self.evict_seconds:
                    closed.append(self._cases.pop(oldest.sid))
            full = len(self._cases) >= self.max_sessions
        for case in closed:
            _cleanup(case)
        if full:
            raise TooManySessions(
                f"{self.max_sessions} sessions are open already: close one (DELETE /api/sessions/ID) and try again"
            )

    def add(self, **fields: object) -> OpenCase:
        """Register a new session (fields of :class:`OpenCase` but ``sid``) under a fresh id."""
        with self._lock:
            if len(self._cases) >= self.max_sessions:
                raise TooManySessions(
                    f"{self.max_sessions} sessions are open already: close one (DELETE /api/sessions/ID) and try again"
                )
            sid = secrets.token_urlsafe(24)
            while sid in self._cases:  # pragma: no cover - 192 random bits
                sid = secrets.token_urlsafe(24)
            case = OpenCase(sid=sid, last_used=self._clock(), **fields)
            self._cases[sid] = case
        return case

    def get(self, sid: str) -> OpenCase:
        """The session ``sid`` (its use time refreshed); :class:`SessionNotFound` if there is none."""
        with self._lock:
            case = self._cases.get(sid)
            if case is None:
                raise SessionNotFound(sid)
            case.last_used = self._clock()
            return case

    def close(self, sid: str) -> None:
        """Close the session ``sid`` (its upload, if any, is deleted); :class:`SessionNotFound` if there is none."""
        with self._lock:
            case = self._cases.pop(sid, None)
        if case is None:
            raise SessionNotFound(sid)
        with case.lock:
            _cleanup(case)

    def close_all(self) -> None:
        """Close every session (the server is stopping)."""
        with self._lock:
            cases = list(self._cases.values())
            self._cases.clear()
        for case in cases:
            _cleanup(case)


def _cleanup(case: OpenCase) -> None:
    if case.upload_dir is not None:
        shutil.rmtree(case.upload_dir, ignore_errors=True)


@dataclass
class ServeContext:
    """What the routes share.

    Attributes:
        root: the served folder, resolved.
        store: the open sessions.
        make_session: builds an interactive session on a volume (the engine with the loaded model).
        model_name: how ``/api/info`` names the model.
        max_upload_bytes: largest upload accepted.
        proposer: the predictor of ``--proposals`` (prompt-free or text-referred), or None.
    """

    root: Path
    store: SessionStore
    make_session: Callable[[Volume], InteractiveSession]
    model_name: str
    max_upload_bytes: int
    proposer: Predictor | None = None
