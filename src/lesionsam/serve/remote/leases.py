"""Leases of nnInteractive's remote protocol: one per connected client, each holding its own image and object.

A client claims a lease (``POST /claim``) and sends its token in ``X-Lease-Token`` with every later request. A lease
is reaped (and its token then answers 410, which the client reports as ``SessionExpiredError``) when no interaction
came for ``idle_seconds`` or no request at all (heartbeats included) for ``liveness_seconds``; the client heartbeats
every half liveness timeout. At most ``max_leases`` are held at once: one more claim answers 503 with
``Retry-After`` (``ServerAtCapacityError``). Tokens are :func:`secrets.token_urlsafe` (192 bits).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lesionsam.serve.remote.state import RemoteObject

#: Defaults: idle timeout (10 min, as nnInteractive's server), liveness timeout, seconds a full server asks to wait.
IDLE_SECONDS, LIVENESS_SECONDS, RETRY_AFTER_SECONDS = 600.0, 60.0, 30


class LeaseGone(KeyError):
    """The token names no held lease (never claimed, released or reaped): 410."""


class AtCapacity(RuntimeError):
    """Every lease is held: 503 with ``Retry-After``."""


@dataclass
class Lease:
    """One client's lease: its token, clocks and object (:class:`~lesionsam.serve.remote.state.RemoteObject`)."""

    token: str
    last_used: float
    last_seen: float
    object: RemoteObject = field(default_factory=RemoteObject)
    lock: threading.Lock = field(default_factory=threading.Lock)


class LeaseStore:
    """The held leases (see the module docstring); ``clock``: monotonic seconds (tests pass a fake one)."""

    def __init__(
        self,
        *,
        max_leases: int = 4,
        idle_seconds: float = IDLE_SECONDS,
        liveness_seconds: float = LIVENESS_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_leases < 1:
            raise ValueError(f"max_leases must be >= 1, got {max_leases}")
        if not (idle_seconds > 0 and liveness_seconds > 0):
            raise ValueError("the lease timeouts must be > 0 seconds")
        self.max_leases = max_leases
        self.idle_seconds = float(idle_seconds)
        self.liveness_seconds = float(liveness_seconds)
        self._clock = clock
        self._leases: dict[str, Lease] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._reap(self._clock())
            return len(self._leases)

    def _reap(self, now: float) -> None:
        dead = [
            t
            for t, lease in self._leases.items()
            if now - lease.last_used > self.idle_seconds or now - lease.last_seen > self.liveness_seconds
        ]
        for token in dead:
            del self._leases[token]

    def claim(self) -> Lease:
        """A new lease; :class:`AtCapacity` when ``max_leases`` are held."""
        now = self._clock()
        with self._lock:
            self._reap(now)
            if len(self._leases) >= self.max_leases:
                raise AtCapacity(
                    f"all {self.max_leases} sessions of this server are in use: retry later "
                    "(lesionsam serve --max-sessions raises the limit)"
                )
            token = secrets.token_urlsafe(24)
            lease = Lease(token=token, last_used=now, last_seen=now)
            self._leases[token] = lease
            return lease

    def get(self, token: str | None, *, interaction: bool = False) -> Lease:
        """The lease of ``token`` (seen now; ``interaction`` also postpones its idle timeout); :class:`LeaseGone`."""
        now = self._clock()
        with self._lock:
            self._reap(now)
            lease = self._leases.get(token or "")
            if lease is None:
                raise LeaseGone(token)
            lease.last_seen = now
            if interaction:
                lease.last_used = now
            return lease

    def remaining(self, lease: Lease) -> dict[str, float]:
        """``{"remaining_seconds", "idle_timeout_seconds"}``: seconds until the idle reaper takes ``lease``."""
        left = self.idle_seconds - (self._clock() - lease.last_used)
        return {"remaining_seconds": max(0.0, left), "idle_timeout_seconds": self.idle_seconds}

    def release(self, token: str | None) -> None:
        """Drop the lease of ``token``; :class:`LeaseGone` if it is not held."""
        with self._lock:
            if self._leases.pop(token or "", None) is None:
                raise LeaseGone(token)

    def close_all(self) -> None:
        """Drop every lease (the server is stopping)."""
        with self._lock:
            self._leases.clear()
