"""Keep the server's resident memory flat over long sessions and from one session to the next.

- Decodes on several threads make glibc give each thread its own malloc arena; the freed numpy buffers then stay
  scattered across arenas and RSS ratchets up over a long session (measured in bench/soak.py: +52 MB over 30 min
  with default arenas). Two arenas, a fixed mmap threshold (``MMAP_THRESHOLD``) and returning free heap to the OS
  every ``memory_trim_s`` keep it flat (glibc only; a no-op elsewhere).
- An ended session is freed by reference counting (tests/server/test_session_freed.py holds every path to that).
  What an exception cycle in a library still holds goes at the full collection ``collect_soon`` runs after each
  session ends; ``freeze`` moves everything loaded at startup (the models' Python side: ~74 000 objects) out of the
  collector's sight, so that collection takes ~1 ms instead of 40-80 ms of the event loop.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
from typing import Any

from echopanel.metrics import rss_bytes

log = logging.getLogger(__name__)

M_ARENA_MAX = -8
M_MMAP_THRESHOLD = -3
# glibc raises its mmap threshold each time a mapped block is freed (up to 32 MB), so the decode working set (encoder
# activations, attention scores: 1-50 MB blocks) moves into the heap and stays resident between decodes. A fixed
# threshold keeps the big blocks mapped, given back on free (and fixes the trim threshold at 128 KB). 4 MB, measured
# (bench/soak, 6 min of a two-source call, compute for 58 finals / peak RSS / settled after close): glibc's dynamic
# threshold 26 s / 491 / 368 MB; 1 MB 31 s / 427 / 353 MB (every mapped block is page-faulted in anew); 2 MB 31 s /
# 429 / 354; 4 MB 27 s / 447 / 354; 8 MB 26 s / 483 / 364.
MMAP_THRESHOLD = 4 << 20
COLLECT_AFTER_S = 2.0  # after a session ends: by then its connection's tasks have returned

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


def limit_arenas(arenas: int = 2, mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Call before threads start allocating: at most ``arenas`` malloc arenas, and every block of
    ``mmap_threshold`` bytes or more gets its own mapping, returned to the OS when it is freed."""
    lib = _glibc()
    if lib is None:
        return False
    ok = bool(lib.mallopt(M_ARENA_MAX, arenas)) and bool(lib.mallopt(M_MMAP_THRESHOLD, mmap_threshold))
    log.debug("malloc arenas limited to %d, mmap threshold %d: %s", arenas, mmap_threshold, ok)
    return ok


def trim() -> None:
    lib = _glibc()
    if lib is not None:
        lib.malloc_trim(0)


def freeze() -> None:
    """Startup is done: what it loaded lives as long as the server, so the cyclic collector stops scanning it."""
    gc.collect()
    gc.freeze()
    log.debug("%d objects frozen out of the cyclic collector", gc.get_freeze_count())


_collect: asyncio.TimerHandle | None = None
_collect_loop: asyncio.AbstractEventLoop | None = None  # (a timer of a loop that has ended never fires)
_trims: set[asyncio.Task[None]] = set()


def collect_soon(delay_s: float = COLLECT_AFTER_S) -> None:
    """A session ended: in ``delay_s``, a full collection, then free heap back to the OS (off the event loop).
    Sessions that end together share one."""
    global _collect, _collect_loop
    loop = asyncio.get_running_loop()
    if _collect is not None and _collect_loop is loop and not _collect.cancelled():
        return
    _collect, _collect_loop = loop.call_later(delay_s, _collect_now), loop


def _collect_now() -> None:
    global _collect
    _collect = None
    started = time.perf_counter()
    found = gc.collect()
    log.debug("garbage collection after a session: %d objects in %.1f ms", found, (time.perf_counter() - started) * 1e3)
    task = asyncio.get_running_loop().create_task(asyncio.to_thread(trim))
    _trims.add(task)
    task.add_done_callback(_trims.discard)


# -- heap profile (diagnostics; ``memory_debug`` only) ---------------------------------------------------------------


class HeapProfile:
    """Python allocations by where they were made (``tracemalloc``), and how much each place grew since a baseline.

    Started with the server when ``memory_debug`` is on (``ECHOPANEL_MEMORY_DEBUG=1``): tracing costs CPU and memory
    of its own, so it is never on by default. Numpy arrays are traced (numpy reports to tracemalloc); native
    allocations (CTranslate2, onnxruntime) are not: compare ``traced_mb`` with ``rss_mb``.
    """

    def __init__(self, frames: int = 6) -> None:
        import tracemalloc

        self._tm = tracemalloc
        if not tracemalloc.is_tracing():
            tracemalloc.start(frames)
        self.reset()

    def reset(self) -> None:
        self._baseline = self._snapshot()
        self._baseline_at = time.monotonic()

    def _snapshot(self) -> Any:
        tm = self._tm
        snap = tm.take_snapshot()
        return snap.filter_traces(
            (
                tm.Filter(False, tm.__file__),
                tm.Filter(False, "<frozen importlib._bootstrap*>"),
                tm.Filter(False, "<unknown>"),
            )
        )

    def report(self, top: int = 15, group: str = "lineno") -> dict[str, Any]:
        """The ``top`` places whose allocations grew most since the baseline (blocking: run it off the loop)."""
        snap = self._snapshot()
        stats = snap.compare_to(self._baseline, "traceback" if group == "traceback" else "lineno")
        stats.sort(key=lambda s: s.size_diff, reverse=True)
        current, _peak = self._tm.get_traced_memory()
        return {
            "rss_mb": round(rss_bytes() / 2**20, 1),
            "traced_mb": round(current / 2**20, 1),
            "baseline_age_s": round(time.monotonic() - self._baseline_at, 1),
            "top": [
                {
                    "where": " <- ".join(f"{_short(f.filename)}:{f.lineno}" for f in reversed(s.traceback))
                    if group == "traceback"
                    else f"{_short(s.traceback[0].filename)}:{s.traceback[0].lineno}",
                    "size_kb": round(s.size / 1024, 1),
                    "count": s.count,
                    "growth_kb": round(s.size_diff / 1024, 1),
                }
                for s in stats[:top]
            ],
        }


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/echopanel/"):
        if marker in path:
            return ("echopanel/" if marker == "/echopanel/" else "") + path.split(marker, 1)[1]
    return path
