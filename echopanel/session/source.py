"""One source of a session: its queue, recording, recognizer stream and what the session measures of it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from echopanel.audio.convert import StreamResampler
from echopanel.engines.base import SpeechStream, TurnSettings
from echopanel.flow.source_queue import SourceQueue
from echopanel.metrics import Arrivals, LatencyWindow
from echopanel.speakers.live import SourceSpeakers
from echopanel.storage.recording import Recording


@dataclass(slots=True, frozen=True)
class Marker:
    """A control event in a source's queue, applied after the audio queued before it."""

    kind: str  # "commit" | "request" | "flush" | "configure" | "clear"
    event_id: str | None = None
    done: asyncio.Future[None] | None = None
    turns: TurnSettings | None = None
    until: int = 0  # clear: the recording's end when the client cleared (queued audio before it was dropped)


@dataclass(slots=True)
class SourceState:
    name: str
    priority: int
    stream: SpeechStream
    resampler: StreamResampler
    queue: SourceQueue[Marker]
    recording: Recording
    live: bool = True  # False: recorded only (the degrade ladder's last step for this source)
    fed_samples: int = 0  # the next sample the recognizer expects
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    space: asyncio.Event = field(default_factory=asyncio.Event)
    flush_done: asyncio.Future[None] | None = None
    arrivals: Arrivals = field(default_factory=Arrivals)
    first_partial: LatencyWindow = field(default_factory=LatencyWindow)
    final_latency: LatencyWindow = field(default_factory=LatencyWindow)
    compute_ms: float = 0.0
    last_text_item: int = 0
    speakers: SourceSpeakers | None = None  # live speaker labels (None: off)
    onsets: dict[int, int] = field(default_factory=dict)  # open utterances: item -> first audio held (ms)
    catch_up: int | None = None  # a carried session: the recording is fed from this sample before any new audio
    broken: asyncio.Event = field(default_factory=asyncio.Event)  # its feeder or recognizer failed (internal error)
