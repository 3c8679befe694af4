"""finalize() on a real Session and a real SQLite store, with a scripted engine (a fake that subclasses the
engine interface) and, for speakers, the real encoder on real speech read back from the session's recording."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from echopanel.config import Settings
from echopanel.engines.base import (
    DecodePolicy,
    EngineCapabilities,
    SpeechEngine,
    SpeechStream,
    StreamOptions,
    TurnSettings,
)
from echopanel.events import (
    EngineEvent,
    RequestCompleted,
    SessionSummary,
    SourceEvent,
    SpeakerUpdated,
    SpeechStarted,
    SpeechStopped,
    TextFinal,
    Word,
    item_id,
)
from echopanel.flow.ladder import Level
from echopanel.session.finalize import finalize
from echopanel.session.outbox import Barrier
from echopanel.session.session import Session
from echopanel.speakers.live import SpeakerService
from echopanel.storage.sqlite import SqliteStore
from echopanel.storage.store import AsyncStore

from support import PHONE

Script = list[tuple[int, int, str]]  # (start_ms, end_ms, text) per utterance


class ScriptedStream(SpeechStream):
    """Emits the scripted utterances whose end the pushed audio has reached, like a recognizer would."""

    def __init__(self, script: Script, options: StreamOptions, decode_s: float = 0.05) -> None:
        self.script = list(script)
        self.options = options
        self.decode_s = decode_s
        self.samples = 0
        self.item = options.first_item
        self._events: asyncio.Queue[EngineEvent | None] = asyncio.Queue()

    @property
    def audio_ms(self) -> float:
        return self.samples / 16

    @property
    def next_item(self) -> int:
        return self.item

    async def push(self, pcm: np.ndarray) -> None:
        self.samples += len(pcm)
        await self._emit_due()

    async def _emit_due(self, everything: bool = False) -> None:
        while self.script and (everything or self.script[0][1] <= self.samples // 16):
            start, end, text = self.script.pop(0)
            n = self.item
            self.item += 1
            await self._events.put(SpeechStarted(n, start))
            await self._events.put(SpeechStopped(n, end))
            await asyncio.sleep(self.decode_s)  # the "decode"
            words = tuple(Word(w, start, end, 0.9) for w in text.split()[:1])
            await self._events.put(TextFinal(n, text, start, end, words, "scripted", 1.0))

    async def skip(self, samples: int) -> None:
        self.samples += samples

    async def commit(self, event_id: str | None = None) -> None:
        pass

    async def request(self, response_id: str | None) -> None:
        await self._events.put(RequestCompleted(response_id))

    async def configure(self, turns: TurnSettings) -> None:
        pass

    async def clear(self, skip: int = 0) -> None:
        pass

    async def flush(self) -> None:
        await self._emit_due(everything=True)

    async def aclose(self) -> None:
        await self._events.put(None)

    async def events(self) -> AsyncIterator[EngineEvent]:
        while (ev := await self._events.get()) is not None:
            yield ev


class ScriptedEngine(SpeechEngine):
    def __init__(self, scripts: dict[str, Script], decode_s: float = 0.05) -> None:
        self.capabilities = EngineCapabilities(name="scripted", model="none")
        self.policy = DecodePolicy()
        self.scripts = scripts
        self.decode_s = decode_s

    def open_stream(self, options: StreamOptions) -> SpeechStream:
        return ScriptedStream(self.scripts.get(options.source, []), options, self.decode_s)


def settings(tmp: Path) -> Settings:
    return Settings(data_dir=tmp)


class Client:
    """Takes the session's outbox like the connection's sender does (resolving barriers), keeping every item."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.items: list[Any] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            item = await self.session.outbox.get()
            if isinstance(item, Barrier):
                item.done.set_result(None)
            else:
                self.items.append(item)

    async def stop(self) -> list[Any]:
        await asyncio.sleep(0)
        self.task.cancel()
        return self.items


def pcm(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


SCRIPT: Script = [(500, 2000, "We decided to ship on Friday."), (2500, 4000, "I will send the notes by Monday.")]


async def test_finalize_persists_and_summarises(tmp_path: Path) -> None:
    store = AsyncStore(SqliteStore(tmp_path / "db.sqlite"))
    engine = ScriptedEngine({"mic": SCRIPT})
    session = Session(engine=engine, settings=settings(tmp_path), sources=["mic"], sample_rate=16000, store=store)
    session.start()
    client = Client(session)
    try:
        await session.append("mic", b"\x00\x00" * 16000 * 5)
        payload = await finalize(session, "completed", "evt_9")
        again = await finalize(session, "completed")  # idempotent: the same result, nothing sent twice
        assert again is payload
        events = await client.stop()
        summaries = [e for e in events if isinstance(e, SessionSummary)]
        assert [e.document for e in summaries] == [payload] and summaries[0].event_id == "evt_9"
        finals = [e for e in events if isinstance(e, SourceEvent) and isinstance(e.event, TextFinal)]
        assert events.index(summaries[0]) > max(events.index(f) for f in finals)  # the summary comes last
        assert [t["text"] for t in payload["transcript"]] == [text for _, _, text in SCRIPT]
        assert payload["status"] == "completed"
        assert [d["item_id"] for d in payload["decisions"]] == ["item_mic_00001"]
        assert [a["item_id"] for a in payload["action_items"]] == ["item_mic_00002"]
        assert payload["action_items"][0]["due"] == "by Monday"
        record = store.store.get_session(session.id)
        assert record is not None and record.status == "completed" and record.ended_at is not None
        assert [i.text for i in store.store.items(session.id)] == [text for _, _, text in SCRIPT]
        assert store.store.summary(session.id) == {k: v for k, v in payload.items() if k != "event_id"}
        with pytest.raises(ValueError):
            await finalize(session, "done")
    finally:
        await session.aclose()
        store.close()


@pytest.fixture(scope="module")
def speakers() -> SpeakerService:
    service = SpeakerService.load()  # the packaged weights: missing ones fail here, never skip
    assert service is not None
    return service


def phone_turns() -> Script:
    """Single-speaker stretches of the phone call (speakers from its RTTM)."""
    return [
        (10780, 14180, "Diane one."),
        (14700, 17770, "Sheila one."),
        (18600, 21470, "Diane two."),
        (21930, 24000, "Sheila two."),
        (24060, 27850, "Sheila three."),
        (28500, 29990, "Diane three."),
    ]


def phone_session(
    tmp_path: Path,
    speakers: SpeakerService,
    source: str,
    *,
    sources: list[str] | None = None,
    store: AsyncStore | None = None,
    level: Level = Level.NORMAL,
    decode_s: float = 0.05,
    **overrides: Any,
) -> Session:
    """A started session whose ``source`` gets the phone call's scripted single-speaker stretches."""
    session = Session(
        engine=ScriptedEngine({source: phone_turns()}, decode_s),
        settings=settings(tmp_path).replace(**overrides),
        sources=sources or [source],
        sample_rate=sf.info(str(PHONE / "sample.wav")).samplerate,
        overflow="block",  # nothing shed (a repair would replay the script)
        store=store,
        speakers=speakers,
        level=level,
    )
    session.start()
    return session


async def stream_phone(session: Session, source: str, before: Callable[[int], Awaitable[None]] | None = None) -> None:
    """Append the phone call to ``source`` in 100 ms chunks; ``before(ms)`` runs before each chunk."""
    audio, rate = sf.read(str(PHONE / "sample.wav"), dtype="float32")
    data = pcm(audio)
    for i in range(0, len(data), 3200):
        if before is not None:
            await before(i // 2 * 1000 // rate)
        await session.append(source, data[i : i + 3200])


async def test_live_labels_from_the_recording_and_final_relabel(tmp_path: Path, speakers: SpeakerService) -> None:
    store = AsyncStore(SqliteStore(tmp_path / "db.sqlite"))
    session = phone_session(tmp_path, speakers, "system", sources=["mic", "system"], store=store, speaker_wait_ms=5000)
    client = Client(session)
    try:
        await stream_phone(session, "system")
        payload = await finalize(session, "completed")
        events = await client.stop()
        finals = [e for e in events if isinstance(e, SourceEvent) and isinstance(e.event, TextFinal)]
        live = {item_id(f.source, f.event.item): f.speaker for f in finals}
        assert len(live) == len(phone_turns())
        assert all(label is not None and label.startswith("system:S") for label in live.values()), str(live)
        final = {t["text"]: t["speaker"] for t in payload["transcript"]}
        # The two voices get two labels, each stretch the label of its true speaker.
        diane = {final[t] for t in final if t.startswith("Diane")}
        sheila = {final[t] for t in final if t.startswith("Sheila")}
        assert len(diane) == 1 and len(sheila) == 1 and diane != sheila, final
        updates = [e for e in events if isinstance(e, SpeakerUpdated)]
        for u in updates:
            assert u.previous == live[u.item_id]  # what the client had
        changed = {u.item_id: u.speaker for u in updates}
        stored = {i.item_id: i.speaker for i in store.store.items(session.id)}
        for t in payload["transcript"]:
            assert stored[t["item_id"]] == t["speaker"]
            if t["item_id"] in changed:
                assert changed[t["item_id"]] == t["speaker"]
        talk = {s["speaker"]: s["talk_ms"] for s in payload["speakers"]}
        assert set(talk) == diane | sheila and all(ms > 1000 for ms in talk.values())
        assert speakers.costs, "labelling cost is measured"
    finally:
        await session.aclose()
        store.close()


async def test_a_label_not_ready_in_time_follows_as_speaker_updated(tmp_path: Path, speakers: SpeakerService) -> None:
    store = AsyncStore(SqliteStore(tmp_path / "db.sqlite"))
    # Finals decoded at once (no scripted decode time): a label can never be ready by then, whatever the machine's load.
    session = phone_session(tmp_path, speakers, "mic", store=store, speaker_wait_ms=0, decode_s=0.0)
    client = Client(session)
    try:
        await stream_phone(session, "mic")
        payload = await finalize(session, "completed")
        events = await client.stop()
        finals = {
            item_id(e.source, e.event.item): e.speaker
            for e in events
            if isinstance(e, SourceEvent) and isinstance(e.event, TextFinal)
        }
        late = [e for e in events if isinstance(e, SpeakerUpdated) and e.previous is None]
        assert late and all(finals[u.item_id] is None for u in late)  # sent without a label, the label followed
        assert session.sources["mic"].speakers is not None and session.sources["mic"].speakers.late >= len(late)
        stored = {i.item_id: i.speaker for i in store.store.items(session.id)}
        assert all(stored[t["item_id"]] == t["speaker"] is not None for t in payload["transcript"])
        assert payload["stats"]["speaker_labels"]["mic"]["late"] >= len(late)
    finally:
        await session.aclose()
        store.close()


async def test_under_load_live_labels_pause_and_finalization_labels_everything(
    tmp_path: Path, speakers: SpeakerService
) -> None:
    """From degrade level 1 no utterance is labelled live (finals carry speaker null, nothing is embedded while the
    session runs); at finalization every item gets its label, sent as speaker.updated."""
    store = AsyncStore(SqliteStore(tmp_path / "db.sqlite"))
    session = phone_session(tmp_path, speakers, "system", store=store, level=Level.SLOW_PARTIALS)
    client = Client(session)
    try:
        await stream_phone(session, "system")
        tracker = session.sources["system"].speakers
        assert tracker is not None
        await asyncio.sleep(0.2)  # the last scripted final lands
        assert tracker.stats()["labelled"] == 0 and tracker.paused == len(phone_turns())
        payload = await finalize(session, "completed")
        events = await client.stop()
        finals = [e for e in events if isinstance(e, SourceEvent) and isinstance(e.event, TextFinal)]
        assert len(finals) == len(phone_turns()) and all(f.speaker is None for f in finals)
        updates = {e.item_id: e.speaker for e in events if isinstance(e, SpeakerUpdated)}
        assert {t["item_id"]: t["speaker"] for t in payload["transcript"]} == updates
        assert all(label is not None and label.startswith("system:S") for label in updates.values())
        assert payload["stats"]["speaker_labels"]["system"]["paused"] == len(phone_turns())
        diane = {t["speaker"] for t in payload["transcript"] if t["text"].startswith("Diane")}
        sheila = {t["speaker"] for t in payload["transcript"] if t["text"].startswith("Sheila")}
        assert len(diane) == 1 and len(sheila) == 1 and diane != sheila  # labelled as well as live ones would be
    finally:
        await session.aclose()
        store.close()


async def test_labels_pause_when_load_rises_and_resume_when_it_falls(tmp_path: Path, speakers: SpeakerService) -> None:
    turns = phone_turns()
    session = phone_session(tmp_path, speakers, "system", speaker_wait_ms=5000)
    client = Client(session)
    third = [turns[len(turns) // 3][0], turns[2 * len(turns) // 3][0]]  # ms where the level changes

    async def change_level(at_ms: int) -> None:
        if third and at_ms >= third[0]:
            tracker = session.sources["system"].speakers
            jobs = [] if tracker is None else [t for i in range(64) if (t := tracker.job(i)) is not None]
            if jobs:
                await asyncio.wait(jobs)  # the earlier utterances' labels land first
            await asyncio.sleep(0.1)  # and their finals
            session.degrade(Level.NO_SYSTEM_PARTIALS if len(third) == 2 else Level.NORMAL)
            third.pop(0)

    try:
        await stream_phone(session, "system", change_level)
        payload = await finalize(session, "completed")
        events = await client.stop()
    finally:
        await session.aclose()
    live = [e.speaker for e in events if isinstance(e, SourceEvent) and isinstance(e.event, TextFinal)]
    first, middle, last = live[: len(turns) // 3], live[len(turns) // 3 : 2 * len(turns) // 3], live[-2:]
    assert all(x is not None for x in first) and all(x is not None for x in last), live
    assert middle and all(x is None for x in middle), live  # the utterances that closed under load
    assert all(t["speaker"] is not None for t in payload["transcript"])
    tracker = session.sources["system"].speakers
    assert tracker is not None and tracker.paused == len(middle)
