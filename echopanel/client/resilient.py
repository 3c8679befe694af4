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

Where each part lives: this module holds the client's state and its public calls (open, start, send_audio, send,
close, events, aclose); the per-source buffer is ``echopanel.client.buffer`` (``AudioBuffer``); the sending side
(the one writer of buffered audio, the catch-up pace, the backpressure pause) is ``echopanel.client.sender``
(``Sender``, ``CatchUp``), one per client; the connection supervisor (connect and reconnect loop, create or resume
handshake, the receive loop, ``ConnectionStatus``, ``SessionLost``, ``FatalConnectionError``) is
``echopanel.client.supervisor`` (``SupervisedClient``, this client's base); ``transcribe_resilient`` is in
``echopanel.client.stream``, next to ``transcribe``. The buffer, sender and supervisor names are importable from
here as well.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from websockets.exceptions import ConnectionClosed

from echopanel.client.buffer import BYTES_PER_SAMPLE as BYTES_PER_SAMPLE
from echopanel.client.buffer import AudioBuffer
from echopanel.client.reconnect import BACKOFF_BASE_S, BACKOFF_MAX_S, ReconnectPolicy
from echopanel.client.sender import PACE_TICK_S as PACE_TICK_S
from echopanel.client.sender import CatchUp, Sender
from echopanel.client.supervisor import CLOSE_RESUMED_ELSEWHERE as CLOSE_RESUMED_ELSEWHERE
from echopanel.client.supervisor import CLOSE_UNAUTHORIZED as CLOSE_UNAUTHORIZED
from echopanel.client.supervisor import RETRY_CLOSE_CODES as RETRY_CLOSE_CODES
from echopanel.client.supervisor import RETRY_ERROR_CODES as RETRY_ERROR_CODES
from echopanel.client.supervisor import ConnectionStatus, ResilienceStats, SessionLost, SupervisedClient
from echopanel.client.supervisor import FatalConnectionError as FatalConnectionError
from echopanel.client.supervisor import fatal_close as fatal_close
from echopanel.flow.breaker import BreakerSettings, CircuitBreaker


class ResilientClient(SupervisedClient):
    """A ``LiveClient`` that buffers, reconnects and resumes (this module's docstring tells how)."""

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
        self.summary: dict[str, Any] | None = None
        self.stats = ResilienceStats()
        # The one writer of audio (its task: ``_sender_task``); it holds the current connection's ``live`` and ``gen``.
        self.sender = Sender(self.sources, self.buffers, self.sample_rate, catchup, clock, self.stats.caught_up_s)
        self.backpressure = self.sender.backpressure  # as the server last reported it (the sender pauses on it)
        self._close_code: int | None = None
        self._error: BaseException | None = None
        self._done = False
        self._seen_finals: set[str] = set()
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(10_000)
        self._supervisor: asyncio.Task[None] | None = None
        self._sender_task: asyncio.Task[None] | None = None
        self._live_event = asyncio.Event()  # set by each new connection
        self._room = asyncio.Event()  # set by acknowledgements (room in the buffers)
        self._status = ConnectionStatus("connecting")
        self._retry_at: float | None = None

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
        self.sender.wake.set()
        await asyncio.sleep(0)  # let the sender write it now

    async def send(self, event: dict[str, Any]) -> str:
        """Send a control event after the audio given so far (not buffered: raises ``ConnectionError`` when not
        connected)."""
        self._check()
        event.setdefault("event_id", self.next_id())
        if not self.sender.live or self.ws is None:
            raise ConnectionError("not connected")
        ws = self.ws
        if not await self.sender.drain(self.sender.gen):  # audio given before this event goes first
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
            gen = self.sender.gen
            if self.sender.live and self.ws is not None:
                ws = self.ws
                self._set_state("closing")
                if await self.sender.drain(gen, deadline):
                    try:
                        await ws.send(json.dumps({"type": "session.close", "event_id": self.next_id()}))
                    except ConnectionClosed:
                        pass
            # Wait for the end, or for a new connection after a drop (then send the close again).
            while not self._done and self.sender.gen == gen and self.clock() < deadline:
                self._live_event.clear()
                if self.sender.gen != gen:
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
        return self.sender.live

    @property
    def lost_ms(self) -> int:
        """Audio the server never got (dropped at the buffer bound during an outage, sent as silence instead)."""
        return sum(b.filled for b in self.buffers.values()) * 1000 // self.sample_rate

    async def aclose(self) -> None:
        """Stop at once (no session.close): the server keeps the session for its grace period."""
        self._done = True
        self.sender.stop()
        for task in (self._supervisor, self._sender_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.ws is not None:
            await self.ws.close()
        self._end_events()

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def _start_tasks(self, *, connected: bool) -> None:
        self._supervisor = asyncio.create_task(self._supervise(connected), name="echopanel-client")
        self._sender_task = asyncio.create_task(self.sender.run(), name="echopanel-client-sender")

    async def _finish(self) -> None:
        """End the client after ``close``: the supervisor and the sender stop."""
        self._done = True
        self.sender.stop()
        supervisor = self._supervisor
        if supervisor is not None and not supervisor.done():
            if self.sender.live and self.ws is not None:
                await self.ws.close()
                await asyncio.wait([supervisor], timeout=(self.CLOSE_TIMEOUT_S or 0.0) + 1.0)
            if not supervisor.done():
                supervisor.cancel()  # still connecting: nothing to wait for
            await asyncio.gather(supervisor, return_exceptions=True)
        if self._sender_task is not None and not self._sender_task.done():
            self._sender_task.cancel()
            await asyncio.gather(self._sender_task, return_exceptions=True)
        self._end_events()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
