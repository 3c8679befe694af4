"""What engines that decode whole utterances share: a ``DecodeRunner`` behind the common streaming recognizer.

Whisper and pocketsphinx both segment with ``VadStreamingRecognizer`` (Silero VAD, local agreement) and differ only
in how an utterance is decoded. Composite engines (the fallback chain, the fault-injection wrapper) are built from
their runners, so item numbering, segmentation and the event contract stay the same whichever engine decodes.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from typing import Protocol

from echopanel.config import RecognizerSettings
from echopanel.engines.base import DecodePolicy, EngineCapabilities, SpeechStream, StreamOptions
from echopanel.inference.jobs import DecodeRunner
from echopanel.recognizer.stream import VadStreamingRecognizer
from echopanel.recognizer.vad import SileroVoiceDetector

SAMPLE_RATE = 16000


class UtteranceEngine(Protocol):
    @property
    def capabilities(self) -> EngineCapabilities: ...

    @property
    def policy(self) -> DecodePolicy: ...

    @property
    def runner(self) -> DecodeRunner: ...

    def warmup(self) -> None: ...

    def close(self) -> None: ...


def open_utterance_stream(
    runner: DecodeRunner,
    options: StreamOptions,
    *,
    settings: RecognizerSettings,
    policy: DecodePolicy,
    vad_executor: Executor,
    on_compute: Callable[[float, float], None] | None = None,
) -> SpeechStream:
    return VadStreamingRecognizer(
        runner=runner,
        detector=SileroVoiceDetector(SAMPLE_RATE),
        vad_executor=vad_executor,
        options=options,
        settings=settings,
        sample_rate=SAMPLE_RATE,
        on_compute=on_compute,
        policy=policy,
    )
