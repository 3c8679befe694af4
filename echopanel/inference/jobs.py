"""Decode jobs: what a streaming recognizer asks of an engine, and how it is run.

The recognizer (``recognizer/stream.py``) segments audio into utterances and asks for decodes: a partial of the open
utterance, or its final. A ``DecodeRunner`` takes such a ``DecodeRequest`` and returns a future of the result:

- ``ScheduledDecoder``: a blocking ``Decoder`` (Whisper) on the shared ``InferenceScheduler`` (threads), with a time
  limit per decode (a hung decode is abandoned and its worker thread replaced).
- ``SphinxRunner`` (``engines/sphinx.py``): pocketsphinx decoders in worker processes.
- ``ChainRunner`` (``engines/chain.py``): routes each request to the first engine whose circuit breaker allows it.

Failpoints: a request may carry ``fault`` ("fail", "hang" or "die"), set only by the fault-injection wrapper
(``engines/faults.py``). The runner enacts it where the real decode would run (worker thread or process), so tests
exercise the same error, timeout and restart paths as real faults.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from echopanel.events import Word
from echopanel.inference.pool import JobKind, JobResult
from echopanel.inference.scheduler import InferenceScheduler

HANG_MAX_S = 600.0  # an injected hang ends by itself after this long (or when the faults are cleared)


@dataclass(slots=True, frozen=True)
class Decoded:
    text: str
    words: tuple[Word, ...]  # times relative to the start of the decoded audio; empty for partials
    engine: str = ""  # the engine that produced it (set by runners; the chain tells which engine of it)
    language: str = ""  # the language decoded (detected, with "auto"); "" when the engine does not say


@dataclass(slots=True, frozen=True)
class DecodeRequest:
    audio: np.ndarray  # float32 mono at the engine rate: the utterance so far (partial) or all of it (final)
    final: bool
    prefix: str = ""  # stable text already sent for this item (engines that can force a prefix use it)
    context: str = ""
    beam_size: int | None = None
    expect_more: bool = False  # final: the last partial heard words after ``prefix`` (see WhisperDecoder.decode)
    language: str = "en"  # the session's language (StreamOptions.language); decoders refuse ones they cannot do
    priority: int = 0  # 0 = microphone
    key: str = ""  # stream and item: incremental engines continue where this item's last decode stopped
    primary_only: bool = False  # chains: only the first engine may decode it (re-decoding fallback items)
    background: bool = False  # file transcription: after every live decode (JobKind.BACKGROUND)
    fault: str | None = None  # failpoint (fault injection only): "fail" | "hang" | "die"


class Decoder(Protocol):
    name: str

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
        """Blocking decode of one utterance's audio (runs on a scheduler worker thread); ``UnsupportedLanguage``
        for a language the decoder cannot transcribe."""
        ...


class DecodeRunner(Protocol):
    name: str

    def submit(self, request: DecodeRequest) -> asyncio.Future[JobResult[Decoded]]:
        """Start a decode; cancelling the future before it runs drops the job."""
        ...


class UnsupportedLanguage(ValueError):
    """A decode asked for a language the decoder cannot transcribe (the item fails with this code)."""

    code = "unsupported_language"


class InjectedFault(RuntimeError):
    """A decode failed on purpose (fault injection)."""


class WorkerDied(RuntimeError):
    """The worker running a decode died (its process exited, or an injected death)."""


_release = threading.Event()


def release_hangs() -> None:
    """End every injected hang now (called when faults are cleared)."""
    global _release
    old, _release = _release, threading.Event()
    old.set()


def enact_fault(fault: str | None) -> None:
    """Run a failpoint inside a worker thread."""
    if fault is None:
        return
    if fault == "fail":
        raise InjectedFault("injected decode failure")
    if fault == "die":
        raise WorkerDied("injected worker death")
    if fault == "hang":
        _release.wait(HANG_MAX_S)
        raise InjectedFault("injected hang ended")
    raise ValueError(f"unknown fault {fault!r}")


class ScheduledDecoder:
    """A blocking ``Decoder`` on an ``InferenceScheduler``; each decode is abandoned after ``timeout_s``."""

    def __init__(self, decoder: Decoder, scheduler: InferenceScheduler, *, timeout_s: float | None = None) -> None:
        self.decoder = decoder
        self.scheduler = scheduler
        self.timeout_s = timeout_s
        self.name = decoder.name

    def submit(self, request: DecodeRequest) -> asyncio.Future[JobResult[Decoded]]:
        decoder, r = self.decoder, request

        def run() -> Decoded:
            enact_fault(r.fault)
            return decoder.decode(
                r.audio,
                prefix=r.prefix,
                context=r.context,
                final=r.final,
                beam_size=r.beam_size,
                expect_more=r.expect_more,
                language=r.language,
            )

        kind = JobKind.BACKGROUND if r.background else JobKind.FINAL if r.final else JobKind.PARTIAL
        return self.scheduler.submit(run, kind=kind, priority=r.priority, timeout_s=self.timeout_s)
