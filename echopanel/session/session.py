"""A transcription session: several sources, each with its own bounded queue, recording and recognizer stream.

Dialect-agnostic: the server's dialect shells call ``append`` / ``commit`` / ``request`` / ``configure`` /
``clear`` and read ``outbox``, which carries typed events only (``echopanel/events.py``): engine events tagged
with their source (``SourceEvent``) and the session's own (``Backpressure``, ``Degraded``, ``SessionMetrics``,
``SpeakerUpdated``, ``ErrorEvent``). Finalization (``echopanel/session/finalize.py``) drives a session to its end.

Per source: every accepted sample is first appended to the source's recording, then queued
(``echopanel/flow/source_queue.py``: bounded in samples, the first source, the microphone by default, has the larger
bound). At the bound, with ``overflow="shed"`` (default), the oldest queued audio is dropped from live
transcription, its span noted; the client sees ``input_audio_buffer.backpressure`` as the level rises and falls; at
finalization the shed spans are transcribed from the recording (``echopanel/session/repair.py``), so the stored
transcript has no holes. With ``overflow="block"`` the session stops taking audio instead and TCP pushes back on the
client. A feeder task moves queued audio into the recognizer stream; a forwarder task moves the stream's events to
the outbox, through the transcript ledger (``echopanel/session/ledger.py``) and the live speaker labels
(``echopanel/session/labels.py``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from typing import Any

import numpy as np

from echopanel.audio.convert import StreamResampler, pcm16_to_float
from echopanel.config import Settings
from echopanel.engines.base import SpeechEngine, SpeechStream, StreamOptions, TurnSettings
from echopanel.events import (
    Degraded,
    ErrorEvent,
    Features,
    ItemFailed,
    Limits,
    RequestCompleted,
    SessionInfo,
    SessionMetrics,
    SourceEvent,
    SpeechStarted,
    SpeechStopped,
    TextDelta,
    TextFinal,
)
from echopanel.flow.ladder import REASONS, Level
from echopanel.flow.source_queue import Chunk, SourceQueue
from echopanel.metrics import ServerMetrics, source_kind
from echopanel.session.carried import Carried, catch_up, token_hash
from echopanel.session.labels import LIVE_LABELS_UNTIL, LiveLabels
from echopanel.session.ledger import Ledger
from echopanel.session.outbox import Barrier, Outbox
from echopanel.session.source import Marker, SourceState
from echopanel.session.telemetry import measure, snapshot, source_stats
from echopanel.speakers.live import SourceSpeakers, SpeakerService
from echopanel.storage.recording import Recording, session_dir
from echopanel.storage.store import AsyncStore, SessionRecord, SourceRecord, store_kind_of

log = logging.getLogger(__name__)

METRICS_INTERVAL_S = 1.0
LEVEL_RECHECK_S = 0.25  # while a queue is not "normal", the feeder re-checks its level this often
_FLUSH_ID = "\x00flush"


class Session:
    def __init__(
        self,
        *,
        engine: SpeechEngine,
        settings: Settings,
        sources: list[str],
        sample_rate: int,
        turn_detection: bool = True,
        language: str = "en",
        prompt: str = "",
        overflow: str | None = None,
        outbox: Outbox | None = None,
        metrics: ServerMetrics | None = None,
        level: Level = Level.NORMAL,
        store: AsyncStore | None = None,
        speakers: SpeakerService | None = None,
        dialect: str = "native",
        carried: Carried | None = None,
    ) -> None:
        # A carried session goes on from another node's (echopanel/session/carried.py): same id, token, transcript.
        self.carried = carried
        self.id = carried.session_id if carried else "sess_" + uuid.uuid4().hex[:20]
        self.resume_token = carried.resume_token if carried else secrets.token_urlsafe(24)
        self.engine = engine
        self.settings = settings
        self.sample_rate = sample_rate
        self.turn_detection = turn_detection
        self.overflow = overflow or settings.overflow
        self.created = carried.created if carried else time.time()
        self.outbox = outbox or Outbox(settings.send_queue_events)
        self.closing = False
        self.directory = session_dir(settings.data_dir, self.id)
        self.metrics = metrics
        self.level = level
        self.store = store
        self.dialect = dialect
        self.language = language
        self.ledger = Ledger(self.id, engine.capabilities.name, sources, store)
        if carried is not None:
            carried.seed(self.ledger)
        self.labels = LiveLabels(self.ledger, self.outbox, settings.speaker_wait_ms)
        self.finalization: asyncio.Future[dict[str, Any]] | None = None  # set by finalize()
        engine_rate = engine.capabilities.sample_rate
        self.sources: dict[str, SourceState] = {}
        for index, name in enumerate(sources):
            priority = 0 if index == 0 else 1
            first = carried.next_item(name) if carried else 1
            stream = engine.open_stream(
                StreamOptions(
                    source=name,
                    priority=priority,
                    first_item=first,
                    turn_detection=turn_detection,
                    language=language,
                    prompt=prompt,
                )
            )
            limit_ms = settings.mic_queue_ms if priority == 0 else settings.system_queue_ms
            recording = Recording(self.directory / f"{name}.pcm", sample_rate, resume=carried is not None)
            state = SourceState(
                name=name,
                priority=priority,
                stream=stream,
                resampler=StreamResampler(sample_rate, engine_rate),
                queue=SourceQueue(name, rate=sample_rate, limit_samples=limit_ms * sample_rate // 1000),
                recording=recording,
            )
            if carried is not None:  # the recognizer goes through the recording from its last stored final on
                state.catch_up = min(carried.restart_ms(name) * sample_rate // 1000, recording.samples)
                state.fed_samples = recording.samples
            if speakers is not None:
                # A carried session's new node writes embeddings of its own (the old node may still be writing).
                emb = recording.path.with_suffix(f".{carried.epoch}.emb" if carried else ".emb")
                state.speakers = SourceSpeakers(speakers, name, self.labels.reader(recording), emb)
                state.speakers.live = level < LIVE_LABELS_UNTIL
            self.sources[name] = state
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self.degrade(level, announce=False)

    @property
    def source_names(self) -> list[str]:
        return list(self.sources)

    @property
    def finalized(self) -> bool:
        """Finalization has started (or finished)."""
        return self.finalization is not None

    def ms(self, samples: int) -> int:
        return int(samples * 1000 // self.sample_rate)

    def info(self) -> SessionInfo:
        s = self.settings
        limits = Limits(
            max_message_bytes=s.max_message_bytes,
            mic_queue_ms=s.mic_queue_ms,
            system_queue_ms=s.system_queue_ms,
            overflow=self.overflow,
            max_utterance_ms=s.recognizer.max_utterance_ms,
            max_sources=s.max_sources,
            resume_grace_ms=int(s.resume_grace_s * 1000),
        )
        caps = self.engine.capabilities
        status = self.engine.status()  # a chain names its fallback engines beside the primary
        fallback = next((name for name in status.breakers or {} if name != status.primary), None)
        features = Features(
            speakers=any(state.speakers is not None for state in self.sources.values()),
            fallback=fallback,
            store=store_kind_of(self.store),
        )
        return SessionInfo(
            self.id,
            tuple(self.sources),
            self.sample_rate,
            self.language,
            self.turn_detection,
            caps.model,
            caps.name,
            self.resume_token,
            limits,
            features,
        )

    def start(self) -> None:
        if self.store is not None and self.carried is None:
            caps = self.engine.capabilities
            record = SessionRecord(
                id=self.id,
                status="active",
                created_at=self.created,
                sources=tuple(self.sources),
                sample_rate=self.sample_rate,
                dialect=self.dialect,
                engine=caps.name,
                model=caps.model,
                language=self.language,
                handoff={
                    "token_sha256": token_hash(self.resume_token),
                    "turn_detection": self.turn_detection,
                    "overflow": self.overflow,
                },
            )
            sources = [
                SourceRecord(s.name, s.priority, self.sample_rate, recording=str(s.recording.path))
                for s in self.sources.values()
            ]
            # The store's writer runs writes in order, so this lands before any of the session's items.
            task = asyncio.create_task(self.ledger.write(self.store.store.create_session, record, sources))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        for state in self.sources.values():
            self._tasks.append(asyncio.create_task(self._feed(state), name=f"feed-{state.name}"))
            self._tasks.append(asyncio.create_task(self._forward(state), name=f"forward-{state.name}"))
        self._tasks.append(asyncio.create_task(self._report(), name="metrics"))

    # -- input (called by the dialect, in the order the client sent events) --------------------------------------

    async def append(self, source: str, pcm16: bytes) -> None:
        """Accept whole PCM16 samples for one source: record them, then queue them for live transcription."""
        state = self.sources[source]
        queue = state.queue
        offset = state.recording.append(pcm16)
        audio = pcm16_to_float(pcm16)
        n = len(audio)
        now = time.monotonic()
        state.arrivals.add(self.ms(offset + n), now)
        if self.metrics is not None:
            self.metrics.audio_received.labels(source_kind(state.priority)).inc(n / self.sample_rate)
        if not state.live:
            self._shed(state, offset, offset + n, now)
        else:
            if self.overflow == "block":
                while queue.would_block(n):  # wait while queued audio would pass the bound
                    state.space.clear()
                    await state.space.wait()
                queue.put(Chunk(offset, audio), now)
            else:
                dropped = queue.dropped_samples
                queue.put(Chunk(offset, audio), now)
                if queue.dropped_samples > dropped and self.metrics is not None:
                    self.metrics.audio_dropped.labels(source_kind(state.priority)).inc(
                        (queue.dropped_samples - dropped) / self.sample_rate
                    )
            state.changed.set()
        self._notice(state)

    async def commit(self, source: str, event_id: str | None) -> None:
        self._enqueue(source, Marker("commit", event_id))

    async def request(self, source: str, response_id: str | None) -> None:
        self._enqueue(source, Marker("request", response_id))

    async def configure(self, source: str, turns: TurnSettings) -> None:
        self._enqueue(source, Marker("configure", turns=turns))

    def received_ms(self, source: str) -> float:
        """Audio of ``source`` accepted so far (recorded), in ms."""
        return self.sources[source].recording.samples * 1000 / self.sample_rate

    def at_pause(self) -> bool:
        """No source is inside an utterance, nor holds more than 250 ms of audio not yet fed to its recognizer (a
        drain hands the session off here)."""
        backlog = self.sample_rate // 4
        return all(
            not s.onsets and (not s.live or s.recording.samples - s.fed_samples <= backlog)
            for s in self.sources.values()
        )

    def note_detached(self, at: float | None) -> None:
        """Its client dropped (at ``at``, unix s) or came back (None): recorded in the store, for other nodes."""
        if self.store is not None:
            task = asyncio.create_task(self.ledger.write(self.store.store.set_detached, self.id, at))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def stream_of(self, source: str) -> SpeechStream:
        """The recognizer of ``source``, for settings that change mid-session (prompt, agreement, replacements)."""
        return self.sources[source].stream

    def set_language(self, language: str) -> None:
        """Every source decodes in ``language`` from its next decode on (the dialects check it is supported)."""
        self.language = language
        for state in self.sources.values():
            state.stream.set_language(language)

    def set_live(self, source: str, live: bool) -> None:
        """Live transcription on or off for one source (off: recorded only, repaired at finalization)."""
        self.sources[source].live = live

    async def clear(self, source: str) -> None:
        """Drop the audio of ``source`` not yet transcribed, and its open utterance (the recording keeps it).

        The recognizer's clock moves over the dropped audio when the marker applies, so later item times stay
        those of the recording."""
        state = self.sources[source]
        state.queue.clear_audio()
        state.space.set()
        self._enqueue(source, Marker("clear", until=state.recording.samples))

    async def flush(self) -> None:
        """Flush every source: returns once every live final is in the outbox (no new audio is taken after it)."""
        self.closing = True
        loop = asyncio.get_running_loop()
        waits = []
        for state in self.sources.values():
            done: asyncio.Future[None] = loop.create_future()
            self._enqueue(state.name, Marker("flush", done=done), force=True)
            waits.append(self._flushed(state, done))
        await asyncio.gather(*waits)

    @staticmethod
    async def _flushed(state: SourceState, done: asyncio.Future[None]) -> None:
        """Wait for a source's flush, or for it to fail (a failed source has no more results to wait for)."""
        broken: asyncio.Future[Any] = asyncio.ensure_future(state.broken.wait())
        try:
            await asyncio.wait([done, broken], return_when=asyncio.FIRST_COMPLETED)
        finally:
            broken.cancel()

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()
        self.labels.cancel()
        for state in self.sources.values():
            if state.speakers is not None:
                state.speakers.cancel()
                state.speakers.close()
        for state in self.sources.values():
            await state.stream.aclose()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for state in self.sources.values():
            state.recording.close()

    # -- flow control ------------------------------------------------------------------------------------------------

    def _enqueue(self, source: str, marker: Marker, *, force: bool = False) -> None:
        state = self.sources[source]
        state.queue.put_marker(marker, force=force)  # MarkersFull past the bound: the dialect refuses the event
        state.changed.set()

    def _shed(self, state: SourceState, start: int, end: int, now: float) -> None:
        state.queue.shed(start, end, now)
        if self.metrics is not None:
            self.metrics.audio_dropped.labels(source_kind(state.priority)).inc((end - start) / self.sample_rate)

    def _notice(self, state: SourceState) -> None:
        """Tell the client when the backpressure level of a source changes (and keep telling while it sheds)."""
        event = state.queue.notice(time.monotonic())
        if event is not None:
            self.outbox.put_nowait(event)  # the control lane never refuses

    async def _feed(self, state: SourceState) -> None:
        queue = state.queue
        try:
            if state.catch_up is not None:  # a carried session: the recording from its restart point first
                await catch_up(state, state.catch_up, self.sample_rate, self.engine.capabilities.sample_rate)
            while True:
                while not len(queue):
                    state.changed.clear()
                    if queue.level == "normal":
                        await state.changed.wait()
                    else:  # re-check so the client hears when the level falls back
                        self._notice(state)
                        try:
                            await asyncio.wait_for(state.changed.wait(), LEVEL_RECHECK_S)
                        except TimeoutError:
                            pass
                entry = queue.pop()
                if isinstance(entry, Marker):
                    await self._apply(state, entry)
                    continue
                state.space.set()
                await self._push(state, entry)
                if queue.level != "normal":
                    self._notice(state)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("session %s: source %s feeder failed", self.id, state.name)
            await self._fail(state, "its audio feeder failed")

    async def _push(self, state: SourceState, chunk: Chunk) -> None:
        engine_rate = self.engine.capabilities.sample_rate
        if chunk.offset > state.fed_samples:
            # Audio before this chunk was shed: the recognizer's clock jumps over it.
            gap = chunk.offset - state.fed_samples
            await state.stream.skip(gap * engine_rate // self.sample_rate)
            state.resampler = StreamResampler(self.sample_rate, engine_rate)
        state.fed_samples = chunk.end
        await state.stream.push(state.resampler.process(chunk.audio))

    async def _apply(self, state: SourceState, marker: Marker) -> None:
        stream = state.stream
        if marker.kind == "commit":
            await stream.commit(marker.event_id)
        elif marker.kind == "request":
            await stream.request(marker.event_id)
        elif marker.kind == "configure" and marker.turns is not None:
            await stream.configure(marker.turns)
        elif marker.kind == "clear":
            engine_rate = self.engine.capabilities.sample_rate
            dropped = max(0, marker.until - state.fed_samples)  # queued audio the client cleared, never fed
            state.fed_samples = max(state.fed_samples, marker.until)
            state.resampler = StreamResampler(self.sample_rate, engine_rate)
            await stream.clear(dropped * engine_rate // self.sample_rate)
        elif marker.kind == "flush":
            tail = state.resampler.process(np.zeros(0, np.float32), last=True)
            if len(tail):
                await stream.push(tail)
            await stream.flush()
            # A request marker travels behind the last final through the stream's own event queue; the forwarder
            # turns it into an outbox barrier that the sender resolves once everything before it is sent.
            state.flush_done = marker.done
            await stream.request(_FLUSH_ID)

    async def _forward(self, state: SourceState) -> None:
        try:
            async for ev in state.stream.events():
                await self._route(state, ev)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("session %s: source %s result stream failed", self.id, state.name)
            await self._fail(state, "its recognizer failed")

    async def _route(self, state: SourceState, ev: Any) -> None:
        if isinstance(ev, RequestCompleted) and ev.response_id == _FLUSH_ID:
            if state.flush_done is not None:
                await self.outbox.put(Barrier(state.flush_done))
                state.flush_done = None
            return
        if isinstance(ev, TextDelta) or (isinstance(ev, TextFinal) and not ev.superseded):
            measure(state, ev, self.metrics)
        speaker = None
        turns: tuple[tuple[int, int, str], ...] = ()
        if isinstance(ev, SpeechStarted):
            state.onsets[ev.item] = ev.audio_start_ms if ev.held_from_ms is None else ev.held_from_ms
        elif isinstance(ev, SpeechStopped):
            onset = state.onsets.pop(ev.item, None)
            if state.speakers is not None and onset is not None and ev.reason != "gap":
                # The utterance's audio as the recognizer holds it (pre-roll included), labelled while its final
                # decodes (not while live labels are paused under load: then at finalization).
                state.speakers.submit(ev.item, onset, ev.audio_end_ms)
        elif isinstance(ev, TextFinal):
            speaker, turns = await self.labels.for_final(state.name, state.speakers, ev)
            self.ledger.record(state.name, ev, speaker)
            await self.ledger.persist(state.name, ev, speaker)  # before the client can see it
        elif isinstance(ev, ItemFailed):
            self.ledger.failed(state.name, ev)
        await self.outbox.put(SourceEvent(state.name, ev, speaker, turns))

    async def _fail(self, state: SourceState, what: str) -> None:
        """An internal error: the client hears it in its dialect's shape, and the connection closes (1011)."""
        message = f"source {state.name}: {what}; the session ends (its audio is kept in the recording)"
        state.broken.set()  # finalization goes on without this source's last live results
        await self.outbox.put(ErrorEvent("internal_error", message, source=state.name, server=True, fatal=True))

    # -- load: metrics and the degrade ladder ----------------------------------------------------------------------

    def degrade(self, level: Level, *, announce: bool = True) -> None:
        """Apply a step of the degrade ladder to this session (system sources stop live work at SHED_SYSTEM)."""
        self.level = level
        for state in self.sources.values():
            if state.priority > 0:
                state.live = level < Level.SHED_SYSTEM
            if state.speakers is not None:
                state.speakers.live = level < LIVE_LABELS_UNTIL
        if announce:
            self.outbox.put_nowait(Degraded(int(level), level.name.lower(), REASONS[level]))

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(METRICS_INTERVAL_S)
            if self.closing or self.outbox.detached:
                continue
            self.outbox.put_nowait(self.metrics_snapshot())  # replaces the previous tick if it was not sent yet

    def metrics_snapshot(self) -> SessionMetrics:
        return snapshot(self.id, self.sources, self.engine, self.level, self.sample_rate)

    def stats(self) -> dict[str, Any]:
        """Per-source figures for the summary's stats."""
        return source_stats(self.sources, self.ledger.books, self.sample_rate)
