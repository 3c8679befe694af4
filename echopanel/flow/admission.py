"""Global admission: at most ``max_sessions`` sessions at once, handed out as leases. Pure; the endpoints decide
how to refuse.

A ``Lease`` is a session slot. It moves with the session it admitted: connection -> detached registry (the
connection dropped, the session waits for a resume) -> the connection that resumes it. Whoever holds it last
releases it; ``release`` is idempotent. A *provisional* lease holds no slot: it admits a connection past the limit
only so that it may resume a detached session (which holds a slot of its own); such a connection may not create a
new session.

Native endpoint: HTTP 503 with ``Retry-After`` before the upgrade. OpenAI dialect: accept, then close 1013 (the
official SDK backs off and retries on 1013). Idle sessions are not pre-empted.
"""

from __future__ import annotations


class Lease:
    """One admission slot (or none, if provisional)."""

    __slots__ = ("_admission", "provisional", "released")

    def __init__(self, admission: Admission, *, provisional: bool = False) -> None:
        self._admission = admission
        self.provisional = provisional
        self.released = False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if not self.provisional:
            self._admission._free()


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

    def provisional(self) -> Lease:
        """A lease without a slot, for a connection that may only resume a detached session."""
        return Lease(self, provisional=True)

    def _free(self) -> None:
        if self.active > 0:
            self.active -= 1

    @property
    def capacity_left(self) -> int:
        return self.max_sessions - self.active
