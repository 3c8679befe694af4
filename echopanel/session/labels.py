"""Live speaker labels inside a session: reading an utterance's audio, a final's wait for its label, late labels.

The speaker work itself is ``echopanel/speakers/live.py`` (one ``SourceSpeakers`` per source). Here is the part the
session owns:

- ``reader(recording)``: what the labeller reads, exactly the audio the recognizer held for an utterance, from the
  source's recording, resampled to the speaker encoder's rate.
- ``for_final``: a final waits at most ``speaker_wait_ms`` for its label. If the label is not ready, the final goes
  out with ``speaker: null`` and the label follows as ``speaker.updated`` when it lands (and reaches the store).
- From degrade level 1 (``LIVE_LABELS_UNTIL``) live labels pause: embedding an utterance costs about as much as
  decoding it and holds the GIL in numpy's small steps, so under load it slowed the finals (bench/load.py, 8
  sessions: mic final p95 1.79 s and 97 s of system audio shed with labels, 1.38 s and none without). Utterances
  closed meanwhile are labelled at finalization.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import numpy as np

from echopanel.audio.convert import pcm16_to_float, resample
from echopanel.events import TextFinal, item_id
from echopanel.flow.ladder import Level
from echopanel.session.ledger import Ledger
from echopanel.session.outbox import Outbox
from echopanel.speakers.embedding import SAMPLE_RATE as SPEAKER_RATE
from echopanel.speakers.live import AudioReader, SourceSpeakers
from echopanel.storage.recording import Recording

log = logging.getLogger(__name__)

LIVE_LABELS_UNTIL = Level.SLOW_PARTIALS


class LiveLabels:
    def __init__(self, ledger: Ledger, outbox: Outbox, wait_ms: int) -> None:
        self.ledger = ledger
        self.outbox = outbox
        self.wait_ms = wait_ms
        self.active = True  # False once finalization started (it settles every label itself): ``stop``
        self._late: set[asyncio.Task[None]] = set()

    @staticmethod
    def reader(recording: Recording) -> AudioReader:
        """Reads [start_ms, end_ms) of a recording as float32 at the speaker encoder's rate."""
        rate = recording.sample_rate

        def read(start_ms: int, end_ms: int) -> np.ndarray:
            pcm = recording.read(start_ms * rate // 1000, end_ms * rate // 1000)
            return resample(pcm16_to_float(pcm), rate, SPEAKER_RATE)

        return read

    async def for_final(
        self, source: str, speakers: SourceSpeakers | None, ev: TextFinal
    ) -> tuple[str | None, tuple[tuple[int, int, str], ...]]:
        """The live label of a final and its speaker turns, waiting at most ``wait_ms`` for them."""
        if speakers is None or ev.superseded or ev.repaired or not ev.text:
            return None, ()
        # While live labels are paused under load, a final never waits for one still running from before: it would
        # wait the full bound (labelling runs at low priority and is starved first). The label follows instead.
        wait_s = self.wait_ms / 1000 if speakers.live else 0.0
        label = await speakers.label(ev.item, wait_s)
        job = speakers.job(ev.item)
        if label is None and job is not None and not job.done():
            self._spawn(self._late_label(item_id(source, ev.item), job))
        turns = speakers.take_turns(ev.item)
        return label, (turns if label is not None else ())

    async def _late_label(self, iid: str, job: asyncio.Task[str | None]) -> None:
        await asyncio.wait([job])
        if job.cancelled() or job.exception() is not None or job.result() is None or not self.active:
            return
        label = job.result()
        self.relabel(iid, label)
        if self.ledger.store is not None:
            await self.ledger.write(self.ledger.store.store.set_speakers, self.ledger.session_id, {iid: label})

    def relabel(self, iid: str, label: str | None) -> bool:
        """Give a transcript item a new speaker label and tell the client (``speaker.updated``); False if unchanged."""
        update = self.ledger.relabel(iid, label)
        if update is None:
            return False
        try:
            self.outbox.put_nowait(update)
        except asyncio.QueueFull:
            log.warning("outbox full; speaker.updated for %s skipped (the summary has it)", iid)
        return True

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._late.add(task)
        task.add_done_callback(self._late.discard)

    def stop(self) -> None:
        """Finalization started: labels still running from before are dropped (finalization settles them)."""
        self.active = False

    def cancel(self) -> None:
        for task in list(self._late):
            task.cancel()
