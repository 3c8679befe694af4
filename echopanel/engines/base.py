"""The engine interface: push audio, commit, flush, close, iterate typed events.

The server only ever sees ``SpeechEngine`` and ``SpeechStream``; which engine runs is configuration.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from echopanel.events import EngineEvent
from echopanel.recognizer.replace import MAX_KEY_WORDS, MAX_REPLACE_CHARS, MAX_REPLACEMENTS, Replacements, key_words
from echopanel.recognizer.types import DecodePolicy, StreamOptions, TurnSettings

__all__ = [
    "MAX_KEY_WORDS",
    "MAX_REPLACEMENTS",
    "MAX_REPLACE_CHARS",
    "DecodePolicy",
    "EngineCapabilities",
    "EngineStatus",
    "Replacements",
    "SpeechEngine",
    "SpeechStream",
    "StreamOptions",
    "TurnSettings",
    "key_words",
]


@dataclass(frozen=True)
class EngineCapabilities:
    """What the server needs to know of an engine: its name and model (metrics, logs, the OpenAI dialect's
    ``model``), the rate it takes audio at, and the languages it transcribes (the dialects refuse others)."""

    name: str
    model: str
    sample_rate: int = 16000
    languages: tuple[str, ...] = ("en",)


@dataclass(frozen=True)
class EngineStatus:
    """Which engine takes new work and the state of the primary's circuit breaker (session.metrics, /metrics)."""

    engine: str  # the engine new decodes go to now
    breaker: str = "closed"  # the primary engine's breaker: closed | open | half_open
    breakers: dict[str, str] | None = None  # every engine of a chain: name -> breaker state
    primary: str | None = None  # the primary engine's name


@runtime_checkable
class SpeechStream(Protocol):
    """One source's recognizer state. Methods are called from one task at a time, in order.

    A protocol: the streaming recognizer (``echopanel/recognizer/stream.py``) conforms to it without importing the
    engines; fakes for fault tests may subclass it.
    """

    async def push(self, pcm: np.ndarray) -> None:
        """Feed float32 mono samples at the engine's sample rate. May wait (backpressure)."""
        ...

    async def commit(self, event_id: str | None = None) -> None:
        """End the current utterance now; emits ``Committed`` (item None if nothing was open)."""
        ...

    async def request(self, response_id: str | None) -> None:
        """Decode what is buffered now; results carry ``response_id``, then ``RequestCompleted``."""
        ...

    async def skip(self, samples: int) -> None:
        """Audio of this length (engine rate) was shed: end any open utterance there and move the clock on."""
        ...

    @property
    def next_item(self) -> int:
        """The number the next item of this stream will get."""
        return 1

    async def configure(self, turns: TurnSettings) -> None:
        """Change turn detection from the next audio on."""
        ...

    def set_prompt(self, prompt: str) -> None:
        """Text that guides the decoder from the next decode on (names, terms)."""

    def set_language(self, language: str) -> None:
        """The language of the next decodes on (one of the engine's ``capabilities.languages``)."""

    def set_agreement(self, decodes: int) -> None:
        """From the next utterance on, how many consecutive decodes must agree before words are stable."""

    def set_replacements(self, rules: Replacements) -> None:
        """From the next utterance on, the client's replacement list (recognizer/replace.py)."""

    def set_partials(self, on: bool) -> None:
        """Partial results on or off from the next decode on (finals are never off)."""

    async def clear(self, skip: int = 0) -> None:
        """Drop the open utterance without transcribing it; then move the clock over ``skip`` samples (engine rate)
        of audio the session dropped unheard (``input_audio_buffer.clear`` of queued audio), so item times stay
        those of the recording."""
        ...

    async def flush(self) -> None:
        """End the current utterance and return once every final has been emitted."""
        ...

    async def aclose(self) -> None:
        """Stop at once, dropping pending work."""
        ...

    def events(self) -> AsyncIterator[EngineEvent]:
        """Typed events in order; ends after ``aclose`` or a completed ``flush`` + close."""
        ...

    @property
    def audio_ms(self) -> float:
        """Audio pushed so far, in ms of this source's clock."""
        ...


class SpeechEngine(ABC):
    capabilities: EngineCapabilities
    policy: DecodePolicy  # each engine owns one; the flow controller adjusts it

    @abstractmethod
    def open_stream(self, options: StreamOptions) -> SpeechStream: ...

    def status(self) -> EngineStatus:
        """Engines without a fallback chain are always their own, breaker closed."""
        return EngineStatus(self.capabilities.name, primary=self.capabilities.name)

    def primary_available(self) -> bool:
        """Whether the primary engine would take a decode now (re-decoding of fallback items at finalization)."""
        return False

    def warmup(self) -> None:  # noqa: B027 - optional hook
        """Load and exercise the model once so the first session is not slow."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release shared resources."""
