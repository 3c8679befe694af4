"""The engine interface: push audio, commit, flush, close, iterate typed events.

The server only ever sees ``SpeechEngine`` and ``SpeechStream``; which engine runs is configuration.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from echopanel.events import EngineEvent


@dataclass(frozen=True)
class EngineCapabilities:
    name: str
    model: str
    sample_rate: int = 16000
    partials: bool = True  # emits response.text.delta while someone speaks
    word_timestamps: bool = True
    word_confidence: bool = True
    languages: tuple[str, ...] = ("en",)


@dataclass(frozen=True)
class StreamOptions:
    """Per-stream options chosen by the session."""

    source: str
    priority: int = 0  # 0 = microphone (highest); larger values yield to smaller ones
    first_item: int = 1  # item numbering continues from here (resume)
    turn_detection: bool = True  # False: utterances end only on commit (or the hard length cap)
    language: str = "en"
    prompt: str = ""  # text the client gives to guide the decoder (names, terms)
    partials: bool = True  # False: finals only (repair, batch work)
    primary_only: bool = False  # fallback chains: decode with the first engine only (re-decoding fallback items)


@dataclass(frozen=True)
class EngineStatus:
    """Which engine takes new work and the state of the primary's circuit breaker (session.metrics, /metrics)."""

    engine: str  # the engine new decodes go to now
    breaker: str = "closed"  # the primary engine's breaker: closed | open | half_open
    breakers: dict[str, str] | None = None  # every engine of a chain: name -> breaker state
    primary: str | None = None  # the primary engine's name


@dataclass
class DecodePolicy:
    """Shared by every stream of an engine; the flow controller changes it as load changes (adaptive cadence and
    the degrade ladder). Streams read it at each decision, so a change takes effect at the next decode."""

    partial_interval_ms: int = 300
    partial_max_priority: int = 1  # streams with priority <= this get partials; -1 turns partials off
    final_beam_size: int = 5


@dataclass(frozen=True)
class TurnSettings:
    """Voice-activity turn detection, adjustable mid-stream. None leaves a value unchanged."""

    enabled: bool | None = None
    threshold: float | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None


class SpeechStream(ABC):
    """One source's recognizer state. Methods are called from one task at a time, in order."""

    @abstractmethod
    async def push(self, pcm: np.ndarray) -> None:
        """Feed float32 mono samples at the engine's sample rate. May wait (backpressure)."""

    @abstractmethod
    async def commit(self, event_id: str | None = None) -> None:
        """End the current utterance now; emits ``Committed`` (item None if nothing was open)."""

    @abstractmethod
    async def request(self, response_id: str | None) -> None:
        """Decode what is buffered now; results carry ``response_id``, then ``RequestCompleted``."""

    @abstractmethod
    async def skip(self, samples: int) -> None:
        """Audio of this length (engine rate) was shed: end any open utterance there and move the clock on."""

    @property
    def next_item(self) -> int:
        """The number the next item of this stream will get."""
        return 1

    @abstractmethod
    async def configure(self, turns: TurnSettings) -> None:
        """Change turn detection from the next audio on."""

    def set_prompt(self, prompt: str) -> None:  # noqa: B027 - optional capability
        """Text that guides the decoder from the next decode on (names, terms)."""

    @abstractmethod
    async def clear(self) -> None:
        """Drop the open utterance without transcribing it."""

    @abstractmethod
    async def flush(self) -> None:
        """End the current utterance and return once every final has been emitted."""

    @abstractmethod
    async def aclose(self) -> None:
        """Stop at once, dropping pending work."""

    @abstractmethod
    def events(self) -> AsyncIterator[EngineEvent]:
        """Typed events in order; ends after ``aclose`` or a completed ``flush`` + close."""

    @property
    @abstractmethod
    def audio_ms(self) -> float:
        """Audio pushed so far, in ms of this source's clock."""


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
