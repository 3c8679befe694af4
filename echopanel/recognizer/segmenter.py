"""Utterance segmentation from per-window voice probabilities. Pure: no model, no clock, no I/O.

Each 32 ms window arrives with its speech probability. An utterance opens after ``start_windows`` speech windows
in a row (its audio then includes ``pre_roll`` before the onset, so first syllables are kept), and closes after
``hangover`` of silence, at the next short pause past ``soft_max``, or at ``hard_max`` (force-commit, so Whisper
never sees more than its window). Memory is bounded: the pre-roll ring plus at most ``hard_max`` of audio.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class Utterance:
    item: int
    audio_start: int  # sample index (source clock) of the first sample held, pre-roll included
    onset: int  # sample index where speech was detected
    chunks: list[np.ndarray] = field(default_factory=list)
    samples: int = 0
    end: int | None = None  # sample index of the end, once closed
    last_voiced: int = 0  # sample index just after the last window above the VAD threshold
    reason: str = ""

    def append(self, window: np.ndarray) -> None:
        self.chunks.append(window)
        self.samples += len(window)

    def audio(self) -> np.ndarray:
        if len(self.chunks) > 1:
            self.chunks = [np.concatenate(self.chunks)]
        return self.chunks[0] if self.chunks else np.zeros(0, np.float32)

    @property
    def speech_samples(self) -> int:
        return self.audio_start + self.samples - self.onset


@dataclass(slots=True, frozen=True)
class Opened:
    utterance: Utterance


@dataclass(slots=True, frozen=True)
class Closed:
    utterance: Utterance


SegmentEvent = Opened | Closed


class UtteranceSegmenter:
    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        window: int = 512,
        threshold: float = 0.5,
        start_windows: int = 2,
        pre_roll_ms: int = 300,
        hangover_ms: int = 300,
        tail_ms: int = 200,
        soft_max_ms: int = 10_000,
        hard_max_ms: int = 15_000,
        turn_detection: bool = True,
        first_item: int = 1,
    ) -> None:
        ms = sample_rate // 1000
        self.window = window
        self.threshold = threshold
        self.off_threshold = max(0.0, threshold - 0.15)
        self.start_windows = start_windows
        self.pre_roll_windows = max(0, pre_roll_ms * ms // window)
        self.hangover_windows = max(1, hangover_ms * ms // window)
        self.tail_windows = max(0, tail_ms * ms // window)
        self.soft_max = soft_max_ms * ms
        self.hard_max = hard_max_ms * ms
        self.turn_detection = turn_detection
        self.next_item = first_item
        self.position = 0  # samples seen (source clock)
        self._ring: deque[np.ndarray] = deque(maxlen=self.pre_roll_windows + start_windows)
        self._run = 0  # consecutive speech windows while idle
        self._silence = 0  # consecutive non-speech windows while open
        self.current: Utterance | None = None

    def feed(self, window: np.ndarray, prob: float) -> list[SegmentEvent]:
        events: list[SegmentEvent] = []
        start = self.position
        self.position += len(window)
        speech = prob >= self.threshold
        utt = self.current
        if utt is None:
            self._ring.append(window)
            if not self.turn_detection:
                events.append(self._open(onset=start, ring_windows=1))
                return events
            self._run = self._run + 1 if speech else 0
            if self._run >= self.start_windows:
                onset = start - (self.start_windows - 1) * self.window
                events.append(self._open(onset=onset, ring_windows=len(self._ring)))
            return events

        utt.append(window)
        if speech:
            utt.last_voiced = self.position
        if not self.turn_detection:
            if utt.samples >= self.hard_max:
                events.append(self._close("max_length"))
            return events
        self._silence = 0 if prob >= self.off_threshold else self._silence + 1
        if self._silence >= self.hangover_windows:
            events.append(self._close("silence", trim_windows=self._silence - self.tail_windows))
        elif utt.samples >= self.hard_max:
            events.append(self._close("max_length"))
            if speech:  # speech goes on: continue in a new item with no gap
                self._ring.clear()
                events.append(self._open(onset=self.position, ring_windows=0))
        elif utt.samples >= self.soft_max and self._silence > 0:
            events.append(self._close("pause"))
        return events

    def configure(
        self,
        *,
        turn_detection: bool | None = None,
        threshold: float | None = None,
        pre_roll_ms: int | None = None,
        hangover_ms: int | None = None,
        sample_rate: int = 16000,
    ) -> None:
        ms = sample_rate // 1000
        if turn_detection is not None:
            self.turn_detection = turn_detection
        if threshold is not None:
            self.threshold = threshold
            self.off_threshold = max(0.0, threshold - 0.15)
        if pre_roll_ms is not None:
            self.pre_roll_windows = max(0, pre_roll_ms * ms // self.window)
            self._ring = deque(self._ring, maxlen=self.pre_roll_windows + self.start_windows)
        if hangover_ms is not None:
            self.hangover_windows = max(1, hangover_ms * ms // self.window)

    def gap(self, samples: int) -> Utterance | None:
        """``samples`` of audio will never arrive (shed): close the open utterance and advance the clock."""
        closed = self._close("gap").utterance if self.current is not None else None
        self.position += samples
        self._ring.clear()
        self._run = 0
        return closed

    def discard(self) -> Utterance | None:
        """Drop the open utterance (the client cleared its buffer)."""
        utt, self.current = self.current, None
        self._ring.clear()
        self._run = 0
        self._silence = 0
        return utt

    def force_close(self, reason: str = "commit") -> Utterance | None:
        if self.current is None:
            return None
        closed = self._close(reason)
        return closed.utterance

    def _open(self, *, onset: int, ring_windows: int) -> Opened:
        held = list(self._ring)[-ring_windows:] if ring_windows else []
        held_samples = sum(len(w) for w in held)
        start = self.position - held_samples
        utt = Utterance(item=self.next_item, audio_start=start, onset=max(0, onset), last_voiced=self.position)
        for w in held:
            utt.append(w)
        self.next_item += 1
        self.current = utt
        self._ring.clear()
        self._run = 0
        self._silence = 0
        return Opened(utt)

    def _close(self, reason: str, trim_windows: int = 0) -> Closed:
        utt = self.current
        assert utt is not None
        if trim_windows > 0:
            keep = max(0, utt.samples - trim_windows * self.window)
            audio = utt.audio()[:keep]
            utt.chunks = [audio]
            utt.samples = len(audio)
        utt.end = utt.audio_start + utt.samples
        utt.reason = reason
        self.current = None
        self._silence = 0
        self._run = 0
        return Closed(utt)
