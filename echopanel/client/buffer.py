"""The resilient client's per-source audio buffer: audio kept until the server acknowledges it.

One ``AudioBuffer`` per source of a ``ResilientClient`` (``echopanel.client.resilient``). It is pure (no I/O, no
clock): the client appends each chunk it is given, the sender (``echopanel.client.sender``) takes what is not yet sent
on the current connection (``unsent``), and the server's acknowledgements (``received_ms``, docs/protocol.md
"Resume") trim it (``ack``). Positions are in samples from the start of the session.

- **Bounded** in samples (``limit``): past the bound the *oldest* chunks are dropped (a live source cannot wait) and
  counted in ``dropped``. Whether the client waits for room instead (``when_full="wait"``) is the client's choice:
  ``room`` tells it.
- **Resend** after a resume starts at ``sent = acked``; a span dropped at the bound that the server never got is
  sent as silence of the same length (``fill`` chunks, counted in ``filled`` by the sender), so times stay aligned
  and the loss is visible.
- **A new session** (the server no longer had the old one): ``rebase`` keeps only what the old one never
  acknowledged, counted from 0.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

BYTES_PER_SAMPLE = 2


@dataclass
class Chunk:
    offset: int  # first sample
    pcm: bytes
    fill: bool = False  # silence standing in for audio dropped at the bound before the server got it

    @property
    def end(self) -> int:
        return self.offset + len(self.pcm) // BYTES_PER_SAMPLE


class AudioBuffer:
    """One source's audio not yet acknowledged by the server. Bounded in samples; drops oldest at the bound."""

    def __init__(self, limit_samples: int) -> None:
        self.limit = limit_samples
        self.chunks: deque[Chunk] = deque()
        self.end = 0  # samples produced so far (the next chunk's offset)
        self.acked = 0  # the server holds everything before this
        self.sent = 0  # sent on the current connection up to here
        self.dropped = 0  # samples dropped at the bound (maybe sent already: the server may still have them)
        self.filled = 0  # samples the server never got and received as silence instead: audio lost
        self.buffered = 0  # samples kept in memory
        self.max_held = 0  # the most ever kept

    @property
    def held(self) -> int:
        """Samples not yet acknowledged (kept, or dropped at the bound)."""
        return self.end - self.acked

    def room(self, samples: int) -> bool:
        return self.buffered + samples <= self.limit

    def append(self, pcm: bytes) -> None:
        chunk = Chunk(self.end, pcm)
        self.chunks.append(chunk)
        self.end = chunk.end
        self.buffered += len(pcm) // BYTES_PER_SAMPLE
        while self.buffered > self.limit and self.chunks:
            old = self.chunks.popleft()  # the oldest goes first (a live source cannot wait)
            n = len(old.pcm) // BYTES_PER_SAMPLE
            self.buffered -= n
            self.dropped += n
        self.max_held = max(self.max_held, self.buffered)

    def ack(self, samples: int) -> None:
        samples = min(samples, self.end)
        if samples <= self.acked:
            return
        self.acked = samples
        while self.chunks and self.chunks[0].end <= samples:
            self.buffered -= len(self.chunks.popleft().pcm) // BYTES_PER_SAMPLE
        if self.chunks and self.chunks[0].offset < samples:
            c = self.chunks[0]
            self.chunks[0] = Chunk(samples, c.pcm[(samples - c.offset) * BYTES_PER_SAMPLE :])
            self.buffered -= samples - c.offset

    def unsent(self, chunk_samples: int, limit: int | None = None, *, split: bool = False) -> list[Chunk]:
        """What to send from ``sent`` on (at most ``limit`` samples): silence for a dropped span in pieces of
        ``chunk_samples``, then the kept chunks (cut at the limit; with ``split`` also in pieces of at most
        ``chunk_samples``)."""
        out: list[Chunk] = []
        pos = self.sent
        stop = self.end if limit is None else min(self.end, pos + limit)
        first_kept = self.chunks[0].offset if self.chunks else self.end
        while pos < min(first_kept, stop):  # dropped at the bound: silence keeps the clock right
            n = min(chunk_samples, min(first_kept, stop) - pos)
            out.append(Chunk(pos, b"\x00\x00" * n, fill=True))
            pos += n
        for c in self.chunks:
            if pos >= stop:
                break
            if c.end <= pos:
                continue
            if c.offset < pos:
                c = Chunk(pos, c.pcm[(pos - c.offset) * BYTES_PER_SAMPLE :])
            if c.end > stop:
                c = Chunk(c.offset, c.pcm[: (stop - c.offset) * BYTES_PER_SAMPLE])
            step = chunk_samples * BYTES_PER_SAMPLE
            if split and len(c.pcm) > step:
                pieces = range(0, len(c.pcm), step)
                out.extend(Chunk(c.offset + i // BYTES_PER_SAMPLE, c.pcm[i : i + step]) for i in pieces)
            else:
                out.append(c)
            pos = c.end
        return out

    def rebase(self) -> int:
        """A new session: keep only what the old one never acknowledged, counted from 0. Audio dropped at the bound
        before the first kept sample is skipped (the new session's clock starts with what is kept). Returns the
        samples kept."""
        keep_from = max(self.acked, self.chunks[0].offset if self.chunks else self.end)
        while self.chunks and self.chunks[0].end <= keep_from:
            self.buffered -= len(self.chunks.popleft().pcm) // BYTES_PER_SAMPLE
        if self.chunks and self.chunks[0].offset < keep_from:
            c = self.chunks[0]
            self.chunks[0] = Chunk(keep_from, c.pcm[(keep_from - c.offset) * BYTES_PER_SAMPLE :])
            self.buffered -= keep_from - c.offset
        self.chunks = deque(Chunk(c.offset - keep_from, c.pcm, c.fill) for c in self.chunks)
        self.end -= keep_from
        self.acked = self.sent = 0
        return self.end
