"""Async client for ``/v1/live``: open a session, stream audio as binary frames, iterate server events; the
transcript view that folds those events."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from echopanel.protocol.frames import encode_frame


class ServerError(Exception):
    def __init__(self, event: dict[str, Any]) -> None:
        super().__init__(f"{event.get('code')}: {event.get('message')}")
        self.event = event
        self.code = event.get("code")


class LiveClient:
    """One session over one connection. Use as ``async with LiveClient(url, sources=[...]) as c``.

    The base of the client stack: ``ResilientClient`` (``echopanel.client.resilient``) is a ``LiveClient`` that
    also survives dropped connections, and ``echopanel transcribe`` and ``echopanel listen`` run on it. This plain
    mode sends each call straight to the socket (``send_audio`` waits when TCP pushes back) and ends with the
    connection; tests and benchmarks use it to see the wire as it is.
    """

    PING_INTERVAL_S: float | None = 20.0
    PING_TIMEOUT_S: float | None = 20.0
    CLOSE_TIMEOUT_S: float | None = 10.0

    def __init__(
        self,
        url: str = "ws://127.0.0.1:8765/v1/live",
        *,
        token: str | None = None,
        sources: Sequence[str] = ("mic", "system"),
        sample_rate: int = 16000,
        session: Mapping[str, Any] | None = None,
        open_timeout_s: float = 30.0,
    ) -> None:
        self.url = url
        self.token = token
        self.sources = list(sources)
        self.sample_rate = sample_rate
        self.extra_session = dict(session or {})
        self.open_timeout_s = open_timeout_s
        self.ws: ClientConnection | None = None
        self.session: dict[str, Any] = {}
        self._ids = itertools.count(1)

    @property
    def config(self) -> dict[str, Any]:
        """The ``session`` object of ``session.create``."""
        return {"sources": self.sources, "sample_rate": self.sample_rate, **self.extra_session}

    async def __aenter__(self) -> LiveClient:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    async def open(self) -> dict[str, Any]:
        self.ws = await self._dial()
        created = await self._request_session(self.ws, {"type": "session.create", "session": self.config})
        self.session = created["session"]
        return self.session

    def next_id(self) -> str:
        return f"evt_{next(self._ids)}"

    async def send(self, event: dict[str, Any]) -> str:
        assert self.ws is not None, "not connected"
        event.setdefault("event_id", self.next_id())
        await self.ws.send(json.dumps(event))
        return str(event["event_id"])

    async def send_audio(self, source: str, pcm16: bytes) -> None:
        assert self.ws is not None, "not connected"
        await self.ws.send(encode_frame(self.sources.index(source), pcm16))

    async def commit(self, source: str | None = None) -> str:
        return await self.send({"type": "input_audio_buffer.commit", **({"source": source} if source else {})})

    async def request(self, source: str | None = None) -> str:
        return await self.send({"type": "response.create", **({"source": source} if source else {})})

    async def close_session(self) -> str:
        return await self.send({"type": "session.close"})

    async def recv(self) -> dict[str, Any]:
        assert self.ws is not None, "not connected"
        data = await self.ws.recv()
        return dict(json.loads(data))

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Server events until the connection closes."""
        while True:
            try:
                yield await self.recv()
            except ConnectionClosed:
                return

    @property
    def close_code(self) -> int | None:
        return None if self.ws is None else self.ws.close_code

    async def disconnect(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    # -- the connection, shared by every mode ------------------------------------------------------------------------

    async def _dial(self) -> ClientConnection:
        """Open a WebSocket to ``url`` (token as a bearer header, the ``echopanel.v1`` subprotocol)."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        return await connect(
            self.url,
            additional_headers=headers,
            subprotocols=["echopanel.v1"],  # type: ignore[list-item]
            max_size=None,
            open_timeout=self.open_timeout_s,
            close_timeout=self.CLOSE_TIMEOUT_S,
            ping_interval=self.PING_INTERVAL_S,
            # With overflow="block" the server stops reading while it catches up, so our ping waits behind our
            # own audio: never give up on a late pong then (TCP flow control shows the server is alive).
            ping_timeout=None if self.extra_session.get("overflow") == "block" else self.PING_TIMEOUT_S,
        )

    async def _request_session(
        self, ws: ClientConnection, event: dict[str, Any], timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Send ``session.create`` (new or ``resume``) and return the ``session.created`` that answers it.

        An ``error`` answering it raises ``ServerError``; other events before it are skipped. ``timeout_s`` bounds
        the wait for each message (None: no bound).
        """
        event.setdefault("event_id", self.next_id())
        event_id = event["event_id"]
        await ws.send(json.dumps(event))
        while True:
            raw = await ws.recv() if timeout_s is None else await asyncio.wait_for(ws.recv(), timeout_s)
            if isinstance(raw, bytes):
                continue
            ev = json.loads(raw)
            if ev.get("type") == "session.created":
                return dict(ev)
            if ev.get("type") == "error" and ev.get("event_id") == event_id:
                raise ServerError(ev)


@dataclass
class ItemView:
    item_id: str
    source: str
    stable: str = ""
    tentative: str = ""
    final: str | None = None
    start_ms: int = 0
    end_ms: int = 0
    speaker: str | None = None
    first_text_at: float | None = None
    done_at: float | None = None
    repaired: bool = False
    words: list[dict[str, Any]] = field(default_factory=list)
    engine: str | None = None
    replaced: bool = False  # a later repaired item replaces it (re-decoded at finalization: ``replaces``)
    resynced: bool = False  # open when the connection dropped: deltas may be missing; the final is authoritative


class TranscriptView:
    """Folds server events into items: stable text, tentative tail, final text; checks the delta contract."""

    def __init__(self) -> None:
        self.items: dict[str, ItemView] = {}
        self.errors: list[dict[str, Any]] = []
        self.summary: dict[str, Any] | None = None
        self.backpressure: list[dict[str, Any]] = []
        self.violations: list[str] = []

    def apply(self, ev: dict[str, Any], now: float | None = None) -> ItemView | None:
        now = asyncio.get_event_loop().time() if now is None else now
        kind = ev.get("type")
        if kind == "error":
            self.errors.append(ev)
            return None
        if kind == "session.summary":
            self.summary = ev
            return None
        if kind == "input_audio_buffer.backpressure":
            self.backpressure.append(ev)
            return None
        if kind == "client.resumed":  # ResilientClient: events in flight at the drop may be lost
            for open_item in self.items.values():
                if open_item.final is None:
                    open_item.resynced = True
                    if ev.get("partials_reset"):  # resumed on another node: open items are transcribed afresh
                        open_item.stable = open_item.tentative = ""
            return None
        if kind not in ("response.text.delta", "response.done", "input_audio_buffer.speech_started"):
            return None
        iid = ev["item_id"]
        item = self.items.get(iid)
        if item is None:
            item = self.items[iid] = ItemView(iid, ev["source"])
        if kind == "response.text.delta":
            item.stable += ev["delta"]
            item.tentative = ev["tentative"]
            if item.first_text_at is None and (ev["delta"] or ev["tentative"]):
                item.first_text_at = now
        elif kind == "response.done":
            item.final = ev["text"]
            item.start_ms, item.end_ms = ev["start_ms"], ev["end_ms"]
            item.speaker = ev.get("speaker")
            item.repaired = bool(ev.get("repaired"))
            item.words = ev.get("words", [])
            item.engine = ev.get("engine")
            item.tentative = ""
            item.done_at = now
            for old in ev.get("replaces") or ():
                if old in self.items:
                    self.items[old].replaced = True
            if item.stable != ev["text"] and not (item.repaired or item.resynced):
                self.violations.append(f"{iid}: deltas {item.stable!r} != final {ev['text']!r}")
            if item.first_text_at is None and ev["text"]:
                item.first_text_at = now
        return item

    def finals(self) -> list[ItemView]:
        done = [i for i in self.items.values() if i.final and not i.replaced]
        return sorted(done, key=lambda i: (i.start_ms, i.source))

    def text(self, source: str | None = None) -> str:
        return " ".join(i.final or "" for i in self.finals() if source is None or i.source == source)
