"""Global admission: at most ``max_sessions`` sessions at once. Pure; the endpoints decide how to refuse.

Native endpoint: HTTP 503 with ``Retry-After`` before the upgrade. OpenAI dialect: accept, then close 1013 (the
official SDK backs off and retries on 1013). An admitted session holds its slot until it ends; idle sessions are
not pre-empted.
"""

from __future__ import annotations


class Admission:
    def __init__(self, max_sessions: int, retry_after_s: int = 5) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.max_sessions = max_sessions
        self.retry_after_s = retry_after_s
        self.active = 0
        self.refused = 0

    def try_admit(self) -> bool:
        if self.active >= self.max_sessions:
            self.refused += 1
            return False
        self.active += 1
        return True

    def release(self) -> None:
        if self.active > 0:
            self.active -= 1

    @property
    def capacity_left(self) -> int:
        return self.max_sessions - self.active
