"""The resilient client's sending side: the one writer of buffered audio to the current connection.

A ``ResilientClient`` (``echopanel.client.resilient``) has one ``Sender``, run as one task. ``send_audio`` only
appends to the per-source buffers (``echopanel.client.buffer``) and wakes the sender, so it never waits for the
network; the sender writes, in order and source by source, whatever is buffered and not yet sent on the current
connection, whenever the connection is live. It knows the connection only as the supervisor hands it over
(``attach``, ``live``): a write that finds the connection closed clears ``live`` (the supervisor notices the drop and
reconnects), and a pass that started on an older connection stops (``gen``).

**Catch-up** (``CatchUp``; without it the backlog goes as fast as the socket takes it): after a reconnect a backlog
above ``threshold_ms`` is resent at ``speed`` x real time, in frames of at most ``max_frame_ms``, and paused while the
server reports backpressure for that source (``set_backpressure``: ``input_audio_buffer.backpressure`` or
``session.metrics`` ``sources.*.backpressure`` not ``normal``), so the catch-up does not itself overflow the server's
queue (docs/protocol.md, "Reconnect policy"). The pace is a credit per source, earned with time and spent per frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from echopanel.client.buffer import BYTES_PER_SAMPLE, AudioBuffer, Chunk
from echopanel.protocol.frames import encode_frame

PACE_TICK_S = 0.05  # while a paced catch-up holds audio back, the sender looks again this often


@dataclass(frozen=True)
class CatchUp:
    """How a backlog is resent after a reconnect (live capture): paced, and paused under server backpressure."""

    speed: float = 4.0  # in multiples of real time
    threshold_ms: int = 1000  # a backlog above this is paced; below it goes at once
    max_frame_ms: int = 250  # audio per frame while catching up
    min_frame_ms: int = 20  # less credit than this: wait for more


class Sender:
    """Writes the buffered audio of every source to the current connection (``run``, the client's sender task)."""

    def __init__(
        self,
        sources: Sequence[str],
        buffers: Mapping[str, AudioBuffer],
        sample_rate: int,
        catchup: CatchUp | None,
        clock: Callable[[], float],
        caught_up_s: list[float],
    ) -> None:
        self.sources = sources  # in frame-index order
        self.buffers = buffers
        self.sample_rate = sample_rate
        self.catchup = catchup
        self.clock = clock
        self.caught_up_s = caught_up_s  # catch-up durations go here (connection lost -> all buffered audio resent)
        self.backpressure = {s: "normal" for s in sources}  # as the server last reported it
        self.ws: ClientConnection | None = None  # the connection to write to
        self.gen = 0  # which connection: bumped by each attach, so a pass on an old one stops
        self.live = False  # the connection has a session: audio may go
        self.stopped = False  # the client has ended: ``run`` returns
        self.wake = asyncio.Event()  # the sender has something to look at
        self.progress = asyncio.Event()  # the sender finished a pass
        self.catching_up_since: float | None = None  # when the connection was lost, until the backlog is resent
        self._credit = dict.fromkeys(sources, 0.0)  # catch-up: samples that may go now, per source
        self._credit_at = dict.fromkeys(sources, 0.0)

    def attach(self, ws: ClientConnection) -> None:
        """A new connection: write to it from now on (``live`` is set once its session is in place)."""
        self.ws = ws
        self.gen += 1

    def restart_pace(self, now: float) -> None:
        """A new connection is live: the catch-up credit starts again from nothing."""
        for name in self.sources:
            self._credit[name], self._credit_at[name] = 0.0, now

    def stop(self) -> None:
        """The client has ended: ``run`` returns at its next look, ``drain`` gives up."""
        self.stopped = True
        self.wake.set()

    def set_backpressure(self, source: Any, value: Any) -> None:
        """The server's backpressure level for ``source`` (a level, or an object with ``level``)."""
        level = value.get("level") if isinstance(value, dict) else value
        if source in self.backpressure and isinstance(level, str):
            self.backpressure[source] = level
            if level == "normal":
                self.wake.set()

    async def run(self) -> None:
        """The one writer of audio: whatever is buffered and not yet sent on this connection, when allowed."""
        while not self.stopped:
            self.wake.clear()
            held_back = False
            if self.live and self.ws is not None:
                held_back = await self._pump()
            self.progress.set()
            if held_back:  # a paced catch-up: more credit comes with time
                try:
                    await asyncio.wait_for(self.wake.wait(), PACE_TICK_S)
                except TimeoutError:
                    pass
            else:
                await self.wake.wait()

    async def drain(self, gen: int, deadline: float | None = None) -> bool:
        """Wait until the audio given so far is sent on connection ``gen``; False if it dropped (or the deadline)."""
        targets = {name: b.end for name, b in self.buffers.items()}
        while True:
            if not self.live or gen != self.gen or self.stopped:
                return False
            if all(self.buffers[name].sent >= end for name, end in targets.items()):
                return True
            if deadline is not None and self.clock() >= deadline:
                return False
            self.progress.clear()
            self.wake.set()
            try:
                await asyncio.wait_for(self.progress.wait(), 2 * PACE_TICK_S)
            except TimeoutError:
                pass

    async def _pump(self) -> bool:
        """Send what may go now, in order; True when audio is pending that the catch-up pace holds back."""
        ws, gen = self.ws, self.gen
        assert ws is not None
        try:
            while self.live and gen == self.gen:
                progressed = False
                for index, name in enumerate(self.sources):
                    buf = self.buffers[name]
                    for chunk in self._sendable(name, buf):
                        await ws.send(encode_frame(index, chunk.pcm))
                        if gen != self.gen:
                            return False
                        buf.sent = max(buf.sent, chunk.end)
                        if chunk.fill:
                            buf.filled += len(chunk.pcm) // BYTES_PER_SAMPLE
                        progressed = True
                if not self._pending():
                    if self.catching_up_since is not None:
                        self.caught_up_s.append(self.clock() - self.catching_up_since)
                        self.catching_up_since = None
                    return False
                if not progressed:
                    return True
        except ConnectionClosed:
            if gen == self.gen:
                self.live = False  # the supervisor notices and reconnects
        return False

    def _sendable(self, name: str, buf: AudioBuffer) -> list[Chunk]:
        """The chunks of one source that may go now (all of them, or with ``catchup`` what its pace allows)."""
        c = self.catchup
        if c is None:
            return buf.unsent(self.sample_rate // 10)
        rate = self.sample_rate
        frame = c.max_frame_ms * rate // 1000
        now = self.clock()
        credit = min(self._credit[name] + (now - self._credit_at[name]) * rate * c.speed, frame * c.speed)
        self._credit_at[name] = now
        self._credit[name] = credit
        if buf.end - buf.sent <= c.threshold_ms * rate // 1000:
            return buf.unsent(frame, split=True)  # live, or the last of a catch-up: at once
        if self.backpressure.get(name, "normal") != "normal":
            return []  # the server's queue is filling: let it drain before more of the backlog
        limit = min(frame, int(credit))
        if limit < c.min_frame_ms * rate // 1000:
            return []
        chunks = buf.unsent(frame, limit, split=True)
        self._credit[name] = credit - sum(len(ch.pcm) // BYTES_PER_SAMPLE for ch in chunks)
        return chunks

    def _pending(self) -> bool:
        return any(b.sent < b.end for b in self.buffers.values())
