"""One source's queue between the socket and its recognizer: bounded, drop-oldest, shed spans, backpressure level.

Pure and clock-injected (every method that needs the time takes ``now``), so it is tested without sleeps; the
session (``echopanel/session/session.py``) owns the tasks and the waiting.

- Audio is queued as ``Chunk``s (a sample offset in the source's clock and float32 samples). The bound is in
  samples (``limit_samples``). ``put`` drops the *oldest* queued audio until the new chunk fits (a chunk larger than
  the bound still passes alone): each drop is a shed span, merged with the previous one when they touch. With the
  session's ``overflow="block"`` the caller waits while ``would_block`` instead, and nothing is shed.
- Control markers (commit, response.create, configure, clear, flush) travel in the same queue, so they apply after
  the audio sent before them. They are bounded too: ``max_markers`` at once; past it ``put_marker`` raises
  ``MarkersFull`` (the client gets a typed error, the session goes on). Finalization's own markers pass ``force``.
- ``notice(now)`` says when the backpressure level changes (normal, high at half the bound, shedding while drops
  happened within ``hold_s``), and repeats ``shedding`` every ``repeat_s``: the client always knows.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from echopanel.events import Backpressure

M = TypeVar("M")

SHEDDING_HOLD_S = 1.0  # "shedding" lasts this long after the last drop
BACKPRESSURE_REPEAT_S = 0.5  # while shedding, the client hears about it at most this often
MAX_MARKERS = 64  # control events waiting in one source's queue


class MarkersFull(Exception):
    """Too many control events are waiting in this source's queue."""


@dataclass(slots=True, frozen=True)
class Chunk:
    offset: int  # first sample, in the source's clock at the session rate
    audio: np.ndarray

    @property
    def end(self) -> int:
        return self.offset + len(self.audio)


class SourceQueue(Generic[M]):
    def __init__(
        self,
        name: str,
        *,
        rate: int,
        limit_samples: int,
        max_markers: int = MAX_MARKERS,
        hold_s: float = SHEDDING_HOLD_S,
        repeat_s: float = BACKPRESSURE_REPEAT_S,
    ) -> None:
        if limit_samples < 1 or max_markers < 1:
            raise ValueError("bounds must be at least 1")
        self.name = name
        self.rate = rate
        self.limit_samples = limit_samples
        self.max_markers = max_markers
        self.hold_s = hold_s
        self.repeat_s = repeat_s
        self._entries: deque[Chunk | M] = deque()
        self.queued_samples = 0
        self.max_queued_samples = 0
        self.markers = 0
        self.dropped_samples = 0
        self.shed_spans: list[list[int]] = []  # [start, end) samples, merged, in order
        self.level = "normal"
        self._last_drop: float | None = None
        self._last_notice = -1e9

    def __len__(self) -> int:
        return len(self._entries)

    def ms(self, samples: int) -> int:
        return samples * 1000 // self.rate

    # -- audio ---------------------------------------------------------------------------------------------------

    def would_block(self, samples: int) -> bool:
        """Whether a chunk of ``samples`` would pass the bound (a lone chunk always fits)."""
        return self.queued_samples > 0 and self.queued_samples + samples > self.limit_samples

    def put(self, chunk: Chunk, now: float) -> None:
        """Queue ``chunk``, dropping the oldest queued audio first while it would not fit."""
        n = len(chunk.audio)
        while self.would_block(n):
            self._drop_oldest(now)
        self._entries.append(chunk)
        self.queued_samples += n
        self.max_queued_samples = max(self.max_queued_samples, self.queued_samples)

    def shed(self, start: int, end: int, now: float) -> None:
        """Samples [start, end) will not be transcribed live (dropped at the bound, or the source is not live)."""
        if end <= start:
            return
        self.dropped_samples += end - start
        self._last_drop = now
        spans = self.shed_spans
        if spans and spans[-1][1] >= start:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])

    def clear_audio(self) -> int:
        """Drop every queued chunk (markers stay, in order); returns the samples dropped. Not a shed: the client
        asked for it (``input_audio_buffer.clear``), nothing is repaired."""
        kept: deque[Chunk | M] = deque(e for e in self._entries if not isinstance(e, Chunk))
        removed = self.queued_samples
        self._entries = kept
        self.queued_samples = 0
        return removed

    def _drop_oldest(self, now: float) -> None:
        for i, entry in enumerate(self._entries):
            if isinstance(entry, Chunk):
                del self._entries[i]
                self.queued_samples -= len(entry.audio)
                self.shed(entry.offset, entry.end, now)
                return
        self.queued_samples = 0  # pragma: no cover - queued_samples > 0 implies a chunk

    # -- markers -------------------------------------------------------------------------------------------------

    def put_marker(self, marker: M, *, force: bool = False) -> None:
        if self.markers >= self.max_markers and not force:
            raise MarkersFull(f"{self.markers} control events are already waiting for source {self.name!r}")
        self._entries.append(marker)
        self.markers += 1

    # -- the consumer --------------------------------------------------------------------------------------------

    def pop(self) -> Chunk | M:
        """The oldest entry (``IndexError`` when empty)."""
        entry = self._entries.popleft()
        if isinstance(entry, Chunk):
            self.queued_samples = max(0, self.queued_samples - len(entry.audio)) if self._entries else 0
        else:
            self.markers -= 1
        return entry

    # -- backpressure --------------------------------------------------------------------------------------------

    def level_at(self, now: float) -> str:
        if self._last_drop is not None and now - self._last_drop < self.hold_s:
            return "shedding"
        if self.queued_samples * 2 >= self.limit_samples:
            return "high"
        return "normal"

    def notice(self, now: float) -> Backpressure | None:
        """A ``Backpressure`` event when the level changed, or every ``repeat_s`` while shedding; else None."""
        level = self.level_at(now)
        if level == self.level and not (level == "shedding" and now - self._last_notice >= self.repeat_s):
            return None
        self.level = level
        self._last_notice = now
        return Backpressure(
            self.name, level, self.ms(self.queued_samples), self.ms(self.dropped_samples), self.ms(self.limit_samples)
        )
