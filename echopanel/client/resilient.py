"""A client that survives dropped connections: buffers unacknowledged audio, reconnects, resumes the same session.

``ResilientClient`` speaks the native protocol like ``LiveClient`` and adds (docs/protocol.md "Resume"):

- **Buffer.** Every audio chunk is kept per source until the server acknowledges it (``received_ms`` in each
  ``session.metrics``, about once a second, and in a resumed ``session.created``). The buffer is bounded in seconds
  (``buffer_s``, default 30). At the bound the *oldest* audio is dropped (``when_full="drop_oldest"``, for live
  capture, which cannot wait) and counted in ``dropped_ms``; on resume the dropped span is sent as silence of the
  same length, so times stay aligned and the loss is visible. ``when_full="wait"`` (files) makes ``send_audio``
  wait for room instead.
- **Reconnect.** A connection that ends without the session ending is retried with exponential backoff and full
  jitter: the n-th attempt waits uniform(0, min(backoff_max_s, backoff_base_s * 2**n)). A circuit breaker (the
  server's, ``flow/breaker.py``: 5 failed attempts open it; after 60 s one trial) stops hammering a dead
  server. The outage is given up after ``give_up_after_s``.
- **Resume.** ``session.create {resume: {session_id, resume_token}}``; the answer says how much audio of each source
  the server holds; the client resends only the rest, then goes on. Finals are deduplicated by ``item_id`` (the
  server replays the ones that may have been lost in flight).

State changes (connecting, live, reconnecting in N s, buffering N s) go to ``on_state``; ``status()`` reads them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from echopanel.client.live import ServerError, TranscriptView
from echopanel.flow.breaker import BreakerSettings, BreakerState, CircuitBreaker
from echopanel.protocol.frames import encode_frame

log = logging.getLogger(__name__)

BYTES_PER_SAMPLE = 2
RETRY_CLOSE_CODES = {1001, 1006, 1011, 1012, 1013}  # worth a reconnect; others (1000, 1008, 4000) end the client


class SessionLost(Exception):
    """The server no longer has the session (restarted, grace period expired) or the outage lasted too long."""


@dataclass(frozen=True)
class ConnectionStatus:
    state: str  # connecting | live | reconnecting | closing | closed | failed
    retry_in_s: float | None = None  # reconnecting: seconds until the next attempt
    buffered_ms: int = 0  # unacknowledged audio held (the largest over sources)
    dropped_ms: int = 0  # audio dropped at the buffer bound so far (all sources)
    attempt: int = 0
    message: str = ""

    def describe(self) -> str:
        parts = [self.state]
        if self.state == "reconnecting" and self.retry_in_s is not None:
            parts = [f"reconnecting in {self.retry_in_s:.1f} s"]
        if self.buffered_ms >= 100 and self.state != "live":
            parts.append(f"buffering {self.buffered_ms / 1000:.1f} s")
        if self.dropped_ms:
            parts.append(f"dropped {self.dropped_ms / 1000:.1f} s at the buffer bound")
        if self.message:
            parts.append(self.message)
        return " · ".join(parts)


@dataclass
class _Chunk:
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
        self.chunks: deque[_Chunk] = deque()
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
        chunk = _Chunk(self.end, pcm)
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
            self.chunks[0] = _Chunk(samples, c.pcm[(samples - c.offset) * BYTES_PER_SAMPLE :])
            self.buffered -= samples - c.offset

    def unsent(self, chunk_samples: int) -> list[_Chunk]:
        """What to send from ``sent`` on: silence for a dropped span, then the kept chunks."""
        out: list[_Chunk] = []
        pos = self.sent
        first_kept = self.chunks[0].offset if self.chunks else self.end
        while pos < min(first_kept, self.end):  # dropped at the bound: silence keeps the clock right
            n = min(chunk_samples, first_kept - pos)
            out.append(_Chunk(pos, b"\x00\x00" * n, fill=True))
            pos += n
        for c in self.chunks:
            if c.end <= pos:
                continue
            if c.offset < pos:
                c = _Chunk(pos, c.pcm[(pos - c.offset) * BYTES_PER_SAMPLE :])
            out.append(c)
            pos = c.end
        return out


@dataclass
class ResilienceStats:
    connects: int = 0
    resumes: int = 0
    failed_attempts: int = 0
    duplicates_dropped: int = 0
    resume_s: list[float] = field(default_factory=list)  # connection lost -> resumed session.created
    caught_up_s: list[float] = field(default_factory=list)  # connection lost -> all buffered audio resent
    resent_ms: int = 0
    outages: int = 0


GRACE_TRIAL_AT = 0.75  # with the breaker open, one resume attempt at this fraction of the server's grace period


class ResilientClient:
    def __init__(
        self,
        url: str = "ws://127.0.0.1:8765/v1/live",
        *,
        token: str | None = None,
        sources: Sequence[str] = ("mic",),
        sample_rate: int = 16000,
        session: Mapping[str, Any] | None = None,
        buffer_s: float = 30.0,
        when_full: str = "drop_oldest",
        backoff_base_s: float = 0.25,
        backoff_max_s: float = 10.0,
        breaker: BreakerSettings | None = None,
        give_up_after_s: float | None = 600.0,
        open_timeout_s: float = 10.0,
        on_state: Callable[[ConnectionStatus], None] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if when_full not in ("drop_oldest", "wait"):
            raise ValueError("when_full must be 'drop_oldest' or 'wait'")
        self.url = url
        self.token = token
        self.sources = list(sources)
        self.sample_rate = sample_rate
        self.config = {"sources": self.sources, "sample_rate": sample_rate, **(session or {})}
        self.buffer_s = buffer_s
        self.when_full = when_full
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.breaker = CircuitBreaker(breaker or BreakerSettings())
        self.give_up_after_s = give_up_after_s
        self.open_timeout_s = open_timeout_s
        self.on_state = on_state
        self.rng = rng or random.Random()
        self.clock = clock
        limit = int(buffer_s * sample_rate)
        self.buffers = {s: AudioBuffer(limit) for s in self.sources}
        self.session: dict[str, Any] = {}
        self.summary: dict[str, Any] | None = None
        self.stats = ResilienceStats()
        self.close_code: int | None = None
        self._ws: ClientConnection | None = None
        self._live = False
        self._closing = False
        self._done = False
        self._error: BaseException | None = None
        self._pumping = False
        self._ids = itertools.count(1)
        self._seen_finals: set[str] = set()
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(10_000)
        self._supervisor: asyncio.Task[None] | None = None
        self._live_event = asyncio.Event()
        self._room = asyncio.Event()
        self._status = ConnectionStatus("connecting")
        self._retry_at: float | None = None

    # -- public ----------------------------------------------------------------------------------------------------

    async def __aenter__(self) -> ResilientClient:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def open(self) -> dict[str, Any]:
        """Connect and create the session (one attempt: an unreachable server raises ``OSError`` at once)."""
        self._set_state("connecting")
        ws = await self._connect()
        try:
            event_id = self._next_id()
            await ws.send(json.dumps({"type": "session.create", "event_id": event_id, "session": self.config}))
            created = await self._await_created(ws, event_id)
        except BaseException:
            await ws.close()
            raise
        self.session = created["session"]
        self.stats.connects += 1
        self.breaker.record_success(self.clock())
        self._attach(ws)
        return self.session

    async def send_audio(self, source: str, pcm16: bytes) -> None:
        """Buffer one chunk and send it when connected. Never raises for a dropped connection."""
        self._check()
        buf = self.buffers[source]
        n = len(pcm16) // BYTES_PER_SAMPLE
        if self.when_full == "wait":
            while not buf.room(n) and not self._done:
                self._room.clear()
                await self._room.wait()
                self._check()
        buf.append(pcm16)
        if self._live:
            await self._pump()

    async def send(self, event: dict[str, Any]) -> str:
        """Send a control event now (it is not buffered: raises ``ConnectionError`` when not connected)."""
        self._check()
        event.setdefault("event_id", self._next_id())
        if not self._live or self._ws is None:
            raise ConnectionError("not connected")
        await self._pump()  # audio sent before this event goes first
        await self._ws.send(json.dumps(event))
        return str(event["event_id"])

    async def close(self, timeout_s: float = 600.0) -> dict[str, Any] | None:
        """Send every buffered chunk, then ``session.close``; wait for the summary (reconnecting if needed)."""
        self._check()
        self._closing = True
        deadline = self.clock() + timeout_s
        while not self._done:
            if self._live and self._ws is not None:
                self._set_state("closing")
                ws = self._ws
                try:
                    await self._pump()
                    if self._live and ws is self._ws:
                        await ws.send(json.dumps({"type": "session.close", "event_id": self._next_id()}))
                except ConnectionClosed:
                    pass
            # Wait for the end, or for a new connection after a drop (then send the close again).
            self._live_event.clear()
            waits = [asyncio.ensure_future(self._live_event.wait())]
            assert self._supervisor is not None
            await asyncio.wait(
                [*waits, self._supervisor], timeout=max(0.0, deadline - self.clock()), return_when="FIRST_COMPLETED"
            )
            for w in waits:
                w.cancel()
            if self._supervisor.done() or self.clock() >= deadline:
                break
        await self._finish_supervisor()
        if self._error is not None:
            raise self._error
        return self.summary

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Server events across reconnects (finals deduplicated by item_id), until the session ends."""
        while True:
            ev = await self._events.get()
            if ev is None:
                return
            yield ev

    def status(self) -> ConnectionStatus:
        s = self._status
        retry = None if self._retry_at is None else max(0.0, self._retry_at - self.clock())
        return ConnectionStatus(s.state, retry, self._buffered_ms(), self._dropped_ms(), s.attempt, s.message)

    @property
    def max_buffered_ms(self) -> int:
        return max((b.max_held * 1000 // self.sample_rate for b in self.buffers.values()), default=0)

    @property
    def live(self) -> bool:
        return self._live

    async def aclose(self) -> None:
        """Stop at once (no session.close): the server keeps the session for its grace period."""
        self._done = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        try:
            self._events.put_nowait(None)
        except asyncio.QueueFull:
            pass

    # -- connection ------------------------------------------------------------------------------------------------

    async def _connect(self) -> ClientConnection:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        block = self.config.get("overflow") == "block"
        return await connect(
            self.url,
            additional_headers=headers,
            subprotocols=["echopanel.v1"],  # type: ignore[list-item]
            max_size=None,
            open_timeout=self.open_timeout_s,
            close_timeout=2,
            ping_interval=5,
            # With overflow="block" the server stops reading while it catches up, and our ping waits behind our own
            # audio: never give up on a late pong then. Otherwise a silent peer is found within ~15 s.
            ping_timeout=None if block else 10,
        )

    async def _await_created(self, ws: ClientConnection, event_id: str) -> dict[str, Any]:
        while True:
            ev = json.loads(await asyncio.wait_for(ws.recv(), self.open_timeout_s))
            if ev.get("type") == "session.created":
                return dict(ev)
            if ev.get("type") == "error" and ev.get("event_id") == event_id:
                raise ServerError(ev)

    def _attach(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._live = True
        self._retry_at = None
        self._set_state("live")
        self._live_event.set()
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name="echopanel-client")

    async def _supervise(self) -> None:
        try:
            while True:
                assert self._ws is not None
                code = await self._receive(self._ws)
                self._live = False
                if self._done or code not in RETRY_CLOSE_CODES:
                    self.close_code = code
                    self._set_state("closed" if code == 1000 else "failed", f"connection closed ({code})")
                    return
                await self._reconnect()
        except SessionLost as exc:
            self._error = exc
            self._set_state("failed", str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("client supervisor failed")
            self._error = exc
            self._set_state("failed", f"{type(exc).__name__}: {exc}")
        finally:
            self._live = False
            self._done = True
            self._room.set()
            self._live_event.set()
            try:
                self._events.put_nowait(None)
            except asyncio.QueueFull:
                pass

    async def _receive(self, ws: ClientConnection) -> int:
        """Fold events until the connection ends; returns its close code (1006: dropped)."""
        try:
            async for raw in ws:
                ev = json.loads(raw)
                kind = ev.get("type")
                if kind == "session.metrics":
                    self._ack(ev.get("sources", {}), "received_ms")
                elif kind == "response.done":
                    iid = ev.get("item_id")
                    if iid in self._seen_finals:
                        self.stats.duplicates_dropped += 1
                        continue
                    self._seen_finals.add(iid)
                elif kind == "session.summary":
                    self.summary = ev
                await self._events.put(ev)
        except ConnectionClosed:
            pass
        return ws.close_code if ws.close_code is not None else 1006

    def _ack(self, sources: Mapping[str, Any], key: str) -> None:
        for name, value in sources.items():
            ms = value.get(key) if isinstance(value, dict) else value
            if name in self.buffers and isinstance(ms, int):
                self.buffers[name].ack(ms * self.sample_rate // 1000)
        self._room.set()

    async def _reconnect(self) -> None:
        lost_at = self.clock()
        self.stats.outages += 1
        attempt = 0
        # The server keeps a dropped session for its resume grace period (session.created limits.resume_grace_ms).
        # An open breaker waits 60 s, longer than that grace: without one trial before the grace runs out, an
        # outage of a few seconds that happened to fail 5 quick attempts would lose the session.
        grace_ms = self.session.get("limits", {}).get("resume_grace_ms")
        last_chance = None if grace_ms is None else lost_at + GRACE_TRIAL_AT * grace_ms / 1000
        while True:
            if self.give_up_after_s is not None and self.clock() - lost_at > self.give_up_after_s:
                raise SessionLost(f"no connection for {self.give_up_after_s:.0f} s; giving up")
            now = self.clock()
            allowed, _ = self.breaker.allow(now)
            if allowed:
                cap = min(self.backoff_max_s, self.backoff_base_s * 2**attempt)
                delay = self.rng.uniform(0, cap)  # full jitter
            else:
                delay = self.breaker.retry_in(now)
                if last_chance is not None and now < last_chance and last_chance - now < delay:
                    delay = last_chance - now
                    allowed = True  # one trial while the server still holds the session
                    last_chance = None
            self._retry_at = self.clock() + delay
            self._set_state("reconnecting", attempt=attempt)
            await asyncio.sleep(delay)
            if not allowed:
                continue
            self._retry_at = None
            self._set_state("connecting", attempt=attempt)
            try:
                created = await self._resume()
            except ServerError as exc:
                self.breaker.record_success(self.clock())  # the server is there; it no longer has the session
                raise SessionLost(f"the server no longer has session {self.session.get('id')}: {exc}") from exc
            except (OSError, TimeoutError, InvalidHandshake, InvalidStatus, ConnectionClosed) as exc:
                self.stats.failed_attempts += 1
                self.breaker.record_failure(self.clock())
                attempt += 1
                log.info("reconnect attempt %d failed: %s", attempt, type(exc).__name__)
                continue
            self.breaker.record_success(self.clock())
            if self.breaker.state(self.clock()) is not BreakerState.CLOSED:
                self.breaker.reset(self.clock())  # the grace trial got through while the breaker was open
            self.stats.resumes += 1
            self.stats.resume_s.append(self.clock() - lost_at)
            self._ack(created.get("received_ms", {}), "received_ms")
            for buf in self.buffers.values():
                buf.sent = buf.acked
            resend = sum(b.end - b.acked for b in self.buffers.values())
            self.stats.resent_ms += resend * 1000 // self.sample_rate
            await self._events.put({"type": "client.resumed", "received_ms": created.get("received_ms", {})})
            self._live = True
            self._retry_at = None
            self._set_state("live", "resumed")
            await self._pump()
            self.stats.caught_up_s.append(self.clock() - lost_at)
            self._live_event.set()
            return

    async def _resume(self) -> dict[str, Any]:
        ws = await self._connect()
        try:
            event_id = self._next_id()
            resume = {"session_id": self.session["id"], "resume_token": self.session["resume_token"]}
            await ws.send(json.dumps({"type": "session.create", "event_id": event_id, "resume": resume}))
            created = await self._await_created(ws, event_id)
        except BaseException:
            await ws.close()
            raise
        self._ws = ws
        return created

    async def _pump(self) -> None:
        """Send every buffered chunk not yet sent on this connection, in order (one pump at a time)."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._live and self._ws is not None:
                ws = self._ws
                pending = False
                for index, name in enumerate(self.sources):
                    buf = self.buffers[name]
                    for chunk in buf.unsent(self.sample_rate // 10):
                        await ws.send(encode_frame(index, chunk.pcm))
                        buf.sent = max(buf.sent, chunk.end)
                        if chunk.fill:
                            buf.filled += len(chunk.pcm) // BYTES_PER_SAMPLE
                    pending = pending or buf.sent < buf.end
                if not pending:
                    return
        except ConnectionClosed:
            self._live = False  # the supervisor notices and reconnects
        finally:
            self._pumping = False

    async def _finish_supervisor(self) -> None:
        if self._supervisor is not None and not self._supervisor.done():
            self._done = True
            if self._ws is not None:
                await self._ws.close()
            await asyncio.gather(self._supervisor, return_exceptions=True)

    # -- helpers -----------------------------------------------------------------------------------------------------

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _next_id(self) -> str:
        return f"evt_{next(self._ids)}"

    def _buffered_ms(self) -> int:
        return max((b.held * 1000 // self.sample_rate for b in self.buffers.values()), default=0)

    def _dropped_ms(self) -> int:
        return sum(b.dropped for b in self.buffers.values()) * 1000 // self.sample_rate

    @property
    def lost_ms(self) -> int:
        """Audio the server never got (dropped at the buffer bound during an outage, sent as silence instead)."""
        return sum(b.filled for b in self.buffers.values()) * 1000 // self.sample_rate

    def _set_state(self, state: str, message: str = "", attempt: int = 0) -> None:
        self._status = ConnectionStatus(state, None, 0, 0, attempt, message)
        if self.on_state is not None:
            try:
                self.on_state(self.status())
            except Exception:
                log.exception("on_state callback failed")


async def transcribe_resilient(
    client: ResilientClient,
    audio: Mapping[str, bytes],
    *,
    realtime: bool = True,
    speed: float = 1.0,
    chunk_ms: int = 40,
    on_event: Callable[[dict[str, Any], TranscriptView], None] | None = None,
    on_chunk: Callable[[str, int, float], None] | None = None,
) -> TranscriptView:
    """Send every source's audio (at ``speed`` x real time, or as fast as accepted), close, fold all events."""
    view = TranscriptView()

    async def receive() -> None:
        async for ev in client.events():
            view.apply(ev, time.monotonic())
            if on_event is not None:
                on_event(ev, view)

    async def send(source: str, pcm: bytes) -> None:
        step = client.sample_rate * chunk_ms // 1000 * BYTES_PER_SAMPLE
        t0 = time.monotonic()
        for offset in range(0, len(pcm), step):
            if realtime:
                due = t0 + offset / BYTES_PER_SAMPLE / client.sample_rate / speed
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await client.send_audio(source, pcm[offset : offset + step])
            if on_chunk is not None:
                on_chunk(source, offset // BYTES_PER_SAMPLE, time.monotonic())

    receiver = asyncio.create_task(receive())
    try:
        await asyncio.gather(*(send(source, pcm) for source, pcm in audio.items()))
        await client.close()
        await receiver
    finally:
        if not receiver.done():
            receiver.cancel()
    return view
