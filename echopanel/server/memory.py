"""Keep the server's resident memory flat over long sessions (glibc only; a no-op elsewhere).

Decodes on several threads make glibc give each thread its own malloc arena; the freed numpy buffers then stay
scattered across arenas and RSS ratchets up over a long session (measured in bench/soak.py: +52 MB over 30 min
with default arenas). Two arenas, and returning free heap to the OS every ``TRIM_EVERY_S``, keep it flat.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_ARENA_MAX = -8
TRIM_EVERY_S = 30.0

_libc: ctypes.CDLL | None = None


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        if not name:
            return None
        try:
            lib = ctypes.CDLL(name)
            lib.mallopt  # noqa: B018 - present on glibc only
            lib.malloc_trim  # noqa: B018
        except (OSError, AttributeError):
            return None
        _libc = lib
    return _libc


def limit_arenas(arenas: int = 2) -> bool:
    """Call before threads start allocating."""
    lib = _glibc()
    if lib is None:
        return False
    ok = bool(lib.mallopt(M_ARENA_MAX, arenas))
    log.debug("malloc arenas limited to %d: %s", arenas, ok)
    return ok


def trim() -> None:
    lib = _glibc()
    if lib is not None:
        lib.malloc_trim(0)
