"""Global admission: at most ``max_sessions`` sessions at once, handed out as leases. Pure; the endpoints decide
how to refuse.

A ``Lease`` is a session slot. It moves with the session it admitted: connection -> detached registry (the
connection dropped, the session waits for a resume) -> the connection that resumes it. Whoever holds it last
releases it; ``release`` is idempotent. A resume takes no new slot: the detached session still holds its own.

A slot is taken when a session is created: for the native dialect at ``session.create`` (a socket that has not
sent it holds none), for the OpenAI and Deepgram dialects at the upgrade (their session starts with the socket).
Native endpoint: HTTP 503 with ``Retry-After`` before the upgrade when no slot is free, and error ``server_full`` +
close 1013 when the last slot went between the upgrade and ``session.create``. OpenAI dialect: accept, then close
1013 (the official SDK backs off and retries on 1013). Idle sessions are not pre-empted.

``Pending`` bounds the sockets that wait without a session (native, before ``session.create``).
"""

from __future__ import annotations

from collections.abc import Callable


class Lease:
    """One admission slot (and, with a fleet-wide limit, the fleet's slot it holds: ``also`` runs on release)."""

    __slots__ = ("_admission", "also", "released")

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self.released = False
        self.also: Callable[[], None] | None = None

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self._admission._free()
        if self.also is not None:
            self.also()


class Admission:
    def __init__(self, max_sessions: int, retry_after_s: int = 5) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.max_sessions = max_sessions
        self.retry_after_s = retry_after_s
        self.active = 0
        self.refused = 0

    def acquire(self) -> Lease | None:
        """A slot, or None at the limit (counted as refused)."""
        if self.active >= self.max_sessions:
            self.refused += 1
            return None
        self.active += 1
        return Lease(self)

    def _free(self) -> None:
        if self.active > 0:
            self.active -= 1

    @property
    def capacity_left(self) -> int:
        return self.max_sessions - self.active


class Pending:
    """Sockets accepted without a session yet: at most ``limit`` at once (``max_pending_connections``)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.count = 0

    def enter(self) -> bool:
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def leave(self) -> None:
        if self.count > 0:
            self.count -= 1
