"""``echopanel listen``: live capture from the microphone and system audio, streamed to a server, shown live.

The audio goes through the resilient client (``echopanel.client.resilient.ResilientClient``, the same one
``echopanel transcribe`` uses) with the options for live capture: each source keeps what it captured until the server
acknowledges it (``received_ms``), at most ``MAX_BUFFER_MS`` (the oldest dropped at the bound, counted, and sent as
silence so times stay aligned); a lost connection is retried by the reconnect policy (full jitter, a circuit
breaker, one attempt before the server's resume grace ends: docs/protocol.md, "Reconnect policy") and the session
resumed, the backlog resent at 4x real time and paused while the server reports backpressure; if the server no
longer has the session (restarted), it continues in a new one with the audio the old one never acknowledged. A wrong
token, a refused configuration and a session resumed elsewhere stop it. Ctrl-C ends the session: the last audio is
sent, the finals and the summary printed.

This module is the glue from the captures to the client (``Listener``, one ``SourceLink`` per source) and the
command; what it prints and the live status block are ``echopanel.client.listen_view`` (``ListenView``,
``state_line``, ``final_line``, ``print_summary``, importable from here as well).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console

from echopanel.client.capture import TARGET_RATE, CaptureError, open_captures
from echopanel.client.listen_view import ListenView, SourceLink, final_line, print_summary
from echopanel.client.listen_view import state_line as state_line
from echopanel.client.live import ServerError
from echopanel.client.resilient import (
    CatchUp,
    ConnectionStatus,
    FatalConnectionError,
    ResilientClient,
    SessionLost,
)

MAX_BUFFER_MS = 60_000  # per source: audio kept until the server acknowledges it
CATCHUP = CatchUp(speed=4.0, threshold_ms=1_000, max_frame_ms=250)  # resend pace of a backlog after a reconnect
CLOSE_TIMEOUT_S = 60.0  # after Ctrl-C, wait this long for the last finals and the summary
SILENCE_WARNING_S = 3.0
CLIENT_ERRORS = (FatalConnectionError, ServerError, SessionLost)


def live_client(
    url: str,
    token: str | None,
    sources: list[str],
    on_state: Callable[[ConnectionStatus], None] | None = None,
) -> ResilientClient:
    """The resilient client as live capture uses it (the options above); no outage is given up (Ctrl-C is)."""
    return ResilientClient(
        url,
        token=token,
        sources=sources,
        sample_rate=TARGET_RATE,
        buffer_s=MAX_BUFFER_MS / 1000,
        when_full="drop_oldest",
        give_up_after_s=None,
        catchup=CATCHUP,
        on_session_lost="new_session",
        on_state=on_state,
    )


def explain(exc: BaseException) -> str:
    """What a client error means for the user of ``listen``."""
    if isinstance(exc, FatalConnectionError) and exc.code == 1008:
        return "the server refused the token (close 1008): pass the right --token"
    if isinstance(exc, ServerError):
        return f"the server refused the session: {exc}"
    return str(exc)


class Listener:
    """Feeds the captures into the client and shows its events."""

    def __init__(self, client: ResilientClient, links: list[SourceLink], view: ListenView) -> None:
        self.client = client
        self.links = links
        self.view = view
        self.summary: dict[str, Any] | None = None
        self.finals: dict[str, dict[str, Any]] = {}  # "session/item" -> response.done
        self.items: dict[str, dict[str, str]] = {}  # item -> {stable, tentative}
        self.session_id = ""
        self.stopping = False
        self.stopped = asyncio.Event()
        self.devices_lost = False  # every device stopped by itself

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
            if pcm and not self.client.done:
                with contextlib.suppress(*CLIENT_ERRORS):  # the client stopped: the listener tells why
                    await self.client.send_audio(link.name, pcm)  # buffered; never waits for the network
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
        link.ended = True
        reason = link.capture.stopped_reason or "stopped"
        if not self.stopping:
            self.view.print(f"{link.name}: {reason}", style="yellow")
            if all(other.ended for other in self.links):
                self.devices_lost = True
                self.view.print("no device is delivering audio: ending the session", style="red")
                self.stop()

    # -- connection side -----------------------------------------------------------------------------------------

    async def run(self, readers: list[asyncio.Task[None]]) -> int:
        """Connect (retrying), stream until Ctrl-C or the end of the session; the exit code."""
        consumer = asyncio.create_task(self._consume())
        stop = asyncio.create_task(self.stopped.wait())
        try:
            self.client.start()
            await asyncio.wait([consumer, stop], return_when=asyncio.FIRST_COMPLETED)
            if not self.stopping:
                return self._ended_by_itself()
            # Stopping: the captures are closed; what they still hold goes to the client, then session.close.
            await asyncio.gather(*readers, return_exceptions=True)
            try:
                self.summary = await self.client.close(timeout_s=CLOSE_TIMEOUT_S)
            except CLIENT_ERRORS as exc:
                self.view.print(f"echopanel listen: {explain(exc)}", style="red")
                return 1
            await consumer
            if self.summary is None:
                self.view.print("gave up waiting for the server to finish the session", style="red")
                return 1
            return 1 if self.devices_lost else 0
        finally:
            stop.cancel()
            if not consumer.done():
                consumer.cancel()
            await asyncio.gather(consumer, stop, return_exceptions=True)

    def _ended_by_itself(self) -> int:
        error = self.client.error
        if error is not None:
            self.view.print(f"echopanel listen: {explain(error)}", style="red")
            return 1
        code = self.client.close_code
        if code == 1000:
            if self.summary is None:
                self.view.print("the server ended the session", style="yellow")
            return 1 if self.devices_lost else 0
        self.view.print(f"echopanel listen: the connection closed with code {code}", style="red")
        return 1

    async def _consume(self) -> None:
        async for ev in self.client.events():
            self.on_event(ev)

    def on_event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        sid = self.session_id
        view = self.view
        if kind == "client.session_started":
            session = ev.get("session") or {}
            if ev.get("previous_session_id"):
                view.print(
                    "the server no longer has the session (restarted, or the reconnect took too long): "
                    "continuing in a new session with the audio it had not acknowledged",
                    style="yellow",
                )
            self.session_id = view.session_id = str(session.get("id", ""))
            view.print(f"session {self.session_id} started ({', '.join(session.get('sources', []))})")
        elif kind == "client.resumed":
            resend = int(ev.get("resend_ms") or 0) / 1000
            view.print(f"resumed session {ev.get('session_id')}: resending {resend:.1f} s of audio")
            if ev.get("partials_reset"):  # resumed on another node: items without a final are transcribed again
                self.items.clear()
                view.partials.clear()
                view.refresh()
        elif kind == "response.text.delta":
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
                return  # the client drops replayed finals already; idempotent by item_id all the same
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
        """Ctrl-C: stop capturing; what the captures still hold is sent, then session.close."""
        if self.stopping:
            return
        self.stopping = True
        for link in self.links:
            link.capture.close("stopped")
        self.stopped.set()


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
    client = live_client(url, token, [link.name for link in links], on_state=view.on_status)
    view.status = client.status
    listener = Listener(client, links, view)
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
    view.set_state("connecting")
    runner = asyncio.create_task(listener.run(readers))
    ticker = asyncio.create_task(_tick(view))
    code = 1
    try:
        with view:
            try:
                await asyncio.wait({runner})
                code = runner.result()
            except asyncio.CancelledError:
                code = 130
    finally:
        ticker.cancel()
        listener.stop()
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, ticker, return_exceptions=True)
        await client.aclose()
        with contextlib.suppress(NotImplementedError):
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)
    print_summary(console, listener.summary)
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
