"""The resilient client's connection supervisor: keeps one connection with a session, across drops.

``SupervisedClient`` is the connection half of ``ResilientClient`` (``echopanel.client.resilient``, its subclass,
which holds the state and the public calls). It runs as one task per client (``_supervise``):

- **Connect** (``_connect_loop``): attempts as the reconnect policy says (``echopanel.client.reconnect``: full-jitter
  backoff, a circuit breaker, one attempt at 75 % of the server's resume grace while the breaker is open) until one
  has a session; a refused connection (HTTP), an unreachable server, a connection closed before
  ``session.created`` (but for the fatal closes below) and ``server_full`` are failed attempts. The outage is given
  up after ``give_up_after_s`` (``SessionLost``).
- **Handshake** (``_handshake``): ``session.create``, or ``session.create {resume}`` once there is a session; a
  ``session_not_found`` answer is ``SessionLost``, or with ``on_session_lost="new_session"`` a new session on the
  same connection.
- **Attach** (``_attach``): the connection goes to the sender (``echopanel.client.sender``); a resumed session's
  ``received_ms`` acknowledges the buffers and the rest is resent; a new session after a lost one rebases the
  buffers. It tells ``client.resumed`` or ``client.session_started`` in ``events()``.
- **Receive** (``_receive``): folds the server's events until the connection ends: acknowledgements trim the
  buffers, backpressure goes to the sender, finals already seen (by ``item_id``) are dropped, the rest goes to
  ``events()``.
- **End**: a close the server keeps the session after (``RETRY_CLOSE_CODES``) is retried; close 1008
  "unauthorized" and 4000 raise ``FatalConnectionError``; any other close ends the client. The state goes to
  ``on_state`` as a ``ConnectionStatus`` at each step (docs/protocol.md, "Resume" and "Reconnect policy").
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from echopanel.client.buffer import AudioBuffer
from echopanel.client.live import LiveClient, ServerError
from echopanel.client.reconnect import ReconnectPolicy
from echopanel.client.sender import Sender

log = logging.getLogger("echopanel.client.resilient")  # one logger for the whole resilient client

# Worth a reconnect: the closes after which the server keeps the session for a resume (docs/protocol.md, "Resume"),
# and 1013 (full). Others (1000, 1008, 1009, 4000, ...) end the client.
RETRY_CLOSE_CODES = {1001, 1005, 1006, 1011, 1012, 1013, 1014}
RETRY_ERROR_CODES = {"server_full", "session_busy"}  # answers to session.create a later attempt may not get
CLOSE_UNAUTHORIZED = (1008, "unauthorized")
CLOSE_RESUMED_ELSEWHERE = 4000


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


class SupervisedClient(LiveClient):
    """The connection side of ``ResilientClient``; the state below is set up by ``ResilientClient.__init__``."""

    buffers: dict[str, AudioBuffer]
    sender: Sender
    policy: ReconnectPolicy
    stats: ResilienceStats
    clock: Callable[[], float]
    give_up_after_s: float | None
    on_session_lost: str
    on_state: Callable[[ConnectionStatus], None] | None
    summary: dict[str, Any] | None
    _close_code: int | None
    _error: BaseException | None
    _done: bool
    _seen_finals: set[str]
    _events: asyncio.Queue[dict[str, Any] | None]
    _live_event: asyncio.Event  # set by each new connection
    _room: asyncio.Event  # set by acknowledgements (room in the buffers)
    _status: ConnectionStatus
    _retry_at: float | None

    def status(self) -> ConnectionStatus:
        s = self._status
        retry = None if self._retry_at is None else max(0.0, self._retry_at - self.clock())
        return ConnectionStatus(s.state, retry, self._buffered_ms(), self._dropped_ms(), s.attempt, s.message)

    # -- connection ------------------------------------------------------------------------------------------------

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
        self.sender.attach(ws)
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
            self.sender.catching_up_since = lost_at
            note: dict[str, Any] = {
                "type": "client.resumed",
                "session_id": self.session.get("id"),
                "received_ms": received,
                "resend_ms": resend,
                "partials_reset": bool(created.get("partials_reset")),  # on another node: open items come again
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
        self.sender.restart_pace(now)
        await self._events.put(note)
        self.sender.live = True
        self._retry_at = None
        self._set_state("live", message)
        self._live_event.set()
        self.sender.wake.set()

    async def _supervise(self, connected: bool) -> None:
        try:
            if not connected:
                await self._connect_loop(first=True, reason="")
            while True:
                ws = self.ws
                assert ws is not None
                code = await self._receive(ws)
                self.sender.live = False
                self.sender.wake.set()
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
            self.sender.live = False
            self._done = True
            self._room.set()
            self._live_event.set()
            self.sender.stop()  # sets its wake
            self.sender.progress.set()
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
            except (OSError, TimeoutError, InvalidHandshake) as exc:
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
                            self.sender.set_backpressure(name, m.get("backpressure"))
                elif kind == "input_audio_buffer.backpressure":
                    self.sender.set_backpressure(ev.get("source"), ev.get("level"))
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

    # -- state -----------------------------------------------------------------------------------------------------

    def _end_events(self) -> None:
        try:
            self._events.put_nowait(None)
        except asyncio.QueueFull:
            pass

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
