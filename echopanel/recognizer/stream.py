"""Streaming recognizer for engines that decode whole utterances (Whisper): VAD + re-decode + local agreement.

Per source: audio goes through the voice detector (off the event loop) into the utterance segmenter. While an
utterance is open it is re-decoded on a cadence; local agreement turns what two decodes agree on into stable text
(``delta``), the rest is the ``tentative`` tail. When the utterance closes, a final decode is forced to start with
the stable text already sent (``prefix``), so an item's deltas concatenate to exactly its final text.

One decode loop per source runs jobs one at a time, finals first, through the shared ``InferenceScheduler``.
State is bounded: the open utterance (<= hard max), at most ``max_pending_finals`` closed ones (``push`` waits
beyond that, which pushes back on the socket), the last ``context_chars`` of text, and a bounded event queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace

import numpy as np

from echopanel.config import RecognizerSettings
from echopanel.events import (
    Committed,
    EngineEvent,
    ItemFailed,
    RequestCompleted,
    SpeechStarted,
    SpeechStopped,
    TextDelta,
    TextFinal,
    Word,
)
from echopanel.inference.jobs import Decoded, Decoder, DecodeRequest, DecodeRunner, ScheduledDecoder
from echopanel.inference.scheduler import InferenceScheduler
from echopanel.recognizer.agreement import LocalAgreement
from echopanel.recognizer.replace import NO_REPLACEMENTS, Replacements, Rewriter
from echopanel.recognizer.segmenter import Closed, Opened, Utterance, UtteranceSegmenter
from echopanel.recognizer.text import after_prefix, assemble_final
from echopanel.recognizer.types import DecodePolicy, StreamOptions, TurnSettings
from echopanel.recognizer.vad import WINDOW, VoiceDetector

log = logging.getLogger(__name__)


__all__ = ["Decoded", "Decoder", "VadStreamingRecognizer", "assemble_final"]


@dataclass(slots=True, eq=False)
class _Item:
    utt: Utterance
    agreement: LocalAgreement = field(default_factory=LocalAgreement)
    decoded_samples: int = 0
    last_tentative: str = ""
    compute_s: float = 0.0
    response_ids: list[str | None] = field(default_factory=list)
    cut: bool = False  # began while speech was going on at the end of a shed gap
    rewriter: Rewriter = field(default_factory=Rewriter)  # the replacement list in effect when it began


_END = object()
_FAILED = object()


class StreamFailed(RuntimeError):
    """The stream's decode loop failed: it gives no more results (the session reports an internal error)."""


class VadStreamingRecognizer:
    """A ``SpeechStream`` (echopanel/engines/base.py) for engines that decode whole utterances."""

    def __init__(
        self,
        *,
        decoder: Decoder | None = None,
        scheduler: InferenceScheduler | None = None,
        runner: DecodeRunner | None = None,
        detector: VoiceDetector,
        vad_executor: Executor,
        options: StreamOptions,
        settings: RecognizerSettings,
        sample_rate: int = 16000,
        on_compute: Callable[[float, float], None] | None = None,
        policy: DecodePolicy | None = None,
    ) -> None:
        if runner is None:
            assert decoder is not None and scheduler is not None, "give a runner, or a decoder and a scheduler"
            runner = ScheduledDecoder(decoder, scheduler)
        self._runner = runner
        self._detector = detector
        self._vad_executor = vad_executor
        self._options = options
        self._s = settings
        self._rate = sample_rate
        self._ms = sample_rate // 1000
        self._on_compute = on_compute
        self._policy = policy or DecodePolicy(partial_interval_ms=settings.partial_interval_ms)
        self._segmenter = UtteranceSegmenter(
            sample_rate=sample_rate,
            window=WINDOW,
            threshold=settings.vad_threshold,
            start_windows=settings.vad_start_windows,
            pre_roll_ms=settings.pre_roll_ms,
            hangover_ms=settings.hangover_ms,
            soft_max_ms=settings.soft_max_utterance_ms,
            hard_max_ms=settings.max_utterance_ms,
            turn_detection=options.turn_detection,
            first_item=options.first_item,
        )
        self._carry = np.zeros(0, np.float32)  # < one VAD window not yet processed
        self._received = 0
        self._open: _Item | None = None
        self._closed: deque[_Item] = deque()
        self._requests: deque[str | None] = deque()
        self._context = ""
        self._prompt = options.prompt
        self._agree = options.agreement
        self._replace = NO_REPLACEMENTS
        self._language = options.language
        self._gap_end: int | None = None
        self._events: asyncio.Queue[object] = asyncio.Queue(settings.event_queue_size)
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._lock = asyncio.Lock()
        self._partial_job: asyncio.Future[object] | None = None
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    # -- SpeechStream -------------------------------------------------------------------------------------------

    @property
    def audio_ms(self) -> float:
        return self._received / self._ms

    async def push(self, pcm: np.ndarray) -> None:
        self._ensure_task()
        while len(self._closed) >= self._s.max_pending_finals:
            self._check()
            self._progress.clear()
            await self._progress.wait()
        async with self._lock:
            self._received += len(pcm)
            audio = np.concatenate((self._carry, pcm)) if len(self._carry) else pcm
            n = len(audio) // WINDOW
            self._carry = audio[n * WINDOW :].copy()
            if n == 0:
                return
            windows = audio[: n * WINDOW].reshape(n, WINDOW)
            loop = asyncio.get_running_loop()
            probs = await loop.run_in_executor(self._vad_executor, self._detector.probabilities, windows)
            for window, prob in zip(windows, probs, strict=True):
                for ev in self._segmenter.feed(window, prob):
                    await self._on_segment(ev)
            if self._open is not None:
                self._wake.set()

    async def commit(self, event_id: str | None = None) -> None:
        self._ensure_task()
        async with self._lock:
            utt = self._segmenter.force_close("commit")
            if utt is not None:
                await self._on_segment(Closed(utt))
            await self._emit(Committed(utt.item if utt else None, event_id))

    async def request(self, response_id: str | None) -> None:
        self._ensure_task()
        self._requests.append(response_id)
        if self._open is not None:
            self._open.response_ids.append(response_id)
        self._wake.set()

    @property
    def next_item(self) -> int:
        return self._segmenter.next_item

    async def skip(self, samples: int) -> None:
        self._ensure_task()
        async with self._lock:
            open_item = self._open
            cut = self._segmenter.discard()
            self._segmenter.gap(samples + len(self._carry))
            self._carry = np.zeros(0, np.float32)
            self._received += samples
            self._detector.reset()
            self._gap_end = self._segmenter.position
            if cut is not None:
                # The gap cut this utterance: close it with the stable text already sent, undecoded; the session
                # transcribes the whole utterance again from the recording.
                item = open_item if open_item is not None and open_item.utt is cut else self._new_item(cut)
                self._open = None
                if self._partial_job is not None and not self._partial_job.done():
                    self._partial_job.cancel()
                cut.end = cut.audio_start + cut.samples
                await self._emit(SpeechStopped(cut.item, cut.end // self._ms, "gap"))
                await self._emit(self._superseded(item))

    async def configure(self, turns: TurnSettings) -> None:
        async with self._lock:
            self._segmenter.configure(
                turn_detection=turns.enabled,
                threshold=turns.threshold,
                pre_roll_ms=turns.prefix_padding_ms,
                hangover_ms=turns.silence_duration_ms,
                sample_rate=self._rate,
            )

    def set_prompt(self, prompt: str) -> None:
        self._prompt = prompt

    def set_language(self, language: str) -> None:
        self._language = language

    def set_agreement(self, decodes: int) -> None:
        self._agree = decodes

    def _new_item(self, utt: Utterance) -> _Item:
        return _Item(utt, LocalAgreement(self._agree), rewriter=Rewriter(self._replace))

    def set_replacements(self, rules: Replacements) -> None:
        self._replace = rules

    def set_partials(self, on: bool) -> None:
        self._options = replace(self._options, partials=on)

    async def clear(self, skip: int = 0) -> None:
        async with self._lock:
            self._segmenter.discard()
            if skip or len(self._carry):
                # Audio dropped unheard (the session's queued audio, and the part-window carried here): the clock
                # moves over it, so item times stay those of the recording. Not a shed gap: nothing to repair, and
                # the next utterance does not start "cut".
                self._segmenter.gap(skip + len(self._carry))
                self._received += skip
                self._detector.reset()
            self._carry = np.zeros(0, np.float32)
            if self._open is not None:
                if self._partial_job is not None and not self._partial_job.done():
                    self._partial_job.cancel()
                self._open = None

    async def flush(self) -> None:
        self._ensure_task()
        async with self._lock:
            utt = self._segmenter.force_close("flush")
            if utt is not None:
                await self._on_segment(Closed(utt))
        while self._closed or self._requests:
            self._check()
            self._progress.clear()
            self._wake.set()
            await self._progress.wait()

    async def aclose(self) -> None:
        self._closing = True
        if self._partial_job is not None:
            self._partial_job.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        try:
            self._events.put_nowait(_END)
        except asyncio.QueueFull:
            pass

    async def events(self) -> AsyncIterator[EngineEvent]:
        while True:
            ev = await self._events.get()
            if ev is _END:
                return
            if ev is _FAILED:
                raise StreamFailed(f"the decode loop of source {self._options.source} failed") from self._failure
            yield ev  # type: ignore[misc]

    # -- internals ----------------------------------------------------------------------------------------------

    def _ensure_task(self) -> None:
        if self._task is None and not self._closing:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"decode-{self._options.source}")

    async def _emit(self, ev: EngineEvent) -> None:
        await self._events.put(ev)

    def _superseded(self, item: _Item) -> TextFinal:
        utt = item.utt
        end = utt.end if utt.end is not None else utt.audio_start + utt.samples
        text = item.agreement.stable_text
        return TextFinal(
            utt.item, text, utt.audio_start // self._ms, end // self._ms, (), self._runner.name, 0.0, superseded=True
        )

    async def _on_segment(self, ev: Opened | Closed) -> None:
        utt = ev.utterance
        if isinstance(ev, Opened):
            self._open = self._new_item(utt)
            if self._gap_end is not None:
                # Speech already going on when a shed gap ended: this utterance starts mid-phrase.
                self._open.cut = utt.onset - self._gap_end <= 3 * WINDOW
                self._gap_end = None
            await self._emit(SpeechStarted(utt.item, utt.onset // self._ms, utt.audio_start // self._ms))
            return
        item = self._open if self._open is not None and self._open.utt is utt else self._new_item(utt)
        self._open = None
        if self._partial_job is not None and not self._partial_job.done():
            self._partial_job.cancel()  # not started yet: the final supersedes it
        assert utt.end is not None
        await self._emit(SpeechStopped(utt.item, utt.end // self._ms, utt.reason))
        self._closed.append(item)
        self._wake.set()

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("decode loop failed (source %s)", self._options.source)
            self._failure = exc
            self._progress.set()  # a push or flush waiting for progress learns of it
            await self._events.put(_FAILED)

    def _check(self) -> None:
        if self._failure is not None:
            raise StreamFailed(f"the decode loop of source {self._options.source} failed") from self._failure

    async def _loop(self) -> None:
        while True:
            if self._closed:
                await self._final(self._closed[0])
                self._closed.popleft()
                self._progress.set()
                continue
            item = self._open
            if item is not None and (item.response_ids or self._partial_due(item)):
                await self._partial(item)
                continue
            if self._requests:
                await self._emit(RequestCompleted(self._requests.popleft()))
                self._progress.set()
                continue
            self._progress.set()
            self._wake.clear()
            await self._wake.wait()

    def _partial_due(self, item: _Item) -> bool:
        if not self._options.partials or self._options.priority > self._policy.partial_max_priority:
            return False
        utt = item.utt
        if utt.speech_samples < self._s.first_partial_ms * self._ms:
            return False
        interval = self._policy.partial_interval_ms
        if item.decoded_samples and not item.last_tentative and not item.agreement.stable:
            interval //= 2  # the first decodes heard no word yet: the first text should not wait a whole interval
        return utt.samples - item.decoded_samples >= interval * self._ms

    async def _partial(self, item: _Item) -> None:
        utt = item.utt
        audio = utt.audio()
        item.decoded_samples = len(audio)
        prefix = item.agreement.stable_text
        context = self._decoder_context()
        response_ids, item.response_ids = item.response_ids, []
        job = self._runner.submit(self._request(utt.item, audio, final=False, prefix=prefix, context=context))
        self._partial_job = job  # type: ignore[assignment]
        await asyncio.wait([job])
        self._partial_job = None
        if job.cancelled():
            item.response_ids = response_ids + item.response_ids
            return
        try:
            result = job.result()
        except Exception:
            log.exception("partial decode failed (source %s)", self._options.source)
            item.response_ids = response_ids + item.response_ids
            return
        self._account(item, result.compute_s, len(audio))
        if item is not self._open and not any(x is item for x in self._closed):
            return  # the utterance was cleared while it was being decoded
        hyp = after_prefix(result.value.text, prefix, len(item.agreement.stable))
        speech_decoded = utt.audio_start + len(audio) - utt.onset  # speech in the audio this decode saw
        if speech_decoded < self._s.commit_after_ms * self._ms:
            item.agreement.observe(hyp)
            delta = ""
        else:
            delta = item.rewriter.stable(item.agreement.update(hyp))
        tentative = item.rewriter.tentative(item.agreement.tentative_text)
        rid = response_ids[-1] if response_ids else None
        if delta or tentative != item.last_tentative or rid is not None:
            item.last_tentative = tentative
            end = utt.audio_start + len(audio)
            engine = result.value.engine or self._runner.name
            await self._emit(
                TextDelta(
                    utt.item, delta, tentative, utt.onset // self._ms, end // self._ms, response_id=rid, engine=engine
                )
            )

    async def _final(self, item: _Item) -> None:
        utt = item.utt
        if item.cut:
            if item.last_tentative:
                end = (utt.end or utt.audio_start) // self._ms
                await self._emit(TextDelta(utt.item, "", "", utt.onset // self._ms, end))
            await self._emit(self._superseded(item))
            return
        audio = utt.audio()
        prefix = item.agreement.stable_text
        context = self._decoder_context()
        rid = item.response_ids[-1] if item.response_ids else None
        beam = self._policy.final_beam_size
        job = self._runner.submit(
            self._request(
                utt.item, audio, final=True, prefix=prefix, context=context, beam_size=beam,
                expect_more=bool(prefix and item.last_tentative.strip()),
            )
        )  # fmt: skip
        try:
            result = await job
        except Exception as exc:
            log.warning("final decode failed (source %s): %s", self._options.source, type(exc).__name__)
            code = getattr(exc, "code", "transcription_failed")
            message = str(exc) if code != "transcription_failed" else f"decode failed: {type(exc).__name__}"
            start_ms, end_ms = utt.audio_start // self._ms, (utt.end or utt.audio_start + utt.samples) // self._ms
            await self._emit(ItemFailed(utt.item, code, message, start_ms=start_ms, end_ms=end_ms))
            return
        self._account(item, result.compute_s, len(audio))
        base_ms = utt.audio_start // self._ms
        voiced_ms = utt.last_voiced // self._ms - base_ms
        stable_words = len(item.agreement.stable)
        text, kept = assemble_final(result.value, prefix, stable_words, voiced_ms, prompted=bool(self._prompt))
        words = tuple(Word(w.text.strip(), base_ms + w.start_ms, base_ms + w.end_ms, w.confidence) for w in kept)
        text, words = item.rewriter.final(text, words)
        delta = text[len(item.rewriter.sent) :]
        start_ms = words[0].start_ms if words else utt.onset // self._ms
        end_ms = words[-1].end_ms if words else (utt.end or utt.onset) // self._ms
        if delta or item.last_tentative:
            await self._emit(TextDelta(utt.item, delta, "", start_ms, end_ms, response_id=rid))
        await self._emit(
            TextFinal(
                utt.item,
                text,
                start_ms,
                end_ms,
                words,
                result.value.engine or self._runner.name,
                round(item.compute_s * 1000, 1),
                response_id=rid,
                speech_end_ms=utt.last_voiced // self._ms,
                language=result.value.language or self._language,
            )
        )
        if text and self._s.context_chars > 0:
            self._context = (self._context + " " + text)[-self._s.context_chars :].lstrip()

    def _request(
        self,
        item: int,
        audio: np.ndarray,
        *,
        final: bool,
        prefix: str,
        context: str,
        beam_size: int | None = None,
        expect_more: bool = False,
    ) -> DecodeRequest:
        return DecodeRequest(
            audio,
            final,
            prefix=prefix,
            context=context,
            beam_size=beam_size,
            expect_more=expect_more,
            language=self._language,
            priority=self._options.priority,
            key=f"{id(self):x}:{item}",
            primary_only=self._options.primary_only,
            background=self._options.background,
        )

    def _decoder_context(self) -> str:
        return f"{self._prompt} {self._context}".strip()

    def _account(self, item: _Item, compute_s: float, samples: int) -> None:
        item.compute_s += compute_s
        if self._on_compute is not None:
            self._on_compute(compute_s, samples / self._rate)
