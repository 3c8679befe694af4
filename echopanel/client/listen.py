"""``echopanel listen``: live capture from the microphone and system audio, streamed to a server, shown live.

Audio goes to the server as binary frames. Each source keeps what it captured until the server acknowledges it
(``session.metrics`` ``received_ms``), bounded by ``MAX_BUFFER_MS``; on a lost connection the command reconnects
with backoff and jitter and resumes the session (``session.create {resume}``), resending from the server's
``received_ms``. If the server no longer has the session (restarted), it continues in a new one with the audio the
old one never acknowledged. Ctrl-C ends the session: the last audio is sent, the finals and the summary printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from echopanel.client.capture import TARGET_RATE, CaptureError, DeviceCapture, open_captures
from echopanel.protocol.frames import encode_frame

SAMPLES_PER_MS = TARGET_RATE // 1000
BYTES_PER_SAMPLE = 2
MAX_BUFFER_MS = 60_000  # per source: audio kept until the server acknowledges it
CATCHUP_THRESHOLD_MS = 1_000  # more unsent audio than this is resent paced
CATCHUP_SPEED = 4.0  # resend pace, in multiples of real time
MAX_FRAME_MS = 250
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0
CLOSE_TIMEOUT_S = 60.0  # after Ctrl-C, wait this long for the last finals and the summary
SILENCE_WARNING_S = 3.0


def backoff_delay(attempt: int, rng: Callable[[], float] = random.random) -> float:
    """Exponential backoff with equal jitter: half the capped delay fixed, half random."""
    cap = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** max(0, attempt - 1))
    return cap / 2 + rng() * cap / 2


class ResendBuffer:
    """One source's PCM16 from ``start`` to ``end`` (sample offsets in the session's clock), bounded.

    At the bound the oldest audio is dropped; what the server had not acknowledged counts as ``lost`` and is
    replaced by silence if a resume asks for it (so item times stay aligned).
    """

    def __init__(self, max_samples: int) -> None:
        self.max = max_samples
        self.chunks: deque[bytes] = deque()
        self.start = 0
        self.end = 0
        self.acked = 0
        self.lost = 0

    @property
    def size(self) -> int:
        return self.end - self.start

    def push(self, pcm: bytes) -> None:
        if not pcm:
            return
        self.chunks.append(pcm)
        self.end += len(pcm) // BYTES_PER_SAMPLE
        while self.size > self.max and len(self.chunks) > 1:
            n = len(self.chunks.popleft()) // BYTES_PER_SAMPLE
            self.lost += max(0, min(self.start + n, self.end) - max(self.start, self.acked))
            self.start += n

    def ack(self, offset: int) -> None:
        self.acked = max(self.acked, min(offset, self.end))
        while self.chunks and self.start + len(self.chunks[0]) // BYTES_PER_SAMPLE <= self.acked:
            self.start += len(self.chunks.popleft()) // BYTES_PER_SAMPLE

    def read(self, offset: int, max_samples: int) -> bytes:
        n = min(max_samples, self.end - offset)
        if n <= 0:
            return b""
        if offset < self.start:
            return bytes(BYTES_PER_SAMPLE * min(n, self.start - offset))
        out = bytearray()
        pos = self.start
        for chunk in self.chunks:
            count = len(chunk) // BYTES_PER_SAMPLE
            if offset < pos + count:
                skip = max(0, offset - pos) * BYTES_PER_SAMPLE
                out += chunk[skip : skip + (n * BYTES_PER_SAMPLE - len(out))]
                if len(out) >= n * BYTES_PER_SAMPLE:
                    break
            pos += count
        return bytes(out)

    def rebase(self) -> None:
        """A new session: keep what the old one never acknowledged, counted from 0."""
        keep_from = max(self.acked, self.start)
        while self.chunks and self.start + len(self.chunks[0]) // BYTES_PER_SAMPLE <= keep_from:
            self.start += len(self.chunks.popleft()) // BYTES_PER_SAMPLE
        if self.chunks and self.start < keep_from:
            self.chunks[0] = self.chunks[0][(keep_from - self.start) * BYTES_PER_SAMPLE :]
            self.start = keep_from
        self.end -= self.start
        self.start = 0
        self.acked = 0


@dataclass
class SourceLink:
    """One source: its capture, its resend buffer, what was sent on the current connection, what the server says."""

    capture: DeviceCapture
    index: int
    buf: ResendBuffer = field(default_factory=lambda: ResendBuffer(MAX_BUFFER_MS * SAMPLES_PER_MS))
    sent: int = 0
    credit: float = 0.0
    credit_at: float = 0.0
    backpressure: str = "normal"
    metrics: dict[str, Any] = field(default_factory=dict)
    ended: bool = False
    receiving: bool = False
    warned_silence: bool = False

    @property
    def name(self) -> str:
        return self.capture.role


class FatalConnectionError(Exception):
    """Retrying cannot help (wrong token, refused configuration)."""


class ListenView:
    """Terminal output: finals as lines; in a terminal also a live status block with partials."""

    def __init__(self, console: Console, links: list[SourceLink]) -> None:
        self.console = console
        self.links = links
        self.interactive = console.is_terminal
        self.state = "starting"
        self.session_id: str | None = None
        self.degrade = "0 normal"
        self.partials: dict[str, str] = {}
        self.live: Live | None = None
        if self.interactive:
            self.live = Live(self._render(), console=console, auto_refresh=False, transient=True)

    def __enter__(self) -> ListenView:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()

    def print(self, message: Any, style: str | None = None) -> None:
        (self.live.console if self.live is not None else self.console).print(message, style=style, highlight=False)
        self.refresh()

    def set_state(self, state: str, style: str | None = None) -> None:
        if state != self.state:
            self.state = state
            self.print(f"[{time.strftime('%H:%M:%S')}] {state}", style=style or "cyan")

    def refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._render(), refresh=True)

    def _render(self) -> Group:
        lines = [Text(f"● {self.state}", style="bold cyan")]
        now = time.monotonic()
        for link in self.links:
            cap = link.capture
            level = cap.level
            bar = "█" * int(min(1.0, level) * 20)
            age = now - cap.last_audio_at if cap.last_audio_at else None
            fresh = (
                "ended" if link.ended else ("waiting" if age is None else ("now" if age < 1 else f"{age:.1f} s ago"))
            )
            m = link.metrics
            fp = (m.get("first_partial_latency_ms") or {}).get("p50")
            fl = (m.get("final_latency_ms") or {}).get("p50")
            lat = f"p50 first {fp:.0f} ms / final {fl:.0f} ms" if fp is not None and fl is not None else "latency –"
            lines.append(
                Text(
                    f"  {link.name:<7} {bar:<20} audio {fresh:<11} backpressure {link.backpressure:<8} {lat}",
                    style="red" if link.backpressure == "shedding" else "",
                )
            )
        lines.append(Text(f"  degrade {self.degrade}", style="dim"))
        for source, text in self.partials.items():
            if text:
                lines.append(Text(f"{source} … {text}", style="italic dim"))
        return Group(*lines)


class Listener:
    def __init__(self, url: str, token: str | None, links: list[SourceLink], view: ListenView) -> None:
        self.url = url
        self.token = token
        self.links = links
        self.view = view
        self.session: dict[str, Any] | None = None
        self.summary: dict[str, Any] | None = None
        self.finals: dict[str, dict[str, Any]] = {}  # "session/item" -> response.done
        self.items: dict[str, dict[str, str]] = {}  # item -> {stable, tentative}
        self.stopping = False
        self.stop_at = 0.0
        self.devices_lost = False  # every device stopped by itself
        self.close_sent = False
        self.wake = asyncio.Event()
        self.ws: ClientConnection | None = None
        self.ready = False
        self._ids = 0

    # -- capture side --------------------------------------------------------------------------------------------

    async def read_capture(self, link: SourceLink) -> None:
        started = time.monotonic()
        while True:
            pcm = await link.capture.read()
            if pcm is None:
                break
            if pcm and not link.receiving:
                link.receiving = True
                self.view.print(f"{link.name}: receiving audio")
            link.buf.push(pcm)
            if (
                link.name == "mic"  # system audio is often silent; a microphone never delivers exact zeros
                and not link.warned_silence
                and not link.capture.nonzero_seen
                and time.monotonic() - started > SILENCE_WARNING_S
            ):
                link.warned_silence = True
                self.view.print(
                    f"{link.name}: the device delivers only digital silence (muted? on macOS this is what a denied "
                    "microphone permission looks like: allow your terminal in System Settings > Privacy & Security)",
                    style="yellow",
                )
            self.wake.set()
        link.ended = True
        reason = link.capture.stopped_reason or "stopped"
        if not self.stopping:
            self.view.print(f"{link.name}: {reason}", style="yellow")
            if all(other.ended for other in self.links):
                self.devices_lost = True
                self.view.print("no device is delivering audio: ending the session", style="red")
                self.stop()
        self.wake.set()

    # -- connection side -----------------------------------------------------------------------------------------

    async def run(self) -> int:
        attempt = 0
        while True:
            try:
                outcome = await self._connection()
            except FatalConnectionError as exc:
                self.view.print(f"echopanel listen: {exc}", style="red")
                return 1
            if outcome == "done":
                return 1 if self.devices_lost else 0
            if self.stopping and time.monotonic() - self.stop_at > CLOSE_TIMEOUT_S:
                self.view.print("gave up waiting for the server to finish the session", style="red")
                return 1
            attempt = 1 if self.ready else attempt + 1
            self.ready = False
            delay = backoff_delay(attempt)
            self.view.set_state(
                f"{outcome}; reconnecting in {delay:.1f} s (attempt {attempt}); audio is kept meanwhile", "yellow"
            )
            await asyncio.sleep(delay)

    async def _connection(self) -> str:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        if self.view.state == "starting":
            self.view.set_state("connecting")
        try:
            ws = await connect(
                self.url,
                additional_headers=headers,
                subprotocols=["echopanel.v1"],  # type: ignore[list-item]
                max_size=None,
                open_timeout=10,
                ping_interval=10,
                ping_timeout=20,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            return f"server refused the connection (HTTP {status}{', full' if status == 503 else ''})"
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            return f"server unreachable ({exc})"
        self.ws = ws
        self.close_sent = False
        try:
            await self._open_session(ws)
            sender = asyncio.create_task(self._send_loop(ws))
            try:
                await self._receive_loop(ws)
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await sender
        except ConnectionClosed:
            pass
        finally:
            self.ws = None
        code = ws.close_code
        if code == 1000:
            if self.summary is None and not self.stopping:
                self.view.print("the server ended the session", style="yellow")
            return "done"
        if code == 1008 and ws.close_reason == "unauthorized":
            raise FatalConnectionError("the server refused the token (close 1008): pass the right --token")
        if code == 4000:
            raise FatalConnectionError("the session was resumed by another connection (close 4000)")
        return f"connection lost (close {code})"

    async def _send(self, ws: ClientConnection, event: dict[str, Any]) -> str:
        self._ids += 1
        event.setdefault("event_id", f"cli_{self._ids}")
        await ws.send(json.dumps(event))
        return str(event["event_id"])

    async def _open_session(self, ws: ClientConnection) -> None:
        self.ready = False
        if self.session is not None:
            await self._send(
                ws,
                {
                    "type": "session.create",
                    "resume": {"session_id": self.session["id"], "resume_token": self.session.get("resume_token")},
                },
            )
        else:
            await self._create(ws)
        while True:
            ev = json.loads(await ws.recv())
            kind = ev.get("type")
            if kind == "session.created":
                self._on_created(ev)
                return
            if kind == "error" and ev.get("code") == "session_not_found":
                self.view.print(
                    "the server no longer has the session (restarted, or the reconnect took too long): "
                    "continuing in a new session with the audio it had not acknowledged",
                    style="yellow",
                )
                self.session = None
                await self._create(ws)
            elif kind == "error":
                raise FatalConnectionError(f"the server refused the session: {ev.get('code')}: {ev.get('message')}")

    async def _create(self, ws: ClientConnection) -> None:
        sources = [link.name for link in self.links]
        await self._send(ws, {"type": "session.create", "session": {"sources": sources, "sample_rate": TARGET_RATE}})

    def _on_created(self, ev: dict[str, Any]) -> None:
        session = ev["session"]
        if ev.get("resumed"):
            received = ev.get("received_ms") or {}
            resend = 0
            for link in self.links:
                start = int(received.get(link.name, 0)) * SAMPLES_PER_MS
                link.buf.ack(start)
                link.sent = start
                resend += max(0, link.buf.end - start)
            self.view.print(f"resumed session {session['id']}: resending {resend / TARGET_RATE:.1f} s of audio")
        else:
            for link in self.links:
                link.buf.rebase()
                link.sent = 0
            self.view.print(f"session {session['id']} started ({', '.join(session.get('sources', []))})")
        self.session = session
        self.view.session_id = session["id"]
        self.ready = True
        self.view.set_state("live", style="green")
        self.wake.set()

    async def _send_loop(self, ws: ClientConnection) -> None:
        for link in self.links:
            link.credit, link.credit_at = 0.0, time.monotonic()
        while True:
            self.wake.clear()
            now = time.monotonic()
            for link in self.links:
                link.credit = min(
                    link.credit + (now - link.credit_at) * TARGET_RATE * CATCHUP_SPEED,
                    MAX_FRAME_MS * SAMPLES_PER_MS * CATCHUP_SPEED,
                )
                link.credit_at = now
                while link.sent < link.buf.end:
                    backlog = link.buf.end - link.sent
                    limit = MAX_FRAME_MS * SAMPLES_PER_MS
                    catching_up = backlog > CATCHUP_THRESHOLD_MS * SAMPLES_PER_MS
                    if catching_up:
                        if link.backpressure != "normal":
                            break
                        limit = min(limit, int(link.credit))
                        if limit < 20 * SAMPLES_PER_MS:
                            break
                    pcm = link.buf.read(link.sent, limit)
                    if not pcm:
                        break
                    await ws.send(encode_frame(link.index, pcm))
                    n = len(pcm) // BYTES_PER_SAMPLE
                    link.sent += n
                    if catching_up:
                        link.credit -= n
            if (
                self.stopping
                and not self.close_sent
                and all(link.ended and link.sent >= link.buf.end for link in self.links)
            ):
                self.close_sent = True
                await self._send(ws, {"type": "session.close"})
                self.view.set_state("finishing: waiting for the last results and the summary")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), 0.05)

    async def _receive_loop(self, ws: ClientConnection) -> None:
        async for data in ws:
            if isinstance(data, bytes):
                continue
            self.on_event(json.loads(data))

    def on_event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        sid = self.session["id"] if self.session else ""
        view = self.view
        if kind == "response.text.delta":
            key = f"{sid}/{ev['item_id']}"
            item = self.items.setdefault(key, {"stable": "", "tentative": ""})
            item["stable"] += ev.get("delta", "")
            item["tentative"] = ev.get("tentative", "")
            view.partials[ev["source"]] = " ".join((item["stable"] + " " + item["tentative"]).split())
            view.refresh()
        elif kind == "response.done":
            key = f"{sid}/{ev['item_id']}"
            self.items.pop(key, None)
            view.partials.pop(ev["source"], None)
            if key in self.finals:
                return  # a resumed session resends finals: idempotent by item_id
            self.finals[key] = ev
            if ev.get("text", "").strip():
                view.print(final_line(ev))
            else:
                view.refresh()
        elif kind == "speaker.updated":
            key = f"{sid}/{ev['item_id']}"
            if key in self.finals:
                self.finals[key]["speaker"] = ev.get("speaker")
        elif kind == "session.metrics":
            for link in self.links:
                m = (ev.get("sources") or {}).get(link.name)
                if m:
                    link.metrics = m
                    if isinstance(m.get("received_ms"), int | float):
                        link.buf.ack(int(m["received_ms"]) * SAMPLES_PER_MS)
                    bp = m.get("backpressure")
                    if isinstance(bp, str):
                        link.backpressure = bp
            if "degrade_level" in ev:
                view.degrade = f"{ev['degrade_level']} {ev.get('degrade') or ''}".strip()
            view.refresh()
        elif kind == "input_audio_buffer.backpressure":
            for link in self.links:
                if link.name == ev.get("source"):
                    if ev.get("level") == "shedding" and link.backpressure != "shedding":
                        view.print(
                            f"{link.name}: the server is overloaded and skips live audio "
                            f"({ev.get('dropped_ms', 0) / 1000:.1f} s so far); it is transcribed at the end",
                            style="yellow",
                        )
                    link.backpressure = str(ev.get("level"))
            view.refresh()
        elif kind == "session.degraded":
            view.degrade = f"{ev.get('level')} {ev.get('name')}"
            view.print(f"server degraded to level {ev.get('level')} ({ev.get('name')}): {ev.get('reason')}", "yellow")
        elif kind == "session.summary":
            self.summary = ev
        elif kind == "error":
            view.print(f"server error {ev.get('code')}: {ev.get('message')}", style="red")

    def stop(self) -> None:
        """Ctrl-C: stop capturing; the send loop sends what is left, then session.close."""
        if self.stopping:
            return
        self.stopping = True
        self.stop_at = time.monotonic()
        for link in self.links:
            link.capture.close("stopped")
        self.wake.set()


def final_line(ev: dict[str, Any]) -> str:
    s = int(ev.get("start_ms", 0)) // 1000
    source = str(ev.get("source"))
    speaker = ev.get("speaker")
    who = (
        "" if not speaker else (str(speaker)[len(source) :] if str(speaker).startswith(source + ":") else f" {speaker}")
    )
    replaces = ev.get("replaces") or []
    flag = " (repaired)" if ev.get("repaired") else ""
    if replaces:
        flag = f" (repaired: replaces {', '.join(map(str, replaces))})"
    return f"[{s // 60:02d}:{s % 60:02d} {source}{who}]{flag} {ev.get('text', '').strip()}"


def print_summary(console: Console, listener: Listener) -> None:
    summary = listener.summary
    if summary is None:
        return
    console.rule(f"summary {summary.get('session_id', '')}")

    def text_of(v: Any) -> str:
        if isinstance(v, str):
            return v
        if isinstance(v, dict):
            speaker = f"{v['speaker']}: " if v.get("speaker") else ""
            extra = ", ".join(f"{k} {v[k]}" for k in ("owner", "due") if v.get(k))
            return f"{speaker}{v.get('text', '')}" + (f" ({extra})" if extra else "")
        return str(v)

    body = summary.get("summary")
    sections: list[tuple[str, Any]] = [("Summary", body)] if isinstance(body, list) else []
    if isinstance(body, str):
        console.print(body, highlight=False)
    sections += [
        ("Action items", summary.get("action_items")),
        ("Decisions", summary.get("decisions")),
        ("Risks", summary.get("risks")),
        ("Open questions", summary.get("open_questions")),
    ]
    for title, values in sections:
        if values:
            console.print(f"{title}:", style="bold")
            for v in values:
                console.print(f"  - {text_of(v)}", highlight=False)
    for row in summary.get("speakers") or []:
        if isinstance(row, dict):
            console.print(
                f"  {row.get('speaker')}: {int(row.get('talk_ms', 0)) / 1000:.1f} s of talk, {row.get('items')} items",
                highlight=False,
            )
    transcript = summary.get("transcript") or []
    console.print(f"{len(transcript)} utterances; session {summary.get('session_id')}", style="dim")


async def listen(
    *,
    url: str,
    token: str | None,
    mic: str | None,
    system: str | None,
    use_mic: bool = True,
    console: Console | None = None,
) -> int:
    console = console or Console(soft_wrap=True)
    loop = asyncio.get_running_loop()
    specs = ([("mic", mic)] if use_mic else []) + ([("system", system)] if system is not None else [])
    if not specs:
        console.print("echopanel listen: nothing to capture (--no-mic without --system)", style="red")
        return 2
    try:
        captures = await asyncio.to_thread(open_captures, specs, loop)
    except CaptureError as exc:
        console.print(f"echopanel listen: {exc}", style="red", highlight=False)
        return 2
    links = [SourceLink(capture, i) for i, capture in enumerate(captures)]
    for link in links:
        cap = link.capture
        console.print(
            f"capturing {link.name} from {cap.choice.label} ({cap.rate} Hz, {cap.channels} ch)", highlight=False
        )
    view = ListenView(console, links)
    listener = Listener(url, token, links, view)
    readers = [asyncio.create_task(listener.read_capture(link)) for link in links]
    interrupts = 0

    def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            view.print("stopping: sending the last audio (Ctrl-C again to quit at once)", style="cyan")
            listener.stop()
        else:
            runner.cancel()

    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
        loop.add_signal_handler(signal.SIGTERM, on_interrupt)
    runner = asyncio.create_task(listener.run())
    ticker = asyncio.create_task(_tick(view))
    code = 1
    try:
        with view:
            try:
                await asyncio.wait({runner})
                code = runner.result()
            except asyncio.CancelledError:
                code = 130
            if listener.stopping and not listener.close_sent and code == 0:
                code = 1
    finally:
        ticker.cancel()
        listener.stop()
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, ticker, return_exceptions=True)
        with contextlib.suppress(NotImplementedError):
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)
    print_summary(console, listener)
    return code


async def _tick(view: ListenView) -> None:
    while True:
        await asyncio.sleep(0.25)
        view.refresh()


def main(args: Any) -> int:
    """``echopanel listen`` (arguments parsed by echopanel.cli)."""
    from echopanel.client.capture import describe_devices

    console = Console(soft_wrap=True)  # never wrap transcript lines (output is often piped to a file)
    if args.list_devices:
        try:
            print(describe_devices())
        except CaptureError as exc:
            console.print(f"echopanel listen: {exc}", style="red", highlight=False)
            return 2
        return 0
    try:
        return asyncio.run(
            listen(url=args.url, token=args.token, mic=args.mic, system=args.system, use_mic=not args.no_mic)
        )
    except KeyboardInterrupt:
        return 130
