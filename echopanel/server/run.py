"""Start the server: load and warm the engine, then serve; log one line when ready."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from echopanel.config import Settings
from echopanel.engines import multilingual
from echopanel.engines.base import SpeechEngine
from echopanel.engines.chain import ChainEngine
from echopanel.engines.faults import FaultSwitch, FaultyEngine
from echopanel.engines.sphinx import PocketsphinxEngine
from echopanel.engines.utterance import UtteranceEngine
from echopanel.engines.whisper import WhisperEngine
from echopanel.flow.breaker import BreakerSettings
from echopanel.flow.ladder import DegradeLadder
from echopanel.metrics import ServerMetrics
from echopanel.server import memory
from echopanel.server.app import create_app, server_features
from echopanel.server.context import ServerContext
from echopanel.server.controller import FlowController
from echopanel.server.faults import fault_routes
from echopanel.speakers.live import SpeakerService
from echopanel.storage.open import open_store
from echopanel.storage.retention import sweep
from echopanel.storage.store import AsyncStore

log = logging.getLogger("echopanel")


def build_engine(settings: Settings, faults: FaultSwitch | None = None) -> SpeechEngine:
    """Whisper, then the fallback engine, each behind a circuit breaker (engines/chain.py); with ``faults``, each
    wrapped for fault injection."""
    engines: list[UtteranceEngine] = [
        WhisperEngine(
            model_dir=settings.model_dir,
            workers=settings.inference_workers,
            cpu_threads=settings.cpu_threads_per_worker,
            recognizer=settings.recognizer,
            decode_timeout_s=settings.decode_timeout_s,
            # other languages and "auto": Whisper base, when the multilingual extra is installed
            multilingual=settings.data_dir / "models" if multilingual.installed() else None,
        )
    ]
    if settings.fallback_engine == "pocketsphinx":  # the settings allow "pocketsphinx" or "none"
        engines.append(
            PocketsphinxEngine(
                workers=settings.fallback_workers,
                decode_timeout_s=settings.decode_timeout_s,
                recognizer=settings.recognizer,
            )
        )
    if faults is not None:
        engines = [FaultyEngine(e, faults, recognizer=settings.recognizer) for e in engines]
    breaker = BreakerSettings(settings.breaker_failures, settings.breaker_reset_s)
    return ChainEngine(engines, breaker=breaker, recognizer=settings.recognizer)


def uvicorn_config(app: object, settings: Settings, sock: socket.socket | None = None) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        ws="websockets-sansio",
        ws_max_size=settings.max_message_bytes,
        # Pings keep idle connections alive through NATs, but a late pong never closes a connection: with
        # overflow="block" we stop reading on purpose, and the client's pong waits behind its own audio. Dead
        # peers are found by the send timeout and the idle timeout instead (docs/behaviour.md).
        ws_ping_interval=20.0,
        ws_ping_timeout=None,
        ws_per_message_deflate=False,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=5,
    )


async def until_started(server: uvicorn.Server, task: asyncio.Task[None]) -> int:
    """Wait until ``server`` (served by ``task``) listens; its port. ``RuntimeError`` if it stopped instead."""
    while not server.started:
        if task.done():
            await task
            raise RuntimeError("server failed to start")
        await asyncio.sleep(0.01)
    return int(server.servers[0].sockets[0].getsockname()[1])


class NodeServer(uvicorn.Server):
    """uvicorn's server, but SIGTERM drains first (``drain``): the first SIGTERM only asks for it; SIGINT, or a
    second SIGTERM, stops at once as uvicorn does."""

    drain_requested = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and not self.drain_requested:
            self.drain_requested = True  # a watcher task on the event loop sees it (no work in a signal handler)
            return
        super().handle_exit(sig, frame)


async def drain(context: ServerContext, settings: Settings) -> None:
    """Stop admitting (``/ready`` 503, new connections refused with HTTP 503), hand every session off at its next
    pause between utterances (closed 1012; with a shared store the client resumes on another node), and return once
    every connection has ended or ``drain_timeout_s`` has passed (docs/behaviour.md "Drain")."""
    started = time.monotonic()
    context.draining = True
    connections = list(context.connections)
    log.info("draining: handing off %d connection(s) at their next pause", len(connections))
    pause_wait_s = max(0.0, settings.drain_timeout_s - 5.0)  # the last 5 s: flush, store, close
    handoffs = [asyncio.create_task(c.hand_off(pause_wait_s)) for c in connections]
    deadline = started + settings.drain_timeout_s
    while context.connections and time.monotonic() < deadline:  # noqa: ASYNC110 - polled until empty or the bound
        await asyncio.sleep(0.05)
    await context.registry.let_go_detached()
    for task in handoffs:
        task.cancel()
    await asyncio.gather(*handoffs, return_exceptions=True)
    log.info("drained in %.1f s (%d connection(s) still open)", time.monotonic() - started, len(context.connections))


async def _drain_on_sigterm(server: NodeServer, context: ServerContext, settings: Settings) -> None:
    while not server.drain_requested:  # noqa: ASYNC110 - set by a signal handler, where no loop call is safe
        await asyncio.sleep(0.1)
    try:
        await drain(context, settings)
    finally:
        server.should_exit = True


@dataclass
class Stack:
    """Everything one server runs: the app and the parts it was built from (``assemble``)."""

    app: Starlette
    engine: SpeechEngine
    controller: FlowController | None
    store: AsyncStore
    speakers: SpeakerService | None

    def close(self) -> None:
        self.engine.close()
        if self.speakers is not None:
            self.speakers.close()
        self.store.close()


async def assemble(settings: Settings) -> Stack:
    """Load and warm the engine, open the store and the speaker encoder, and build the app on them (what
    ``echopanel serve`` runs; tests serve the same stack in-process: ``echopanel.testing.inprocess``)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    faults = FaultSwitch() if settings.fault_injection else None
    engine = await asyncio.to_thread(build_engine, settings, faults)
    await asyncio.to_thread(engine.warmup)
    controller = None
    scheduler = getattr(engine, "scheduler", None)
    if scheduler is not None:
        controller = FlowController(
            scheduler=scheduler,
            policy=engine.policy,
            base_interval_ms=settings.recognizer.partial_interval_ms,
            metrics=ServerMetrics(),
            ladder=DegradeLadder(settings.ladder),
        )
    store, speakers = await asyncio.to_thread(open_store_and_speakers, settings)
    app = create_app(engine, settings, controller, store=store, speakers=speakers)
    if isinstance(engine, ChainEngine) and controller is not None:
        engine.bind_metrics(controller.metrics)
        engine.listeners.append(controller.announce_engines)
    if faults is not None and isinstance(engine, ChainEngine):
        app.router.routes.extend(fault_routes(faults, engine.names))
        log.warning("fault injection is on: POST /faults makes engines fail, hang or die")
    return Stack(app, engine, controller, store, speakers)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Stack]:
    """``assemble``, with its background tasks (flow control, memory trim, retention) running until exit."""
    stack = await assemble(settings)
    tasks = [
        asyncio.create_task(_trim_memory(settings.memory_trim_s)),
        asyncio.create_task(_retention(stack.store, settings)),
    ]
    if stack.controller is not None:
        tasks.append(asyncio.create_task(stack.controller.run()))
    if stack.store.store.kind == "postgresql":  # other nodes read it to tell a hung node (docs/deployment.md)
        tasks.append(asyncio.create_task(_heartbeat(stack.store)))
    try:
        yield stack
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stack.close()


async def serve(settings: Settings) -> None:
    started = time.monotonic()
    memory.limit_arenas()
    async with running(settings) as stack:
        memory.freeze()
        server = NodeServer(uvicorn_config(stack.app, settings))
        task = asyncio.create_task(server.serve())
        try:
            port = await until_started(server, task)
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from None
        drainer = asyncio.create_task(_drain_on_sigterm(server, stack.app.state.context, settings))
        engine = stack.engine
        features = server_features(engine, stack.store, stack.speakers)  # what /ready and session.created say too
        log.info(
            "EchoPanel ready: ws://%s:%d/v1/live engine=%s model=%s fallback=%s speakers=%s store=%s workers=%d "
            "auth=%s startup=%.1fs",
            settings.host,
            port,
            engine.capabilities.name,
            engine.capabilities.model,
            features.fallback or "off",
            "on" if features.speakers else "off",
            features.store or "off",
            settings.inference_workers,
            "token" if settings.token else "off",
            time.monotonic() - started,
        )
        try:
            await task
        finally:
            drainer.cancel()


def node_id(settings: Settings) -> str:
    """``--node-id``, else hostname:port (hostname:pidN for ``--port 0``: any free port, so not a name)."""
    if settings.node_id:
        return settings.node_id
    where = settings.port if settings.port else f"pid{os.getpid()}"
    return f"{socket.gethostname()}:{where}"


def open_store_and_speakers(settings: Settings) -> tuple[AsyncStore, SpeakerService | None]:
    """The session store (sessions a dead server left active become interrupted) and the speaker encoder."""
    store = open_store(settings.store, settings.data_dir, node_id(settings))
    # One SQLite file has one server: every session it left active died with it. A shared store has other nodes,
    # whose live sessions are theirs: only this node's own are swept.
    interrupted = store.mark_interrupted(every_node=store.kind == "sqlite")
    store.free_fleet_slots()  # what a previous run of this node held of the fleet-wide limit
    if interrupted:
        log.info("marked %d sessions left active by a previous run as interrupted", len(interrupted))
    speakers = None
    if settings.speakers:  # missing or unreadable weights: a WARNING says why, and labels are off
        speakers = SpeakerService.load(workers=settings.speaker_workers, max_pending=settings.speaker_max_pending)
        if speakers is not None:
            speakers.warmup()
    else:
        log.info("speaker labels off: ECHOPANEL_SPEAKERS is false")
    return AsyncStore(store), speakers


async def _retention(store: AsyncStore, settings: Settings) -> None:
    while True:
        try:
            await store.write(sweep, store.store, settings.data_dir, settings.recording_retention_days)
        except Exception:
            log.exception("retention sweep failed")
        await asyncio.sleep(settings.retention_sweep_s)


HEARTBEAT_S = 2.0


async def _heartbeat(store: AsyncStore) -> None:
    while True:
        try:
            await store.write(store.store.heartbeat)
        except Exception:
            log.warning("store heartbeat failed", exc_info=True)
        await asyncio.sleep(HEARTBEAT_S)


async def _trim_memory(every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        await asyncio.to_thread(memory.trim)
