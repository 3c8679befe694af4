"""A transcription session: several sources, each with its own bounded queue, recording and recognizer stream.

Dialect-agnostic: protocol adapters call ``append`` / ``commit`` / ``request`` / ``clear`` / ``finish`` and read
``outbox``, which carries ``SourceEvent`` (engine events tagged with their source), session-level typed events
(``Backpressure``) and ready wire events, in one order.

Flow control (docs/behaviour.md): every accepted sample is first appended to the source's recording. Each source's
queue is bounded in milliseconds (the first source, the microphone by default, has the larger bound). At the bound,
with ``overflow="shed"`` (default), the oldest queued audio is dropped from live transcription, its span noted;
the client sees ``input_audio_buffer.backpressure`` as the level rises and falls; at finalization the shed spans
are transcribed from the recording, so the stored transcript has no holes. With ``overflow="block"`` the session
stops taking audio instead and TCP pushes back on the client. Control markers (commit, response.create, clear,
flush) travel in the same queue, so they apply after the audio sent before them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from echopanel.audio.convert import StreamResampler, pcm16_to_float, resample
from echopanel.config import Settings
from echopanel.engines.base import SpeechEngine, SpeechStream, StreamOptions, TurnSettings
from echopanel.events import (
    ItemFailed,
    RequestCompleted,
    SourceEvent,
    SpeechStarted,
    SpeechStopped,
    TextDelta,
    TextFinal,
    Word,
    item_id,
)
from echopanel.flow.ladder import REASONS, Level
from echopanel.metrics import Arrivals, LatencyWindow, ServerMetrics, source_kind
from echopanel.server.resilience import engine_fields, redecode_items
from echopanel.session.finalize import SpeakerUpdated, finalize_session
from echopanel.session.outbox import Outbox
from echopanel.speakers.embedding import SAMPLE_RATE as SPEAKER_RATE
from echopanel.speakers.live import SourceSpeakers, SpeakerService
from echopanel.storage.recording import Recording, session_dir
from echopanel.storage.store import AsyncStore, SessionRecord, SourceRecord, StoredItem

log = logging.getLogger(__name__)

OutboxItem = Any  # SourceEvent | Backpressure | Barrier | dict (a ready wire event)

METRICS_INTERVAL_S = 1.0
BACKPRESSURE_REPEAT_S = 0.5  # while shedding, the client hears about it at most this often
SHEDDING_HOLD_S = 1.0  # "shedding" lasts this long after the last drop


# From this degrade level up, live speaker labels pause: embedding an utterance costs about as much as decoding it
# and holds the GIL in numpy's small steps, so under load it slowed the finals (bench/load.py, 8 sessions: mic
# final p95 1.79 s and 97 s of system audio shed with labels, 1.38 s and none without). Utterances closed meanwhile
# are labelled at finalization (speaker.updated).
LIVE_LABELS_UNTIL = Level.SLOW_PARTIALS


@dataclass(slots=True, frozen=True)
class Barrier:
    """Placed in the outbox; the sender resolves it once everything before it has been sent."""

    done: asyncio.Future[None]


@dataclass(slots=True, frozen=True)
class Degraded:
    level: int
    name: str
    reason: str


@dataclass(slots=True, frozen=True)
class SessionMetrics:
    payload: dict[str, Any]


@dataclass(slots=True, frozen=True)
class Backpressure:
    source: str
    level: str  # normal | high | shedding
    queued_ms: int
    dropped_ms: int
    limit_ms: int


_FLUSH_ID = "\x00flush"


@dataclass(slots=True, frozen=True)
class _Marker:
    kind: str  # "commit" | "request" | "flush" | "configure" | "clear"
    event_id: str | None = None
    done: asyncio.Future[None] | None = None
    turns: TurnSettings | None = None


@dataclass(slots=True, frozen=True)
class _Chunk:
    offset: int  # first sample, in the source's clock at the session rate
    audio: np.ndarray


@dataclass(slots=True)
class SourceState:
    name: str
    priority: int
    stream: SpeechStream
    resampler: StreamResampler
    limit_samples: int
    recording: Recording
    queue: deque[_Chunk | _Marker] = field(default_factory=deque)
    queued_samples: int = 0
    max_queued_samples: int = 0
    fed_samples: int = 0  # the next sample the recognizer expects
    dropped_samples: int = 0
    shed_spans: list[list[int]] = field(default_factory=list)  # [start, end) samples, merged
    live: bool = True  # False: recorded only (the degrade ladder's last step for this source)
    level: str = "normal"
    last_drop: float = 0.0
    last_notice: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    space: asyncio.Event = field(default_factory=asyncio.Event)
    finals: int = 0
    repaired: int = 0
    flush_done: asyncio.Future[None] | None = None
    arrivals: Arrivals = field(default_factory=Arrivals)
    first_partial: LatencyWindow = field(default_factory=LatencyWindow)
    final_latency: LatencyWindow = field(default_factory=LatencyWindow)
    compute_ms: float = 0.0
    last_text_item: int = 0
    superseded: list[tuple[int, int]] = field(default_factory=list)  # (start, end) samples of items cut by gaps
    # Resilience: items decoded by a fallback engine, and items no engine could decode: (item, start_ms, end_ms).
    # Both are decoded again from the recording at finalization (echopanel/server/resilience.py).
    fallback_items: list[tuple[int, int, int]] = field(default_factory=list)
    failed_items: list[tuple[int, int, int]] = field(default_factory=list)
    max_item: int = 0  # the highest item number given out so far (live or repaired)
    speakers: SourceSpeakers | None = None  # live speaker labels (None: off)
    onsets: dict[int, int] = field(default_factory=dict)  # open utterances: item -> speech onset ms


@dataclass(slots=True, frozen=True)
class TranscriptItem:
    item_id: str
    source: str
    text: str
    start_ms: int
    end_ms: int
    speaker: str | None
    repaired: bool = False
    number: int = 0  # the recognizer's item number within its source


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
        outbox: asyncio.Queue[OutboxItem] | Outbox | None = None,
        metrics: ServerMetrics | None = None,
        level: Level = Level.NORMAL,
        store: AsyncStore | None = None,
        speakers: SpeakerService | None = None,
        dialect: str = "native",
    ) -> None:
        self.id = "sess_" + uuid.uuid4().hex[:20]
        self.resume_token = secrets.token_urlsafe(24)
        self.engine = engine
        self.settings = settings
        self.sample_rate = sample_rate
        self.overflow = overflow or settings.overflow
        self.created = time.time()
        self.outbox: asyncio.Queue[OutboxItem] | Outbox = outbox or asyncio.Queue(settings.send_queue_events)
        self.transcript: list[TranscriptItem] = []
        self.closing = False
        self.directory = session_dir(settings.data_dir, self.id)
        self.metrics = metrics
        self.level = level
        self.store = store
        self.dialect = dialect
        self.language = language
        self._finalized: asyncio.Future[dict[str, Any]] | None = None
        self._late: set[asyncio.Task[None]] = set()
        engine_rate = engine.capabilities.sample_rate
        self.sources: dict[str, SourceState] = {}
        for index, name in enumerate(sources):
            priority = 0 if index == 0 else 1
            stream = engine.open_stream(
                StreamOptions(
                    source=name, priority=priority, turn_detection=turn_detection, language=language, prompt=prompt
                )
            )
            limit_ms = settings.mic_queue_ms if priority == 0 else settings.system_queue_ms
            self.sources[name] = SourceState(
                name=name,
                priority=priority,
                stream=stream,
                resampler=StreamResampler(sample_rate, engine_rate),
                limit_samples=limit_ms * sample_rate // 1000,
                recording=Recording(self.directory / f"{name}.pcm", sample_rate),
            )
            if speakers is not None:
                labels = SourceSpeakers(speakers, name, self._audio_reader(self.sources[name]))
                labels.live = level < LIVE_LABELS_UNTIL
                self.sources[name].speakers = labels
        self._tasks: list[asyncio.Task[None]] = []
        self.degrade(level, announce=False)

    @property
    def source_names(self) -> list[str]:
        return list(self.sources)

    def start(self) -> None:
        if self.store is not None:
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
            )
            sources = [
                SourceRecord(s.name, s.priority, self.sample_rate, recording=str(s.recording.path))
                for s in self.sources.values()
            ]
            # The store's writer runs writes in order, so this lands before any of the session's items.
            task = asyncio.create_task(self._store_write(self.store.store.create_session, record, sources))
            self._late.add(task)
            task.add_done_callback(self._late.discard)
        for state in self.sources.values():
            self._tasks.append(asyncio.create_task(self._feed(state), name=f"feed-{state.name}"))
            self._tasks.append(asyncio.create_task(self._forward(state), name=f"forward-{state.name}"))
        self._tasks.append(asyncio.create_task(self._report(), name="metrics"))

    def ms(self, samples: int) -> int:
        return int(samples * 1000 // self.sample_rate)

    # -- input (called by the dialect, in the order the client sent events) --------------------------------------

    async def append(self, source: str, pcm16: bytes) -> None:
        """Accept whole PCM16 samples for one source: record them, then queue them for live transcription."""
        state = self.sources[source]
        offset = state.recording.append(pcm16)
        audio = pcm16_to_float(pcm16)
        n = len(audio)
        state.arrivals.add(self.ms(offset + n), time.monotonic())
        if self.metrics is not None:
            self.metrics.audio_received.labels(source_kind(state.priority)).inc(n / self.sample_rate)
        if not state.live:
            self._shed(state, offset, offset + n)
            self._notice(state)
            return
        if self.overflow == "block":
            # Wait while queued audio would pass the bound (one chunk larger than the bound still passes alone).
            while state.queued_samples > 0 and state.queued_samples + n > state.limit_samples:
                state.space.clear()
                await state.space.wait()
        else:
            while state.queued_samples > 0 and state.queued_samples + n > state.limit_samples:
                self._drop_oldest(state)
        state.queue.append(_Chunk(offset, audio))
        state.queued_samples += n
        state.max_queued_samples = max(state.max_queued_samples, state.queued_samples)
        state.changed.set()
        self._notice(state)

    async def commit(self, source: str, event_id: str | None) -> None:
        self._enqueue(source, _Marker("commit", event_id))

    async def request(self, source: str, response_id: str | None) -> None:
        self._enqueue(source, _Marker("request", response_id))

    async def configure(self, source: str, turns: TurnSettings) -> None:
        self._enqueue(source, _Marker("configure", turns=turns))

    def set_prompt(self, source: str, prompt: str) -> None:
        self.sources[source].stream.set_prompt(prompt)

    def set_live(self, source: str, live: bool) -> None:
        """Live transcription on or off for one source (off: recorded only, repaired at finalization)."""
        self.sources[source].live = live

    async def clear(self, source: str) -> None:
        """Drop the audio of ``source`` not yet transcribed, and its open utterance (the recording keeps it)."""
        state = self.sources[source]
        state.queue = deque(e for e in state.queue if isinstance(e, _Marker))
        state.queued_samples = 0
        state.fed_samples = state.recording.samples
        state.space.set()
        self._enqueue(source, _Marker("clear"))

    async def finish(self) -> None:
        """Flush every source (every live final in the outbox), then repair shed spans from the recordings."""
        self.closing = True
        loop = asyncio.get_running_loop()
        waits = []
        for state in self.sources.values():
            done: asyncio.Future[None] = loop.create_future()
            self._enqueue(state.name, _Marker("flush", done=done))
            waits.append(done)
        await asyncio.gather(*waits)
        for state in self.sources.values():
            if state.shed_spans:
                await self._repair(state)
        for state in self.sources.values():
            if state.fallback_items or state.failed_items:
                await redecode_items(self, state)  # fallback engine's items again with the primary; failed ones

    @property
    def finalized(self) -> bool:
        """``finalize`` has started (or finished)."""
        return self._finalized is not None

    async def finalize(self, status: str, event_id: str | None = None) -> dict[str, Any]:
        """End the session: ``finish`` (flush every source, repair shed spans), settle speakers (``speaker.updated``
        for changed labels), build the summary, persist it with ``status`` ("completed" | "interrupted"), then put
        the ``session.summary`` event in the outbox and return it. Called twice, the second call waits for the
        first's result. See echopanel/session/finalize.py."""
        if status not in ("completed", "interrupted"):
            raise ValueError(f"status must be 'completed' or 'interrupted', not {status!r}")
        if self._finalized is None:
            self._finalized = asyncio.get_running_loop().create_future()
            try:
                payload = await finalize_session(self, status, event_id)
            except BaseException as exc:
                self._finalized.set_exception(exc)
                self._finalized.exception()  # retrieved: the caller gets it raised
                raise
            self._finalized.set_result(payload)
        return await asyncio.shield(self._finalized)

    async def aclose(self) -> None:
        for task in list(self._late):
            task.cancel()
        for state in self.sources.values():
            if state.speakers is not None:
                state.speakers.cancel()
        for state in self.sources.values():
            await state.stream.aclose()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for state in self.sources.values():
            state.recording.close()

    def stats(self) -> dict[str, Any]:
        return {
            name: {
                "received_ms": self.ms(s.recording.samples),
                "queued_ms": self.ms(s.queued_samples),
                "max_queued_ms": self.ms(s.max_queued_samples),
                "queue_limit_ms": self.ms(s.limit_samples),
                "processed_ms": round(s.stream.audio_ms),
                "dropped_ms": self.ms(s.dropped_samples),
                "shed_spans": [[self.ms(a), self.ms(b)] for a, b in s.shed_spans[:100]],
                "repaired_items": s.repaired,
                "finals": s.finals,
                "live": s.live,
            }
            for name, s in self.sources.items()
        }

    # -- flow control ------------------------------------------------------------------------------------------------

    def _drop_oldest(self, state: SourceState) -> None:
        for i, entry in enumerate(state.queue):
            if isinstance(entry, _Chunk):
                del state.queue[i]
                state.queued_samples -= len(entry.audio)
                self._shed(state, entry.offset, entry.offset + len(entry.audio))
                return
        state.queued_samples = 0

    def _shed(self, state: SourceState, start: int, end: int) -> None:
        state.dropped_samples += end - start
        if self.metrics is not None:
            self.metrics.audio_dropped.labels(source_kind(state.priority)).inc((end - start) / self.sample_rate)
        state.last_drop = time.monotonic()
        spans = state.shed_spans
        if spans and spans[-1][1] >= start:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])

    def _notice(self, state: SourceState) -> None:
        """Tell the client when the backpressure level of a source changes (and keep telling while it sheds)."""
        now = time.monotonic()
        if now - state.last_drop < SHEDDING_HOLD_S and state.dropped_samples:
            level = "shedding"
        elif state.queued_samples * 2 >= state.limit_samples:
            level = "high"
        else:
            level = "normal"
        if level == state.level and not (level == "shedding" and now - state.last_notice >= BACKPRESSURE_REPEAT_S):
            return
        state.level = level
        state.last_notice = now
        event = Backpressure(
            state.name,
            level,
            self.ms(state.queued_samples),
            self.ms(state.dropped_samples),
            self.ms(state.limit_samples),
        )
        try:
            self.outbox.put_nowait(event)
        except asyncio.QueueFull:
            log.warning("outbox full; backpressure notice for %s skipped", state.name)

    # -- internals -------------------------------------------------------------------------------------------------

    def _enqueue(self, source: str, marker: _Marker) -> None:
        state = self.sources[source]
        state.queue.append(marker)
        state.changed.set()

    async def _feed(self, state: SourceState) -> None:
        stream = state.stream
        engine_rate = self.engine.capabilities.sample_rate
        try:
            while True:
                while not state.queue:
                    state.changed.clear()
                    if state.level == "normal":
                        await state.changed.wait()
                    else:  # re-check so the client hears when the level falls back
                        self._notice(state)
                        try:
                            await asyncio.wait_for(state.changed.wait(), 0.25)
                        except TimeoutError:
                            pass
                entry = state.queue.popleft()
                if isinstance(entry, _Marker):
                    await self._apply(state, entry)
                    continue
                state.queued_samples = max(0, state.queued_samples - len(entry.audio)) if state.queue else 0
                state.space.set()
                if entry.offset > state.fed_samples:
                    # Audio before this chunk was shed: the recognizer's clock jumps over it.
                    gap = entry.offset - state.fed_samples
                    await stream.skip(gap * engine_rate // self.sample_rate)
                    state.resampler = StreamResampler(self.sample_rate, engine_rate)
                state.fed_samples = entry.offset + len(entry.audio)
                await stream.push(state.resampler.process(entry.audio))
                if state.level != "normal":
                    self._notice(state)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("source %s feeder failed", state.name)
            await self.outbox.put(
                {"type": "error", "code": "internal_error", "message": f"source {state.name} failed", "fatal": True}
            )

    async def _apply(self, state: SourceState, marker: _Marker) -> None:
        if marker.kind == "commit":
            await state.stream.commit(marker.event_id)
        elif marker.kind == "request":
            await state.stream.request(marker.event_id)
        elif marker.kind == "configure" and marker.turns is not None:
            await state.stream.configure(marker.turns)
        elif marker.kind == "clear":
            await state.stream.clear()
        elif marker.kind == "flush":
            tail = state.resampler.process(np.zeros(0, np.float32), last=True)
            if len(tail):
                await state.stream.push(tail)
            await state.stream.flush()
            # A request marker travels behind the last final through the stream's own event queue; the forwarder
            # turns it into an outbox barrier that the sender resolves once everything before it is sent.
            state.flush_done = marker.done
            await state.stream.request(_FLUSH_ID)

    async def _forward(self, state: SourceState) -> None:
        async for ev in state.stream.events():
            if isinstance(ev, RequestCompleted) and ev.response_id == _FLUSH_ID:
                if state.flush_done is not None:
                    await self.outbox.put(Barrier(state.flush_done))
                    state.flush_done = None
                continue
            if isinstance(ev, TextDelta) or (isinstance(ev, TextFinal) and not ev.superseded):
                self._measure(state, ev)
            speaker = None
            turns: tuple[tuple[int, int, str], ...] = ()
            if isinstance(ev, SpeechStarted):
                state.onsets[ev.item] = ev.audio_start_ms if ev.held_from_ms is None else ev.held_from_ms
            elif isinstance(ev, SpeechStopped):
                onset = state.onsets.pop(ev.item, None)
                if state.speakers is not None and onset is not None and ev.reason != "gap":
                    # The utterance's audio as the recognizer holds it (pre-roll included), labelled while its
                    # final decodes (not while live labels are paused under load: then at finalization).
                    state.speakers.submit(ev.item, onset, ev.audio_end_ms)
            elif isinstance(ev, TextFinal):
                speaker = await self._live_speaker(state, ev)
                if speaker is not None and state.speakers is not None:
                    turns = state.speakers.live_turns.get(ev.item, ())
                self._record_final(state, ev, speaker)
                await self._persist(state, ev, speaker)  # before the client can see it
            elif isinstance(ev, ItemFailed):
                state.max_item = max(state.max_item, ev.item)
                if ev.start_ms is not None and ev.end_ms is not None:
                    state.failed_items.append((ev.item, ev.start_ms, ev.end_ms))  # its audio is in the recording
            await self.outbox.put(SourceEvent(state.name, ev, speaker, turns))

    # -- speakers and the store ------------------------------------------------------------------------------------

    def _audio_reader(self, state: SourceState) -> Callable[[int, int], np.ndarray]:
        """Reads [start_ms, end_ms) of the source's recording as float32 at the speaker encoder's rate."""
        rate = self.sample_rate

        def read(start_ms: int, end_ms: int) -> np.ndarray:
            pcm = state.recording.read(start_ms * rate // 1000, end_ms * rate // 1000)
            return resample(pcm16_to_float(pcm), rate, SPEAKER_RATE)

        return read

    async def _live_speaker(self, state: SourceState, ev: TextFinal) -> str | None:
        if state.speakers is None or ev.superseded or ev.repaired or not ev.text:
            return None
        # While live labels are paused under load, a final never waits for one still running from before: it would
        # wait the full bound (labelling runs at low priority and is starved first). The label follows instead.
        wait_s = self.settings.speaker_wait_ms / 1000 if state.speakers.live else 0.0
        label = await state.speakers.label(ev.item, wait_s)
        job = state.speakers.job(ev.item)
        if label is None and job is not None and not job.done():
            # Not ready in time: the final goes out now; the label follows as speaker.updated when it lands.
            iid = item_id(state.name, ev.item)
            task = asyncio.create_task(self._late_label(state, iid, job))
            self._late.add(task)
            task.add_done_callback(self._late.discard)
        return label

    async def _late_label(self, state: SourceState, iid: str, job: asyncio.Task[str | None]) -> None:
        await asyncio.wait([job])
        if job.cancelled() or job.exception() is not None or job.result() is None or self.finalized:
            return
        label = job.result()
        self.relabel(iid, label)
        if self.store is not None:
            await self._store_write(self.store.store.set_speakers, self.id, {iid: label})

    def relabel(self, iid: str, label: str | None) -> bool:
        """Give a transcript item a new speaker label and tell the client (``speaker.updated``); False if unchanged."""
        for n, t in enumerate(self.transcript):
            if t.item_id == iid:
                if t.speaker == label:
                    return False
                self.transcript[n] = replace(t, speaker=label)
                try:
                    self.outbox.put_nowait(SpeakerUpdated(iid, t.source, label, t.speaker))
                except asyncio.QueueFull:
                    log.warning("outbox full; speaker.updated for %s skipped (the summary has it)", iid)
                return True
        return False

    async def _persist(self, state: SourceState, ev: TextFinal, speaker: str | None) -> None:
        if self.store is None or not ev.text:
            return
        item = StoredItem(
            self.id,
            item_id(state.name, ev.item),
            state.name,
            ev.text,
            ev.start_ms,
            ev.end_ms,
            speaker,
            tuple(
                {"word": w.text, "start_ms": w.start_ms, "end_ms": w.end_ms, "confidence": w.confidence}
                for w in ev.words
            ),
            ev.engine,
            ev.repaired,
            ev.superseded,
            ev.compute_ms,
        )
        await self._store_write(self.store.store.add_item, item)

    async def _store_write(self, fn: Callable[..., Any], *args: Any) -> None:
        """A store write that never takes the session down: a failing disk is logged, the session goes on."""
        assert self.store is not None
        try:
            await self.store.write(fn, *args)
        except Exception:
            log.exception("session %s: store write failed", self.id)

    def _measure(self, state: SourceState, ev: TextDelta | TextFinal) -> None:
        now = time.monotonic()
        kind = source_kind(state.priority)
        if ev.item != state.last_text_item and (ev.text if isinstance(ev, TextFinal) else ev.delta or ev.tentative):
            state.last_text_item = ev.item
            onset_at = state.arrivals.time_of(ev.start_ms)
            if onset_at is not None:
                state.first_partial.add(now - onset_at)
                if self.metrics is not None:
                    self.metrics.first_partial.labels(kind).observe(now - onset_at)
        if isinstance(ev, TextFinal) and not (ev.repaired or ev.superseded):
            state.compute_ms += ev.compute_ms
            if self.metrics is not None:
                self.metrics.compute.inc(ev.compute_ms / 1000)
            end_at = state.arrivals.time_of(ev.speech_end_ms if ev.speech_end_ms is not None else ev.end_ms)
            if end_at is not None:
                state.final_latency.add(now - end_at)
                if self.metrics is not None:
                    self.metrics.final.labels(kind).observe(now - end_at)

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
            try:
                self.outbox.put_nowait(Degraded(int(level), level.name.lower(), REASONS[level]))
            except asyncio.QueueFull:
                log.warning("outbox full; degrade notice skipped")

    def metrics_snapshot(self) -> dict[str, Any]:
        policy = self.engine.policy
        sources = {}
        for name, s in self.sources.items():
            processed_ms = s.stream.audio_ms
            partials = s.live and s.priority <= policy.partial_max_priority
            sources[name] = {
                "received_ms": self.ms(s.recording.samples),
                "queued_ms": self.ms(s.queued_samples),
                "processed_ms": round(processed_ms),
                "dropped_ms": self.ms(s.dropped_samples),
                "rtf": round(s.compute_ms / processed_ms, 3) if processed_ms else None,
                "first_partial_latency_ms": s.first_partial.summary_ms(),
                "final_latency_ms": s.final_latency.summary_ms(),
                "partial_interval_ms": policy.partial_interval_ms if partials else None,
                "live": s.live,
                "backpressure": s.level,
            }
        return {
            "session_id": self.id,
            "sources": sources,
            "degrade_level": int(self.level),
            "degrade": self.level.name.lower(),
            **engine_fields(self.engine),  # engine, breaker, breakers: the fallback chain's state
        }

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(METRICS_INTERVAL_S)
            if self.closing or getattr(self.outbox, "detached", False):
                continue
            try:
                self.outbox.put_nowait(SessionMetrics(self.metrics_snapshot()))
            except asyncio.QueueFull:
                pass  # a slow client misses a metrics tick rather than stalling anything

    def _record_final(self, state: SourceState, ev: TextFinal, speaker: str | None = None) -> None:
        state.max_item = max(state.max_item, ev.item)
        if not (ev.superseded or ev.repaired) and ev.engine != self.engine.capabilities.name:
            state.fallback_items.append((ev.item, ev.start_ms, ev.end_ms))
        if ev.superseded:
            rate = self.sample_rate
            state.superseded.append((ev.start_ms * rate // 1000, ev.end_ms * rate // 1000))
            return
        state.finals += 1
        if ev.repaired:
            state.repaired += 1
        if ev.text:
            self.transcript.append(
                TranscriptItem(
                    item_id(state.name, ev.item),
                    state.name,
                    ev.text,
                    ev.start_ms,
                    ev.end_ms,
                    speaker,
                    ev.repaired,
                    ev.item,
                )
            )

    async def _repair(self, state: SourceState) -> None:
        """Transcribe the spans shed under load from the recording, with finals only, and send them as repaired."""
        engine_rate = self.engine.capabilities.sample_rate
        next_item = state.stream.next_item
        rate = self.sample_rate
        live = [
            (t.start_ms * rate // 1000, t.end_ms * rate // 1000)
            for t in self.transcript
            if t.source == state.name and not t.repaired
        ]
        spans = _widen(state.shed_spans, state.superseded, live, tolerance=rate // 5, bridge=rate * 3 // 2)
        for start, end in spans:
            pcm = state.recording.read(start, end)
            if not pcm:
                continue
            audio = resample(pcm16_to_float(pcm), self.sample_rate, engine_rate)
            audio = np.concatenate([audio, np.zeros(engine_rate // 2, np.float32)])  # let the last turn end
            stream = self.engine.open_stream(
                StreamOptions(source=state.name, priority=state.priority, first_item=next_item, partials=False)
            )
            offset_ms = self.ms(start)
            events: list[TextFinal | ItemFailed] = []

            async def collect(s: SpeechStream = stream, out: list[TextFinal | ItemFailed] = events) -> None:
                async for ev in s.events():
                    if isinstance(ev, TextFinal | ItemFailed):
                        out.append(ev)

            reader = asyncio.create_task(collect())
            step = engine_rate
            for i in range(0, len(audio), step):
                await stream.push(audio[i : i + step])
            await stream.flush()
            next_item = stream.next_item
            await stream.aclose()
            await reader
            for ev in events:
                if isinstance(ev, TextFinal):
                    ev = _shift(ev, offset_ms)
                    self._record_final(state, ev)
                    await self._persist(state, ev, None)
                await self.outbox.put(SourceEvent(state.name, ev))
            log.info("session %s: repaired %d ms of %s from the recording", self.id, self.ms(end - start), state.name)


def _widen(
    spans: list[list[int]], cut: list[tuple[int, int]], live: list[tuple[int, int]], tolerance: int, bridge: int
) -> list[tuple[int, int]]:
    """Shed spans grown to whole utterances, so repair starts and ends at utterance edges.

    A span grows over each utterance it cut (``cut``: superseded live items). Two spans are joined when the kept
    audio between them is shorter than ``bridge`` and no live final was delivered there (``live``): such short
    fragments were never transcribed live on their own, and they are in the recording too.
    """
    grown = sorted([a, b] for a, b in spans)
    for s, e in cut:
        for span in grown:
            if s <= span[1] + tolerance and e >= span[0] - tolerance:  # the utterance touches this gap
                span[0], span[1] = min(span[0], s), max(span[1], e)
    grown.sort()
    merged: list[list[int]] = []
    for a, b in grown:
        if merged:
            prev_end = merged[-1][1]
            between_live = any(ls < a and le > prev_end for ls, le in live)
            if a <= prev_end or (a - prev_end < bridge and not between_live):
                merged[-1][1] = max(prev_end, b)
                continue
        merged.append([a, b])
    return [(a, b) for a, b in merged]


def _shift(ev: TextFinal, offset_ms: int) -> TextFinal:
    words = tuple(Word(w.text, w.start_ms + offset_ms, w.end_ms + offset_ms, w.confidence) for w in ev.words)
    return replace(ev, start_ms=ev.start_ms + offset_ms, end_ms=ev.end_ms + offset_ms, words=words, repaired=True)
