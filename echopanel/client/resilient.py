"""A client that survives dropped connections: buffers unacknowledged audio, reconnects, resumes the same session.

``ResilientClient`` is a ``LiveClient`` (same constructor, same ``open``/``send_audio``/``events``/``close_session``)
that adds (docs/protocol.md, "Resume" and "Reconnect policy"):

- **Buffer.** Every audio chunk is kept per source until the server acknowledges it (``received_ms`` in each
  ``session.metrics``, about once a second, and in a resumed ``session.created``). The buffer is bounded in seconds
  (``buffer_s``, default 30). At the bound the *oldest* audio is dropped (``when_full="drop_oldest"``, for live
  capture, which cannot wait) and counted in ``dropped_ms``; on resume the dropped span is sent as silence of the
  same length, so times stay aligned and the loss is visible. ``when_full="wait"`` (files) makes ``send_audio``
  wait for room instead. One sender task writes the buffered audio to the socket, so ``send_audio`` never waits
  for the network (only, with ``wait``, for room in the buffer).
- **Reconnect.** A connection that ends without the session ending is retried by the reconnect policy
  (``echopanel.client.reconnect``): full-jitter backoff, a circuit breaker (the server's, ``flow/breaker.py``),
  and one attempt at 75 % of the server's resume grace while the breaker is open. The outage is given up after
  ``give_up_after_s`` (None: never). ``start()`` makes even the first connection this way (live capture starts
  before the server answers); ``open()`` makes one attempt.
- **Resume.** ``session.create {resume: {session_id, resume_token}}``; the answer says how much audio of each source
  the server holds; the client resends only the rest, then goes on. Finals are deduplicated by ``item_id`` (the
  server replays the ones that may have been lost in flight).
- **A lost session** (``session_not_found`` on resume: the server restarted, or the grace passed) ends the client
  with ``SessionLost`` (``on_session_lost="fail"``), or with ``"new_session"`` it goes on in a new session on the
  same connection with the audio the old one never acknowledged, counted from 0 again.
- **Catch-up** (``catchup=CatchUp()``): a backlog above 1 s is resent at 4x real time, in frames of at most
  250 ms, and paused while the server reports backpressure for that source (``input_audio_buffer.backpressure``
  or ``session.metrics`` ``sources.*.backpressure`` not ``normal``), so the catch-up does not itself overflow the
  server's queue. Without it the backlog goes as fast as the socket takes it.
- **Fatal stops**: a refused token (close 1008 "unauthorized") and a session resumed by another connection
  (close 4000) raise ``FatalConnectionError``; a refused configuration raises ``ServerError``. Neither is retried.

The client tells what happens through ``on_state`` (``ConnectionStatus``: connecting, live, reconnecting in N s,
buffering N s, closing; ``status()`` reads it at any time) and through events of its own in ``events()``:
``client.session_started {session, previous_session_id}`` (the first session, and a new one after a lost
session) and ``client.resumed {session_id, received_ms, resend_ms}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from echopanel.client.live import LiveClient, ServerError, TranscriptView
from echopanel.client.reconnect import BACKOFF_BASE_S, BACKOFF_MAX_S, ReconnectPolicy
from echopanel.flow.breaker import BreakerSettings, CircuitBreaker
from echopanel.protocol.frames import encode_frame

log = logging.getLogger(__name__)

BYTES_PER_SAMPLE = 2
# Worth a reconnect: the closes after which the server keeps the session for a resume (docs/protocol.md, "Resume"),
# and 1013 (full). Others (1000, 1008, 1009, 4000, ...) end the client.
RETRY_CLOSE_CODES = {1001, 1005, 1006, 1011, 1012, 1013, 1014}
RETRY_ERROR_CODES = {"server_full"}  # an error answering session.create that a later attempt may not get
CLOSE_UNAUTHORIZED = (1008, "unauthorized")
CLOSE_RESUMED_ELSEWHERE = 4000
PACE_TICK_S = 0.05  # while a paced catch-up holds audio back, the sender looks again this often


class SessionLost(Exception):
    """The server no longer has the session (restarted, grace period expired) or the outage lasted too long."""


class FatalConnectionError(Exception):
    """Retrying cannot help: the server refused the token, or another connection resumed the session."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def fatal_close(code: int | None, reason: str | None) -> FatalConnectionError | None:
    """The error a connection closed with ``code``/``reason`` means, if it is one a retry cannot fix."""
    if (code, reason) == CLOSE_UNAUTHORIZED:
        return FatalConnectionError("the server refused the token (close 1008 unauthorized)", code)
    if code == CLOSE_RESUMED_ELSEWHERE:
        return FatalConnectionError("the session was resumed by another connection (close 4000)", code)
    return None


@dataclass(frozen=True)
class CatchUp:
    """How a backlog is resent after a reconnect (live capture): paced, and paused under server backpressure."""

    speed: float = 4.0  # in multiples of real time
    threshold_ms: int = 1000  # a backlog above this is paced; below it goes at once
    max_frame_ms: int = 250  # audio per frame while catching up
    min_frame_ms: int = 20  # less credit than this: wait for more


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

    def unsent(self, chunk_samples: int, limit: int | None = None, *, split: bool = False) -> list[_Chunk]:
        """What to send from ``sent`` on (at most ``limit`` samples): silence for a dropped span in pieces of
        ``chunk_samples``, then the kept chunks (cut at the limit; with ``split`` also in pieces of at most
        ``chunk_samples``)."""
        out: list[_Chunk] = []
        pos = self.sent
        stop = self.end if limit is None else min(self.end, pos + limit)
        first_kept = self.chunks[0].offset if self.chunks else self.end
        while pos < min(first_kept, stop):  # dropped at the bound: silence keeps the clock right
            n = min(chunk_samples, min(first_kept, stop) - pos)
            out.append(_Chunk(pos, b"\x00\x00" * n, fill=True))
            pos += n
        for c in self.chunks:
            if pos >= stop:
                break
            if c.end <= pos:
                continue
            if c.offset < pos:
                c = _Chunk(pos, c.pcm[(pos - c.offset) * BYTES_PER_SAMPLE :])
            if c.end > stop:
                c = _Chunk(c.offset, c.pcm[: (stop - c.offset) * BYTES_PER_SAMPLE])
            step = chunk_samples * BYTES_PER_SAMPLE
            if split and len(c.pcm) > step:
                pieces = range(0, len(c.pcm), step)
                out.extend(_Chunk(c.offset + i // BYTES_PER_SAMPLE, c.pcm[i : i + step]) for i in pieces)
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
            self.chunks[0] = _Chunk(keep_from, c.pcm[(keep_from - c.offset) * BYTES_PER_SAMPLE :])
            self.buffered -= keep_from - c.offset
        self.chunks = deque(_Chunk(c.offset - keep_from, c.pcm, c.fill) for c in self.chunks)
        self.end -= keep_from
        self.acked = self.sent = 0
        return self.end


@dataclass
class ResilienceStats:
    connects: int = 0
    resumes: int = 0
    new_sessions: int = 0  # sessions started because the server no longer had the previous one
    failed_attempts: int = 0
    duplicates_dropped: int = 0
    resume_s: list[float] = field(default_factory=list)  # connection lost -> resumed session.created
    caught_up_s: list[float] = field(default_factory=list)  # connection lost -> all buffered audio resent
    resent_ms: int = 0
    outages: int = 0


class _Stopped(Exception):
    """The client was stopped (``aclose``, or ``close`` ran out of time) while it was connecting."""


class ResilientClient(LiveClient):
    PING_INTERVAL_S = 5.0
    PING_TIMEOUT_S = 10.0  # a silent peer is found within ~15 s (never with overflow="block": see LiveClient)
    CLOSE_TIMEOUT_S = 2.0

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
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        breaker: BreakerSettings | None = None,
        give_up_after_s: float | None = 600.0,
        open_timeout_s: float = 10.0,
        catchup: CatchUp | None = None,
        on_session_lost: str = "fail",
        on_state: Callable[[ConnectionStatus], None] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if when_full not in ("drop_oldest", "wait"):
            raise ValueError("when_full must be 'drop_oldest' or 'wait'")
        if on_session_lost not in ("fail", "new_session"):
            raise ValueError("on_session_lost must be 'fail' or 'new_session'")
        super().__init__(
            url, token=token, sources=sources, sample_rate=sample_rate, session=session, open_timeout_s=open_timeout_s
        )
        self.buffer_s = buffer_s
        self.when_full = when_full
        self.policy = ReconnectPolicy(
            backoff_base_s=backoff_base_s, backoff_max_s=backoff_max_s, breaker=breaker, rng=rng
        )
        self.give_up_after_s = give_up_after_s
        self.catchup = catchup
        self.on_session_lost = on_session_lost
        self.on_state = on_state
        self.clock = clock
        limit = int(buffer_s * sample_rate)
        self.buffers = {s: AudioBuffer(limit) for s in self.sources}
        self.backpressure = {s: "normal" for s in self.sources}  # as the server last reported it
        self.summary: dict[str, Any] | None = None
        self.stats = ResilienceStats()
        self._close_code: int | None = None
        self._error: BaseException | None = None
        self._gen = 0  # which connection: bumped by each attach, so a sender on an old one stops
        self._live = False
        self._done = False
        self._seen_finals: set[str] = set()
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(10_000)
        self._supervisor: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._live_event = asyncio.Event()  # set by each new connection
        self._room = asyncio.Event()  # set by acknowledgements (room in the buffers)
        self._wake = asyncio.Event()  # the sender has something to look at
        self._progress = asyncio.Event()  # the sender finished a pass
        self._status = ConnectionStatus("connecting")
        self._retry_at: float | None = None
        self._credit = dict.fromkeys(self.sources, 0.0)  # catch-up: samples that may go now, per source
        self._credit_at = dict.fromkeys(self.sources, 0.0)
        self._catching_up_since: float | None = None

    # -- public ----------------------------------------------------------------------------------------------------

    async def __aenter__(self) -> ResilientClient:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def breaker(self) -> CircuitBreaker:
        """The client's circuit breaker around connection attempts."""
        return self.policy.breaker

    async def open(self, *, retry: bool = False) -> dict[str, Any]:
        """Connect and create the session. One attempt (an unreachable server raises ``OSError`` at once), or with
        ``retry`` as many as the reconnect policy allows (``start()``, then wait until the session exists)."""
        if retry:
            self.start()
            assert self._supervisor is not None
            while not self.session and not self._supervisor.done():
                self._live_event.clear()
                waiter = asyncio.ensure_future(self._live_event.wait())
                await asyncio.wait([waiter, self._supervisor], return_when="FIRST_COMPLETED")
                waiter.cancel()
            self._check()
            if not self.session:
                raise SessionLost("the client stopped before a session was created")
            return self.session
        if self._supervisor is not None:
            raise RuntimeError("already open")
        self._set_state("connecting")
        ws = await self._dial()
        try:
            created, kind = await self._handshake(ws)
        except BaseException:
            await ws.close()
            raise
        self.policy.succeeded(self.clock())
        await self._attach(ws, created, kind)
        self._start_tasks(connected=True)
        return self.session

    def start(self) -> None:
        """Connect in the background, retried by the reconnect policy until a session exists (then as after any
        drop). Audio given to ``send_audio`` meanwhile is buffered and sent once connected."""
        if self._supervisor is None:
            self._start_tasks(connected=False)

    async def send_audio(self, source: str, pcm16: bytes) -> None:
        """Buffer one chunk; the sender writes it when connected. Never raises for a dropped connection."""
        self._check()
        buf = self.buffers[source]
        n = len(pcm16) // BYTES_PER_SAMPLE
        if self.when_full == "wait":
            while not buf.room(n) and not self._done:
                self._room.clear()
                await self._room.wait()
                self._check()
        buf.append(pcm16)
        self._wake.set()
        await asyncio.sleep(0)  # let the sender write it now

    async def send(self, event: dict[str, Any]) -> str:
        """Send a control event after the audio given so far (not buffered: raises ``ConnectionError`` when not
        connected)."""
        self._check()
        event.setdefault("event_id", self.next_id())
        if not self._live or self.ws is None:
            raise ConnectionError("not connected")
        ws = self.ws
        if not await self._drain(self._gen):  # audio given before this event goes first
            raise ConnectionError("the connection dropped")
        await ws.send(json.dumps(event))
        return str(event["event_id"])

    async def close_session(self) -> str:
        """Send ``session.close`` after the buffered audio, without waiting for the summary (``close`` does)."""
        return await self.send({"type": "session.close"})

    async def close(self, timeout_s: float = 600.0) -> dict[str, Any] | None:
        """Send every buffered chunk, then ``session.close``; wait for the summary (reconnecting if needed)."""
        self._check()
        if self._supervisor is None:
            raise ConnectionError("not open: open() or start() first")
        deadline = self.clock() + timeout_s
        supervisor = self._supervisor
        while not self._done and self.clock() < deadline:
            gen = self._gen
            if self._live and self.ws is not None:
                ws = self.ws
                self._set_state("closing")
                if await self._drain(gen, deadline):
                    try:
                        await ws.send(json.dumps({"type": "session.close", "event_id": self.next_id()}))
                    except ConnectionClosed:
                        pass
            # Wait for the end, or for a new connection after a drop (then send the close again).
            while not self._done and self._gen == gen and self.clock() < deadline:
                self._live_event.clear()
                if self._gen != gen:
                    break
                waiter = asyncio.ensure_future(self._live_event.wait())
                await asyncio.wait(
                    [waiter, supervisor], timeout=max(0.0, deadline - self.clock()), return_when="FIRST_COMPLETED"
                )
                waiter.cancel()
        await self._finish()
        if self._error is not None:
            raise self._error
        return self.summary

    async def recv(self) -> dict[str, Any]:
        """The next event (as ``events()``); raises ``ConnectionClosed`` once the client has ended."""
        ev = await self._events.get()
        if ev is None:
            self._events.put_nowait(None)
            raise ConnectionClosed(None, None)
        return ev

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Server events across reconnects (finals deduplicated by item_id), and the client's own
        (``client.session_started``, ``client.resumed``), until the client ends."""
        while True:
            try:
                yield await self.recv()
            except ConnectionClosed:
                return

    async def disconnect(self) -> None:
        await self.aclose()

    def status(self) -> ConnectionStatus:
        s = self._status
        retry = None if self._retry_at is None else max(0.0, self._retry_at - self.clock())
        return ConnectionStatus(s.state, retry, self._buffered_ms(), self._dropped_ms(), s.attempt, s.message)

    @property
    def close_code(self) -> int | None:
        """How the last connection ended, once the client has ended."""
        return self._close_code

    @property
    def error(self) -> BaseException | None:
        """Why the client stopped (``SessionLost``, ``FatalConnectionError``, ``ServerError``), if it failed."""
        return self._error

    @property
    def done(self) -> bool:
        return self._done

    @property
    def max_buffered_ms(self) -> int:
        return max((b.max_held * 1000 // self.sample_rate for b in self.buffers.values()), default=0)

    @property
    def live(self) -> bool:
        return self._live

    @property
    def lost_ms(self) -> int:
        """Audio the server never got (dropped at the buffer bound during an outage, sent as silence instead)."""
        return sum(b.filled for b in self.buffers.values()) * 1000 // self.sample_rate

    async def aclose(self) -> None:
        """Stop at once (no session.close): the server keeps the session for its grace period."""
        self._done = True
        self._wake.set()
        for task in (self._supervisor, self._sender):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.ws is not None:
            await self.ws.close()
        self._end_events()

    # -- connection ------------------------------------------------------------------------------------------------

    def _start_tasks(self, *, connected: bool) -> None:
        self._supervisor = asyncio.create_task(self._supervise(connected), name="echopanel-client")
        self._sender = asyncio.create_task(self._send_loop(), name="echopanel-client-sender")

    async def _handshake(self, ws: ClientConnection) -> tuple[dict[str, Any], str]:
        """Create the session, or resume it: ``(session.created, "created" | "resumed" | "replaced")``."""
        create = {"type": "session.create", "session": self.config}
        try:
            if not self.session:
                return await self._request_session(ws, create, self.open_timeout_s), "created"
            resume = {"session_id": self.session["id"], "resume_token": self.session.get("resume_token")}
            try:
                event = {"type": "session.create", "resume": resume}
                return await self._request_session(ws, event, self.open_timeout_s), "resumed"
            except ServerError as exc:
                if exc.code in RETRY_ERROR_CODES:
                    raise
                self.policy.succeeded(self.clock())  # the server is there; it no longer has the session
                if exc.code != "session_not_found" or self.on_session_lost != "new_session":
                    raise SessionLost(f"the server no longer has session {self.session.get('id')}: {exc}") from exc
                return await self._request_session(ws, create, self.open_timeout_s), "replaced"
        except ConnectionClosed as exc:
            fatal = fatal_close(ws.close_code, ws.close_reason)
            if fatal is not None:
                self._close_code = ws.close_code
                raise fatal from exc
            raise

    async def _attach(
        self, ws: ClientConnection, created: dict[str, Any], kind: str, lost_at: float | None = None
    ) -> None:
        self.ws = ws
        self._gen += 1
        now = self.clock()
        rate = self.sample_rate
        if kind == "resumed":
            self.stats.resumes += 1
            if lost_at is not None:
                self.stats.resume_s.append(now - lost_at)
            received = created.get("received_ms") or {}
            self._ack(received, "received_ms")
            for buf in self.buffers.values():
                buf.sent = buf.acked
            resend = sum(b.end - b.acked for b in self.buffers.values()) * 1000 // rate
            self.stats.resent_ms += resend
            self._catching_up_since = lost_at
            note: dict[str, Any] = {
                "type": "client.resumed",
                "session_id": self.session.get("id"),
                "received_ms": received,
                "resend_ms": resend,
            }
            message = "resumed"
        else:
            previous = self.session.get("id") if kind == "replaced" else None
            if kind == "replaced":
                for buf in self.buffers.values():
                    buf.rebase()
                self._seen_finals.clear()  # item ids start again in the new session
                self.stats.new_sessions += 1
            self.session = dict(created["session"])
            self.stats.connects += 1
            note = {
                "type": "client.session_started",
                "session": self.session,
                "previous_session_id": previous,
                "carried_ms": {name: b.end * 1000 // rate for name, b in self.buffers.items()},
            }
            message = "" if previous is None else f"new session: the server no longer had {previous}"
        for name in self.sources:
            self._credit[name], self._credit_at[name] = 0.0, now
        await self._events.put(note)
        self._live = True
        self._retry_at = None
        self._set_state("live", message)
        self._live_event.set()
        self._wake.set()

    async def _supervise(self, connected: bool) -> None:
        try:
            if not connected:
                await self._connect_loop(first=True, reason="")
            while True:
                ws = self.ws
                assert ws is not None
                code = await self._receive(ws)
                self._live = False
                self._wake.set()
                if self._done or code not in RETRY_CLOSE_CODES:
                    self._close_code = code
                    fatal = None if self._done else fatal_close(code, ws.close_reason)
                    if fatal is not None:
                        raise fatal
                    self._set_state("closed" if code == 1000 else "failed", f"connection closed ({code})")
                    return
                await self._connect_loop(first=False, reason=f"connection lost (close {code})")
        except _Stopped:
            self._set_state("closed", "stopped")
        except (SessionLost, FatalConnectionError, ServerError) as exc:
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
            for ev in (self._room, self._live_event, self._wake, self._progress):
                ev.set()
            self._end_events()

    async def _connect_loop(self, *, first: bool, reason: str) -> None:
        """Attempt connections as the reconnect policy says until one has a session (created or resumed)."""
        lost_at = self.clock()
        if not first:
            self.stats.outages += 1
        grace_ms = (self.session.get("limits") or {}).get("resume_grace_ms") if self.session else None
        self.policy.outage(lost_at, grace_ms)
        immediate = first  # the very first connection is tried at once
        while True:
            if self._done:
                raise _Stopped()
            if self.give_up_after_s is not None and self.clock() - lost_at > self.give_up_after_s:
                raise SessionLost(f"no connection for {self.give_up_after_s:.0f} s; giving up")
            step = self.policy.next(self.clock())
            if not (immediate and step.attempt):
                self._retry_at = self.clock() + step.delay_s
                self._set_state("reconnecting", reason, attempt=self.policy.failures)
                await asyncio.sleep(step.delay_s)
            immediate = False
            if not step.attempt:
                continue
            self._retry_at = None
            self._set_state("connecting", attempt=self.policy.failures)
            try:
                ws = await self._dial()
                try:
                    created, kind = await self._handshake(ws)
                except BaseException:
                    await ws.close()
                    raise
            except ServerError as exc:
                if exc.code not in RETRY_ERROR_CODES:
                    raise  # a refused configuration: retrying cannot help
                reason = f"the server refused the session for now ({exc})"
            except InvalidStatus as exc:
                status = exc.response.status_code
                reason = f"server refused the connection (HTTP {status}{', full' if status == 503 else ''})"
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else 1006
                reason = f"connection lost (close {code})"
            except (OSError, TimeoutError, asyncio.TimeoutError, InvalidHandshake) as exc:
                reason = f"server unreachable ({exc or type(exc).__name__})"
            else:
                self.policy.succeeded(self.clock())
                await self._attach(ws, created, kind, None if first else lost_at)
                return
            self.stats.failed_attempts += 1
            self.policy.failed(self.clock())
            log.info("connection attempt %d failed: %s", self.policy.failures, reason)

    async def _receive(self, ws: ClientConnection) -> int:
        """Fold events until the connection ends; returns its close code (1006: dropped)."""
        try:
            async for raw in ws:
                if isinstance(raw, bytes):
                    continue
                ev = json.loads(raw)
                kind = ev.get("type")
                if kind == "session.metrics":
                    sources = ev.get("sources") or {}
                    self._ack(sources, "received_ms")
                    for name, m in sources.items():
                        if isinstance(m, dict):
                            self._set_backpressure(name, m.get("backpressure"))
                elif kind == "input_audio_buffer.backpressure":
                    self._set_backpressure(ev.get("source"), ev.get("level"))
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
            if name in self.buffers and isinstance(ms, int | float) and not isinstance(ms, bool):
                self.buffers[name].ack(int(ms) * self.sample_rate // 1000)
        self._room.set()

    def _set_backpressure(self, source: Any, value: Any) -> None:
        level = value.get("level") if isinstance(value, dict) else value
        if source in self.backpressure and isinstance(level, str):
            self.backpressure[source] = level
            if level == "normal":
                self._wake.set()

    # -- sending -----------------------------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        """The one writer of audio: whatever is buffered and not yet sent on this connection, when allowed."""
        while not self._done:
            self._wake.clear()
            held_back = False
            if self._live and self.ws is not None:
                held_back = await self._pump()
            self._progress.set()
            if held_back:  # a paced catch-up: more credit comes with time
                try:
                    await asyncio.wait_for(self._wake.wait(), PACE_TICK_S)
                except asyncio.TimeoutError:
                    pass
            else:
                await self._wake.wait()

    async def _pump(self) -> bool:
        """Send what may go now, in order; True when audio is pending that the catch-up pace holds back."""
        ws, gen = self.ws, self._gen
        assert ws is not None
        try:
            while self._live and gen == self._gen:
                progressed = False
                for index, name in enumerate(self.sources):
                    buf = self.buffers[name]
                    for chunk in self._sendable(name, buf):
                        await ws.send(encode_frame(index, chunk.pcm))
                        if gen != self._gen:
                            return False
                        buf.sent = max(buf.sent, chunk.end)
                        if chunk.fill:
                            buf.filled += len(chunk.pcm) // BYTES_PER_SAMPLE
                        progressed = True
                if not self._pending():
                    if self._catching_up_since is not None:
                        self.stats.caught_up_s.append(self.clock() - self._catching_up_since)
                        self._catching_up_since = None
                    return False
                if not progressed:
                    return True
        except ConnectionClosed:
            if gen == self._gen:
                self._live = False  # the supervisor notices and reconnects
        return False

    def _sendable(self, name: str, buf: AudioBuffer) -> list[_Chunk]:
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

    async def _drain(self, gen: int, deadline: float | None = None) -> bool:
        """Wait until the audio given so far is sent on connection ``gen``; False if it dropped (or the deadline)."""
        targets = {name: b.end for name, b in self.buffers.items()}
        while True:
            if not self._live or gen != self._gen or self._done:
                return False
            if all(self.buffers[name].sent >= end for name, end in targets.items()):
                return True
            if deadline is not None and self.clock() >= deadline:
                return False
            self._progress.clear()
            self._wake.set()
            try:
                await asyncio.wait_for(self._progress.wait(), 2 * PACE_TICK_S)
            except asyncio.TimeoutError:
                pass

    async def _finish(self) -> None:
        """End the client after ``close``: the supervisor and the sender stop."""
        self._done = True
        self._wake.set()
        supervisor = self._supervisor
        if supervisor is not None and not supervisor.done():
            if self._live and self.ws is not None:
                await self.ws.close()
                await asyncio.wait([supervisor], timeout=(self.CLOSE_TIMEOUT_S or 0.0) + 1.0)
            if not supervisor.done():
                supervisor.cancel()  # still connecting: nothing to wait for
            await asyncio.gather(supervisor, return_exceptions=True)
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        self._end_events()

    # -- helpers -----------------------------------------------------------------------------------------------------

    def _end_events(self) -> None:
        try:
            self._events.put_nowait(None)
        except asyncio.QueueFull:
            pass

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _buffered_ms(self) -> int:
        return max((b.held * 1000 // self.sample_rate for b in self.buffers.values()), default=0)

    def _dropped_ms(self) -> int:
        return sum(b.dropped for b in self.buffers.values()) * 1000 // self.sample_rate

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
