"""Per-stream options, the shared decode policy and turn settings: what a session asks of a recognizer stream.

The engine interface (``echopanel/engines/base.py``) re-exports these; they live here so the streaming recognizer
depends on nothing of the engines.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StreamOptions:
    """Per-stream options chosen by the session."""

    source: str
    priority: int = 0  # 0 = microphone (highest); larger values yield to smaller ones
    first_item: int = 1  # item numbering continues from here (resume)
    turn_detection: bool = True  # False: utterances end only on commit (or the hard length cap)
    language: str = "en"
    prompt: str = ""  # text the client gives to guide the decoder (names, terms)
    agreement: int = 2  # consecutive decodes that must agree before words are stable (recognizer/agreement.py)
    partials: bool = True  # False: finals only (repair, batch work)
    primary_only: bool = False  # fallback chains: decode with the first engine only (re-decoding fallback items)
    background: bool = False  # file transcription: decodes wait until no live decode does (JobKind.BACKGROUND)


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
